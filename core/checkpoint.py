"""Atomic file writes and self-describing checkpoints, loaded with ``weights_only=True``."""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError, first_line


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Mode of the files written here: the usual 0666 less the umask (``mkstemp`` alone gives 0600,
#: which would make a shared data root's cache unreadable to the other users of a machine).
FILE_MODE = 0o666 & ~_umask()


def temp_files(path: Path) -> list[Path]:
    """Temporary files an interrupted :func:`atomic_write_bytes` of ``path`` may have left."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A reader (or a run killed half-way) sees either the old file or the new one, never a mix; a
    kill before the rename leaves a ``.<name>.*.tmp`` file, removed by the next start of that run
    (:func:`temp_files`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), FILE_MODE)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` ``state`` atomically. Keep it to tensors, numbers, strings, lists and dicts."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"checkpoint {str(p)!r} is a folder; pass the checkpoint.pt inside it")
    if not p.is_file():
        raise UserError(f"checkpoint {str(p)!r} does not exist")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated, empty or foreign file: say which, not a traceback
        raise UserError(f"checkpoint {str(p)!r} cannot be read: {first_line(exc)}") from None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {str(p)!r} cannot be read: it holds a {type(state).__name__}, not a checkpoint")
    return state


def rng_state() -> dict[str, Any]:
    """Torch's global RNG states (CPU and every CUDA device)."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
