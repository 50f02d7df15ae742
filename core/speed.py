"""Speed choices that depend on the device, each made by measurement (figures: docs/speed.md,
from ``benchmarks/bench_trial.py``): the memory format the config's ``channels_last: auto`` picks,
and ``torch.compile``."""
from __future__ import annotations

import torch
from torch import nn

#: Device type -> whether ``channels_last: auto`` trains in channels_last memory format there.
#: CUDA: cuDNN's bf16 tensor-core convolutions run in NHWC (not yet measured on this project's models).
#: CPU: contiguous; measured on the loaded 2-core machine, channels_last won for five models and lost for
#: mobilenet and vgg, mostly within that machine's noise (docs/speed.md: a quiet rerun decides).
CHANNELS_LAST_AUTO: dict[str, bool] = {"cuda": True, "cpu": False}


def use_channels_last(setting: str, device: torch.device) -> bool:
    """The config's ``channels_last`` ('auto', 'on', 'off') resolved for ``device``."""
    if setting == "auto":
        return CHANNELS_LAST_AUTO.get(device.type, False)
    return setting == "on"


def compile_model(model: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile(model)`` (inductor; on a CPU it needs a C++ compiler) when ``enabled``, else
    ``model``. The compiled module shares the parameters of ``model``: save and load ``model``'s
    state dict, whose keys have no ``_orig_mod.`` prefix."""
    return torch.compile(model) if enabled else model
