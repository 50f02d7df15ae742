"""Dual Path Network DPN-92 adapted to 32x32 CIFAR-10 images.

Paper: Yunpeng Chen, Jianan Li, Huaxin Xiao, Xiaojie Jin, Shuicheng Yan and Jiashi Feng,
"Dual Path Networks", 2017, arXiv:1707.01629.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class Bottleneck(nn.Module):
    """Grouped-conv bottleneck whose output feeds a residual path and a densely growing path.

    The first ``out_planes`` channels are added to the shortcut (residual path); the extra
    ``dense_depth`` channels are concatenated onto it (dense path).
    """

    def __init__(
        self,
        last_planes: int,
        in_planes: int,
        out_planes: int,
        dense_depth: int,
        stride: int,
        first_layer: bool,
    ) -> None:
        super().__init__()
        self.out_planes = out_planes
        self.dense_depth = dense_depth
        self.conv1 = nn.Conv2d(last_planes, in_planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv2 = nn.Conv2d(in_planes, in_planes, kernel_size=3, stride=stride, padding=1, groups=32, bias=False)
        self.bn2 = nn.BatchNorm2d(in_planes)
        self.conv3 = nn.Conv2d(in_planes, out_planes + dense_depth, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes + dense_depth)
        self.shortcut: nn.Module = nn.Identity()
        if first_layer:
            self.shortcut = nn.Sequential(
                nn.Conv2d(last_planes, out_planes + dense_depth, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes + dense_depth),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        x = self.shortcut(x)
        d = self.out_planes
        out = torch.cat([x[:, :d] + out[:, :d], x[:, d:], out[:, d:]], dim=1)
        return F.relu(out)


class DPN(nn.Module):
    """3x3 stem, four stages of dual-path bottlenecks, global average pool, linear."""

    def __init__(
        self,
        in_planes: Sequence[int],
        out_planes: Sequence[int],
        num_blocks: Sequence[int],
        dense_depth: Sequence[int],
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        last_planes = 64
        stages: list[nn.Module] = []
        for i in range(4):
            first_stride = 1 if i == 0 else 2
            layers: list[nn.Module] = []
            for j in range(num_blocks[i]):
                stride = first_stride if j == 0 else 1
                layers.append(Bottleneck(last_planes, in_planes[i], out_planes[i], dense_depth[i], stride, j == 0))
                last_planes = out_planes[i] + (j + 2) * dense_depth[i]
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(last_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1)  # 4x4 -> 1x1, same as avg_pool2d(out, 4)
        return self.linear(torch.flatten(out, 1))


def dpn92(num_classes: int = 10) -> DPN:
    """DPN-92 for CIFAR-10: 34,236,634 parameters at 10 classes."""
    return DPN(
        in_planes=(96, 192, 384, 768),
        out_planes=(256, 512, 1024, 2048),
        num_blocks=(3, 4, 20, 3),
        dense_depth=(16, 32, 24, 128),
        num_classes=num_classes,
    )
