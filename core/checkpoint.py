"""Self-describing checkpoints, written atomically (:mod:`core.files`), loaded with ``weights_only=True``."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError, first_line
from core.files import atomic_write_bytes, check_input_file


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` ``state`` atomically. Keep it to tensors, numbers, strings, lists and dicts."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``."""
    p = check_input_file(path, "checkpoint", "pass the checkpoint.pt inside it")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated, empty or foreign file: say which, not a traceback
        raise UserError(f"checkpoint {str(p)!r} cannot be read: {first_line(exc)}") from None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {str(p)!r} cannot be read: it holds a {type(state).__name__}, not a checkpoint")
    return state


class CudaRng:
    """The CUDA generator calls that :func:`rng_state` and :func:`set_rng_state` make, in one seam
    (tests replace :data:`CUDA_RNG` with a fake device set)."""

    def device_count(self) -> int:
        return torch.cuda.device_count()

    def current(self) -> int:
        return torch.cuda.current_device()

    def get(self, index: int) -> torch.Tensor:
        return torch.cuda.get_rng_state(index)

    def set(self, state: torch.Tensor, index: int) -> None:
        torch.cuda.set_rng_state(state, index)


CUDA_RNG = CudaRng()


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else CUDA_RNG.current()


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's generators: torch's CPU one and, when it trains on a GPU, that GPU's (only
    the current device's: a checkpoint must resume on a machine with fewer GPUs)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = CUDA_RNG.get(_cuda_index(device))
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` saved into this process's generators. Checkpoints written
    before held one CUDA state per visible GPU (``get_rng_state_all``): the state of the GPU this
    process now trains on is taken from them, when there is one."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if device.type != "cuda" or cuda is None:
        return
    index = _cuda_index(device)
    if isinstance(cuda, (list, tuple)):
        if index >= len(cuda):
            return
        cuda = cuda[index]
    CUDA_RNG.set(cuda, index)


def rng_states(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """A checkpoint's ``rng`` entry: every rank's :func:`rng_state`, in rank order."""
    return {"ranks": per_rank}


def rng_of_rank(saved: dict[str, Any], rank: int) -> tuple[dict[str, Any], bool]:
    """The generator state rank ``rank`` resumes with, and whether it is that rank's own (not when
    a run resumes on more processes than wrote the checkpoint; such a rank takes the state of
    rank ``rank % saved ranks``). Checkpoints written before per-rank states held rank 0's alone."""
    ranks = saved["ranks"] if "ranks" in saved else [saved]
    return ranks[rank % len(ranks)], rank < len(ranks)
