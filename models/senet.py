"""SENet-18: a pre-activation ResNet-18 with squeeze-and-excitation, for CIFAR-10.

Paper: Jie Hu, Li Shen, Samuel Albanie, Gang Sun and Enhua Wu, "Squeeze-and-Excitation
Networks", 2017, arXiv:1709.01507.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class PreActSEBlock(nn.Module):
    """Pre-activation basic block (BN-ReLU-conv x2) whose output is rescaled by an SE gate."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)
        # Squeeze-and-excitation with reduction 16, as 1x1 convs (with bias).
        self.fc1 = nn.Conv2d(planes, planes // 16, kernel_size=1)
        self.fc2 = nn.Conv2d(planes // 16, planes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        w = F.adaptive_avg_pool2d(out, 1)
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(w))))
        return out * w + shortcut


class SENet(nn.Module):
    """3x3 stem + BN-ReLU, four stages of pre-activation SE blocks, global pool, linear."""

    def __init__(self, num_blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages: list[nn.Module] = []
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            first_stride = 1 if i == 0 else 2
            layers: list[nn.Module] = []
            for stride in [first_stride] + [1] * (blocks - 1):
                layers.append(PreActSEBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1)  # 4x4 -> 1x1, same as avg_pool2d(out, 4)
        return self.linear(torch.flatten(out, 1))


def senet18(num_classes: int = 10) -> SENet:
    """SENet-18 (pre-activation SE blocks, [2, 2, 2, 2]): 11,260,354 parameters at 10 classes."""
    return SENet((2, 2, 2, 2), num_classes=num_classes)
