"""VGG-19 with batch normalisation, adapted to 32x32 CIFAR-10 images.

Paper: Karen Simonyan and Andrew Zisserman, "Very Deep Convolutional Networks for
Large-Scale Image Recognition", 2014, arXiv:1409.1556.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Layer plan of VGG-19: an int is a 3x3 conv with that many output channels, "M" a 2x2 max pool.
VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, 256, "M",
    512, 512, 512, 512, "M",
    512, 512, 512, 512, "M",
)


class VGG(nn.Module):
    """VGG feature stack (conv3x3 + BN + ReLU, max pools) followed by one linear classifier."""

    def __init__(self, cfg: Sequence[int | str] = VGG19_CFG, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_planes = 3
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out_planes = int(item)
                layers += [
                    nn.Conv2d(in_planes, out_planes, kernel_size=3, padding=1),
                    nn.BatchNorm2d(out_planes),
                    nn.ReLU(),
                ]
                in_planes = out_planes
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)
        # After five pools a 32x32 input is 1x1; this equals the classic AvgPool2d(1).
        out = F.adaptive_avg_pool2d(out, 1)
        return self.classifier(torch.flatten(out, 1))


def vgg(num_classes: int = 10) -> VGG:
    """VGG-19 (BN) for CIFAR-10: 20,040,522 parameters at 10 classes."""
    return VGG(VGG19_CFG, num_classes=num_classes)
