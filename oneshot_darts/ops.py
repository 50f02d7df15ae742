"""The DARTS operations (Liu et al. 2019, "DARTS: Differentiable Architecture Search"): one table,
shared by the search supernet and the fixed network that is retrained.

Every operation maps ``C`` channels to ``C`` channels and halves the resolution when ``stride`` is 2.
In the supernet (``search=True``) batch norms carry no affine parameters and the pools are followed
by one, as in the paper's code, so that no candidate can rescale its output to win the softmax; the
fixed network uses affine batch norms and bare pools. The 'none' (zero) candidate of the paper is not
in the table: NNI's differentiable cell adds it to every edge of the supernet itself.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from core import distributed

#: The candidate operations of one edge, in the order of the paper's code (its 'none' aside).
OP_NAMES: tuple[str, ...] = (
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

#: The operations without weights in a normal cell (stride 1): the pools and the identity. A
#: collapsing DARTS search drifts to them, skip_connect first (oneshot_darts.derive).
PARAMETER_FREE_OPS: tuple[str, ...] = ("max_pool_3x3", "avg_pool_3x3", "skip_connect")


class ReLUConvBN(nn.Sequential):
    """ReLU, convolution, batch norm: the cell-input preprocessing."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, depthwise (dilated) convolution, pointwise convolution, batch norm."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=c_in,
                      bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked depthwise-separable blocks (the first carries the stride)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            DilConv(c_in, c_in, kernel_size, stride, padding, 1, affine=affine),
            DilConv(c_in, c_out, kernel_size, 1, padding, 1, affine=affine),
        )


class FactorizedReduce(nn.Module):
    """Halve the resolution with two 1x1 stride-2 convolutions offset by one pixel, concatenated."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


class DropPath(nn.Module):
    """Zero a whole sample's output with probability ``p`` in training, scaling the kept ones by
    1 / (1 - p) (FractalNet's drop path, as the DARTS retrain uses it). ``p`` is set from outside,
    by the retrain's linear schedule.

    Data-parallel (torchrun, :mod:`core.distributed`), where each rank holds its share of the global
    batch: every rank draws the masks of the whole global batch from the same seeded stream and
    keeps its share, so each rank has its own masks, and together they are exactly the masks one
    process draws for that batch (the step stays the one-process step; every rank's generator stays
    in the same state, so rank 0's checkpointed state is every rank's)."""

    def __init__(self) -> None:
        super().__init__()
        self.p = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0.0:
            return x
        keep = 1.0 - self.p
        ranks = distributed.world_size()
        mask = torch.empty(x.shape[0] * ranks, 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
        if ranks > 1:
            mask = mask.tensor_split(ranks)[distributed.rank()]
        return x / keep * mask

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


def _pool(pool: nn.Module, c: int, search: bool) -> nn.Module:
    return nn.Sequential(pool, nn.BatchNorm2d(c, affine=False)) if search else pool


#: name -> factory(channels, stride, search) of one candidate operation.
OPS: dict[str, Callable[[int, int, bool], nn.Module]] = {
    "max_pool_3x3": lambda c, stride, search: _pool(nn.MaxPool2d(3, stride=stride, padding=1), c, search),
    "avg_pool_3x3": lambda c, stride, search: _pool(
        nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False), c, search),
    "skip_connect": lambda c, stride, search: (
        nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine=not search)),
    "sep_conv_3x3": lambda c, stride, search: SepConv(c, c, 3, stride, 1, affine=not search),
    "sep_conv_5x5": lambda c, stride, search: SepConv(c, c, 5, stride, 2, affine=not search),
    "dil_conv_3x3": lambda c, stride, search: DilConv(c, c, 3, stride, 2, 2, affine=not search),
    "dil_conv_5x5": lambda c, stride, search: DilConv(c, c, 5, stride, 4, 2, affine=not search),
}
assert tuple(OPS) == OP_NAMES


def make_op(name: str, channels: int, stride: int, *, search: bool) -> nn.Module:
    """One candidate operation. In the fixed network (``search=False``) every operation but the
    identity is followed by a :class:`DropPath`, as in the paper's retrain."""
    op = OPS[name](channels, stride, search)
    if search or isinstance(op, nn.Identity):
        return op
    return nn.Sequential(op, DropPath())


class AuxiliaryHead(nn.Module):
    """The auxiliary classifier on the 8x8 feature map after the second reduction cell
    (Szegedy et al. 2015, as the DARTS retrain uses it): its loss is added during training only."""

    def __init__(self, c_in: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),  # its input is the cell output the next cells read too
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),  # 8x8 -> 2x2
            nn.Conv2d(c_in, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),                               # 2x2 -> 1x1
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
