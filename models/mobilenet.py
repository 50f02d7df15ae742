"""MobileNet (v1) adapted to 32x32 CIFAR-10 images.

Paper: Andrew G. Howard, Menglong Zhu, Bo Chen, Dmitry Kalenichenko, Weijun Wang, Tobias
Weyand, Marco Andreetto and Hartwig Adam, "MobileNets: Efficient Convolutional Neural
Networks for Mobile Vision Applications", 2017, arXiv:1704.04861.

The building blocks here are public so that other packages (e.g. a NAS search space over a
MobileNet backbone) can reuse them: :class:`DepthwiseSeparable`, :func:`make_stem`,
:func:`parse_block_spec` and :func:`make_blocks`.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

#: One block of the layer plan: ``out_planes`` (stride 1) or ``(out_planes, stride)``.
BlockSpec = Union[int, tuple[int, int]]

#: Output channels of the 3x3 stem convolution.
STEM_CHANNELS: int = 32

#: The classic 13 depthwise-separable blocks of MobileNet v1 for CIFAR-10.
MOBILENET_CFG: tuple[BlockSpec, ...] = (
    64, (128, 2), 128, (256, 2), 256, (512, 2),
    512, 512, 512, 512, 512, (1024, 2), 1024,
)


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 conv (groups=in_planes) + BN + ReLU, then pointwise 1x1 conv + BN + ReLU.

    No conv biases. ``stride`` applies to the depthwise conv, so (N, in, H, W) maps to
    (N, out, H/stride, W/stride).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1) -> None:
        super().__init__()
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.stride = stride
        self.conv1 = nn.Conv2d(
            in_planes, in_planes, kernel_size=3, stride=stride, padding=1, groups=in_planes, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv2 = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)))


def make_stem(out_planes: int = STEM_CHANNELS, in_planes: int = 3) -> nn.Sequential:
    """The MobileNet stem: 3x3 conv (stride 1, no bias) + BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(out_planes),
        nn.ReLU(),
    )


def parse_block_spec(spec: BlockSpec) -> tuple[int, int]:
    """Return ``(out_planes, stride)`` for one entry of a layer plan."""
    if isinstance(spec, int):
        return spec, 1
    out_planes, stride = spec
    return int(out_planes), int(stride)


def make_blocks(cfg: Sequence[BlockSpec], in_planes: int = STEM_CHANNELS) -> tuple[nn.Sequential, int]:
    """Build the chain of :class:`DepthwiseSeparable` blocks; return it and its output channels."""
    blocks: list[nn.Module] = []
    for spec in cfg:
        out_planes, stride = parse_block_spec(spec)
        blocks.append(DepthwiseSeparable(in_planes, out_planes, stride))
        in_planes = out_planes
    return nn.Sequential(*blocks), in_planes


class MobileNet(nn.Module):
    """Stem, a chain of depthwise-separable blocks given by ``cfg``, global average pool, linear."""

    def __init__(
        self,
        cfg: Sequence[BlockSpec] = MOBILENET_CFG,
        num_classes: int = 10,
        stem_channels: int = STEM_CHANNELS,
    ) -> None:
        super().__init__()
        self.stem = make_stem(stem_channels)
        self.layers, out_planes = make_blocks(cfg, stem_channels)
        self.linear = nn.Linear(out_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))
        out = F.adaptive_avg_pool2d(out, 1)  # 2x2 -> 1x1, same as avg_pool2d(out, 2)
        return self.linear(torch.flatten(out, 1))


def mobilenet(num_classes: int = 10) -> MobileNet:
    """MobileNet v1 for CIFAR-10 (13 blocks): 3,217,226 parameters at 10 classes."""
    return MobileNet(MOBILENET_CFG, num_classes=num_classes)
