"""ShuffleNet (v1) with 2 groups, adapted to 32x32 CIFAR-10 images.

Paper: Xiangyu Zhang, Xinyu Zhou, Mengxiao Lin and Jian Sun, "ShuffleNet: An Extremely
Efficient Convolutional Neural Network for Mobile Devices", 2017, arXiv:1707.01083.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Shuffle channels: (N, g*c, H, W) viewed as (N, g, c, H, W), transposed to (N, c, g, H, W)."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class Bottleneck(nn.Module):
    """Grouped 1x1 conv, channel shuffle, depthwise 3x3, grouped 1x1 conv.

    With stride 2 the shortcut is a 3x3 average pool and the outputs are concatenated;
    with stride 1 they are added.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        # The first block sees the 24-channel stem, too few channels to split into groups.
        self.g1 = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=self.g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.g1)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        if self.stride == 2:
            return F.relu(torch.cat([out, res], dim=1))
        return F.relu(out + res)


class ShuffleNet(nn.Module):
    """1x1 stem (24 channels), three stages of shuffle bottlenecks, global pool, linear."""

    def __init__(
        self,
        out_planes: Sequence[int],
        num_blocks: Sequence[int],
        groups: int,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes = 24
        stages: list[nn.Module] = []
        for planes, blocks in zip(out_planes, num_blocks):
            layers: list[nn.Module] = []
            for i in range(blocks):
                stride = 2 if i == 0 else 1
                # The first (stride-2) block concatenates its input, so it produces the rest.
                cat_planes = in_planes if i == 0 else 0
                layers.append(Bottleneck(in_planes, planes - cat_planes, stride=stride, groups=groups))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1)  # 4x4 -> 1x1, same as avg_pool2d(out, 4)
        return self.linear(torch.flatten(out, 1))


def shufflenetg2(num_classes: int = 10) -> ShuffleNet:
    """ShuffleNet v1, groups=2, out_planes [200, 400, 800], blocks [4, 8, 4]: 887,582 parameters."""
    return ShuffleNet(out_planes=(200, 400, 800), num_blocks=(4, 8, 4), groups=2, num_classes=num_classes)
