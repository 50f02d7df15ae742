"""What the benchmarks measure with: :func:`sync` before reading the clock, the :func:`load_average`
printed beside the figures, and their default data (:func:`default_data`: the JPEG CIFAR-10 copy in
``../shared`` where it is, else fake images). Imported by the benchmark scripts as ``measure``
(``python benchmarks/<script>.py`` puts this folder first on the path)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

#: The JPEG CIFAR-10 copy shared beside the repository.
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def default_data() -> str:
    """``--data`` of a benchmark: the :data:`SHARED` copy where it is, else ``fake``."""
    return str(SHARED) if SHARED.exists() else "fake"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that the clock reads its end."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages (other jobs on the machine slow every figure)."""
    return "/".join(f"{v:.2f}" for v in os.getloadavg())
