"""DenseNet-121 (DenseNet-BC) adapted to 32x32 CIFAR-10 images.

Paper: Gao Huang, Zhuang Liu, Laurens van der Maaten and Kilian Q. Weinberger, "Densely
Connected Convolutional Networks", 2016, arXiv:1608.06993.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class Bottleneck(nn.Module):
    """BN-ReLU-1x1 conv (4k) then BN-ReLU-3x3 conv (k); output concatenated onto the input."""

    def __init__(self, in_planes: int, growth_rate: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth_rate, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], dim=1)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv (channel reduction) then 2x2 average pool."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """Four dense blocks separated by transitions, final BN-ReLU, global pool, linear."""

    def __init__(
        self,
        num_blocks: Sequence[int] = (6, 12, 24, 16),
        growth_rate: int = 32,
        reduction: float = 0.5,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, planes, kernel_size=3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, blocks in enumerate(num_blocks):
            layers: list[nn.Module] = []
            for _ in range(blocks):
                layers.append(Bottleneck(planes, growth_rate))
                planes += growth_rate
            if i < len(num_blocks) - 1:
                out_planes = int(math.floor(planes * reduction))
                layers.append(Transition(planes, out_planes))
                planes = out_planes
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(self.conv1(x))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1)  # 4x4 -> 1x1, same as avg_pool2d(out, 4)
        return self.linear(torch.flatten(out, 1))


def densenet121(num_classes: int = 10) -> DenseNet:
    """DenseNet-121 (growth 32, [6, 12, 24, 16], reduction 0.5): 6,956,298 parameters at 10 classes."""
    return DenseNet((6, 12, 24, 16), growth_rate=32, reduction=0.5, num_classes=num_classes)
