"""Atomic file writes: a reader, or a run killed half-way, sees the old file or the new one, never a
mix, and nothing is ever written through a symbolic link. Imports nothing heavy, so that commands
can write their small files (and check their input) before torch is imported."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from core.errors import UserError


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


def write_error(exc: OSError, path: Path) -> OSError:
    """``exc`` (a full disk, a read-only file system, an I/O error) as the same error about ``path``,
    the file the command meant to write: :func:`core.errors.cli_main` shows it as one line naming
    that file, where an error of ``write`` or ``fsync`` names none."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A reader (or a run killed half-way) sees either the old file or the new one, never a mix; a
    kill before the rename leaves a ``.<name>.*.tmp`` file, removed by the next start of that run
    (:func:`temp_files`). A write that fails (no space left, a read-only file system, an I/O error)
    leaves the old file as it was and removes its temporary file; the error names ``path``
    (:func:`write_error`).
    """
    path = Path(path)
    if path.is_symlink():    # a command never writes through a link, nor silently replaces one
        raise UserError(f"{str(path)!r} is a symbolic link; it is not written through nor replaced (remove the "
                        "link to continue)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), FILE_MODE)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(exc, path) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
