"""Atomic file writes: a reader, or a run killed half-way, sees the old file or the new one, never a
mix, and nothing is ever written through a symbolic link (:func:`open_no_follow`); and the one rule
for an output file a user names (:func:`check_output_file`) and for an input file
(:func:`check_input_file`). Imports nothing heavy, so that commands can write their small files (and
check their input) before torch is imported."""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Callable

from core.errors import UserError


def open_no_follow(path: str | os.PathLike, flags: int) -> int:
    """``os.open(path, flags)`` for a file the project writes, never through a symbolic link: a link
    there could point at anyone's file, so it is one line naming it, nothing written."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{str(path)!r} is a symbolic link; the project's files are never written through one "
                            "(remove the link to continue)") from None
        raise


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


#: The one flag with which a command replaces an existing output file that does not hold what it writes.
OVERWRITE_FLAG = "--overwrite"
#: A file larger than this is never taken for one of the small files a command writes.
_OWN_FILE_MAX_BYTES = 1 << 20


def add_overwrite_argument(parser: argparse.ArgumentParser, flag: str = "--out") -> None:
    parser.add_argument(OVERWRITE_FLAG, action="store_true",
                        help=f"replace an existing {flag} file even when it does not hold what this command writes")


def check_input_file(path: str | os.PathLike, what: str, folder_hint: str = "") -> Path:
    """``path`` (a file the user named, ``what`` it is: "config file", "checkpoint"), when it is a
    file that is there; a folder (``folder_hint``: what to pass instead) or nothing there is a
    :class:`UserError` naming it."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} {str(p)!r} is a folder, not a file" + (f"; {folder_hint}" if folder_hint else ""))
    if not p.is_file():
        moved = p.with_suffix(".yml") if p.suffix == ".yaml" else None
        hint = f" (the project's YAML files end in .yml: {str(moved)!r})" if moved and moved.is_file() else ""
        raise UserError(f"{what} {str(p)!r} does not exist{hint}")
    return p


def check_output_file(path: str | os.PathLike, flag: str, kind: str, holds_own: Callable[[str], object],
                      overwrite: bool = False) -> None:
    """``path``, named by the user with ``flag``, may receive this command's file: it does not exist
    yet, or it already holds ``kind``, what this command writes (``holds_own(text)`` is true: an
    earlier output of the command, or a file of the same kind), or ``overwrite``
    (:data:`OVERWRITE_FLAG`) was given. Any other file (the user's ``notes.txt``) is a
    :class:`UserError`, said before any work, and is left as it is. A folder, a symbolic link or
    anything but a regular file is refused even with ``overwrite``."""
    path = Path(path)
    shown = repr(str(path))
    if path.is_symlink():
        raise UserError(f"{flag}: {shown} is a symbolic link; a file is never written through one nor replaced "
                        "(give another path)")
    if not path.exists():
        return
    if path.is_dir():
        raise UserError(f"{flag}: {shown} is a folder; give the file to write")
    if not path.is_file():
        raise UserError(f"{flag}: {shown} is not a regular file; give another path")
    if overwrite:
        return
    try:
        own = path.stat().st_size <= _OWN_FILE_MAX_BYTES and bool(holds_own(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, UserError):
        own = False
    if not own:
        raise UserError(f"{flag}: {shown} exists and does not hold {kind}, what this command writes; it is left "
                        f"as it is: give a new file, or add {OVERWRITE_FLAG} to replace it")
