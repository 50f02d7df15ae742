"""The classic-NAS search space: a 17-block CIFAR-10 MobileNet (v1) with six optional skip connections.

One :class:`MobileNetSkipSpace` class is both the search space and, built under
``nni.nas.space.model_context(sample)`` (or by ``space.freeze(sample)``), a fixed child network.

The backbone is the foundation's :func:`models.mobilenet.make_stem` (3 -> 32 channels) followed by
17 :class:`models.mobilenet.DepthwiseSeparable` blocks (:data:`SEARCH_PLAN`), average pooling and a
linear classifier. Walking the blocks, a counter goes up at every block that keeps its channel count
(input channels == output channels, stride 1) and drops to 0 at a block that changes it. At every
block where that counter is even and at least 2 there is a skip choice,
``InputChoice(n_candidates=2, n_chosen=1)`` between zeros (candidate 0) and the block's input
(candidate 1), added to the block's output. That gives six choices, ``skip1`` ... ``skip6``, on
blocks 4, 7, 10, 12, 14 and 17 (1-based), and 2**6 = 64 architectures.

Architectures are data. NNI's own samples look like ``{"skip1": [1], ...}`` (an ``InputChoice`` is a
``CategoricalMultiple``: a list of chosen candidate indices); the user-facing format of this stage,
used by the search-space JSON, the trials, ``best_arch.json`` and the retrain command, is one
integer per label: ``{"skip1": 1, "skip2": 0, ...}`` where 1 = the skip connection is on (the
block's input is added) and 0 = off (zeros are added). :func:`to_nni_sample` maps one to the other.
"""
from __future__ import annotations

import itertools
import json
import os
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.config import read_json
from core.errors import UserError
from experiments.nni_trial import quiet_nni_imports
from models.mobilenet import STEM_CHANNELS, BlockSpec, DepthwiseSeparable, make_stem, parse_block_spec

quiet_nni_imports()
from nni.mutable import CategoricalMultiple  # noqa: E402 - after the warning filter
from nni.nas.nn.pytorch import InputChoice, ModelSpace  # noqa: E402
from nni.nas.space import model_context  # noqa: E402

#: Output channels (stride 1) or (output channels, stride) of the 17 depthwise-separable blocks.
SEARCH_PLAN: tuple[BlockSpec, ...] = (
    64, (128, 2), 128, 128, (256, 2), 256, 256, (512, 2),
    512, 512, 512, 512, 512, 512, (1024, 2), 1024, 1024,
)

#: Candidate indices of every skip choice.
SKIP_OFF, SKIP_ON = 0, 1


def skip_blocks(plan: Sequence[BlockSpec] = SEARCH_PLAN, in_planes: int = STEM_CHANNELS) -> list[int]:
    """0-based indices of the blocks that carry a skip choice (see the module docstring)."""
    positions, kept = [], 0
    for index, spec in enumerate(plan):
        out_planes, stride = parse_block_spec(spec)
        kept = kept + 1 if (out_planes == in_planes and stride == 1) else 0
        if kept >= 2 and kept % 2 == 0:
            positions.append(index)
        in_planes = out_planes
    return positions


def skip_label(k: int) -> str:
    """The label of the ``k``-th skip choice, 1-based: ``skip1`` ... ``skip6``."""
    return f"skip{k}"


#: The labels of the six choices, in block order.
SKIP_LABELS: tuple[str, ...] = tuple(skip_label(k + 1) for k in range(len(skip_blocks())))


class MobileNetSkipSpace(ModelSpace):
    """MobileNet (v1, 17 blocks) for 32x32 images with an ``InputChoice`` skip on six blocks.

    As a space it holds the choices; under ``model_context(sample)`` (or via ``freeze``) every
    ``InputChoice`` becomes NNI's ``ChosenInputs`` and the module is one fixed network. The skip
    choices carry no weights, so every architecture has the same 4,634,826 parameters at 10 classes.
    """

    def __init__(self, num_classes: int = 10, plan: Sequence[BlockSpec] = SEARCH_PLAN,
                 stem_channels: int = STEM_CHANNELS) -> None:
        super().__init__()
        self.stem = make_stem(stem_channels)
        blocks: list[nn.Module] = []
        in_planes = stem_channels
        for spec in plan:
            out_planes, stride = parse_block_spec(spec)
            blocks.append(DepthwiseSeparable(in_planes, out_planes, stride))
            in_planes = out_planes
        self.blocks = nn.ModuleList(blocks)
        positions = skip_blocks(plan, stem_channels)
        # ModuleDict keys are block indices as strings; the labels are the user-facing names.
        self.skips = nn.ModuleDict({
            str(index): InputChoice(n_candidates=2, n_chosen=1, reduction="sum", label=skip_label(k + 1))
            for k, index in enumerate(positions)
        })
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        for index, block in enumerate(self.blocks):
            skip = self.skips[str(index)] if str(index) in self.skips else None
            block_in = out
            out = block(out)
            if skip is not None:
                out = out + skip([torch.zeros_like(block_in), block_in])
        # After four stride-2 blocks a 32x32 input is 2x2: this is the 2x2 average pool.
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(torch.flatten(out, 1))


# --- architectures as data ------------------------------------------------------------------------

def space_choices(space: ModelSpace | None = None) -> dict[str, CategoricalMultiple]:
    """The space's choices by label (``space.simplify()``), checked to be single-pick input choices."""
    space = space if space is not None else MobileNetSkipSpace()
    choices = space.simplify()
    for label, choice in choices.items():
        if not isinstance(choice, CategoricalMultiple) or choice.n_chosen != 1:
            raise TypeError(f"{label}: expected an InputChoice picking one candidate, got {choice!r}")
    return choices


def search_space_json(space: ModelSpace | None = None) -> dict[str, Any]:
    """NNI's HPO search-space format for the space: one ``choice`` over candidate indices per label.

    This is what ``classic_nas/search_space.json`` must hold (``python -m classic_nas.export_space``
    writes it; a test fails when the two disagree).
    """
    return {label: {"_type": "choice", "_value": list(choice.values)}
            for label, choice in space_choices(space).items()}


def validate_arch(arch: Any, source: str = "architecture") -> dict[str, int]:
    """Check a user-facing architecture: exactly the six labels, each the integer 0 or 1.

    Raises :class:`UserError` naming the first bad label and what is expected.
    """
    expected = ", ".join(SKIP_LABELS)
    if not isinstance(arch, dict):
        raise UserError(f"{source}: expected a JSON object {{label: 0 or 1}} with the labels {expected}; "
                        f"got {type(arch).__name__}")
    missing = [label for label in SKIP_LABELS if label not in arch]
    if missing:
        raise UserError(f"{source}: missing skip label {missing[0]!r}; expected labels: {expected}")
    extra = sorted(str(label) for label in arch if label not in SKIP_LABELS)
    if extra:
        raise UserError(f"{source}: unknown skip label {extra[0]!r}; expected labels: {expected}")
    for label in SKIP_LABELS:
        value = arch[label]
        if isinstance(value, bool) or not isinstance(value, int) or value not in (SKIP_OFF, SKIP_ON):
            raise UserError(f"{source}: {label}: {json.dumps(value)} is not allowed; expected the integer "
                            f"{SKIP_OFF} (no skip) or {SKIP_ON} (skip connection)")
    return {label: arch[label] for label in SKIP_LABELS}


def to_nni_sample(arch: dict[str, int]) -> dict[str, list[int]]:
    """``{"skip1": 1, ...}`` -> NNI's sample ``{"skip1": [1], ...}`` (validated first)."""
    return {label: [value] for label, value in validate_arch(arch).items()}


def from_nni_sample(sample: dict[str, Any]) -> dict[str, int]:
    """NNI's sample ``{"skip1": [1], ...}`` (or plain ints) -> ``{"skip1": 1, ...}``."""
    plain = {k: (v[0] if isinstance(v, (list, tuple)) and len(v) == 1 else v) for k, v in sample.items()}
    return validate_arch(plain, source="NNI sample")


def build_model(arch: dict[str, int], num_classes: int = 10) -> MobileNetSkipSpace:
    """The fixed child network of ``arch`` (user format)."""
    with model_context(to_nni_sample(arch)):
        return MobileNetSkipSpace(num_classes=num_classes)


def all_archs() -> Iterator[dict[str, int]]:
    """Every architecture of the space (64), in binary order from all-off to all-on."""
    for values in itertools.product((SKIP_OFF, SKIP_ON), repeat=len(SKIP_LABELS)):
        yield dict(zip(SKIP_LABELS, values))


def arch_name(arch: dict[str, int]) -> str:
    """A compact name: the skip bits in label order, e.g. '101100'."""
    return "".join(str(arch[label]) for label in SKIP_LABELS)


def read_arch(path: str | os.PathLike) -> dict[str, int]:
    """Read and validate an architecture JSON file (``best_arch.json``)."""
    return validate_arch(read_json(path, "architecture file"), source=str(path))
