"""A sequence of trainings in a folder: each training a step in its own run folder, each step
resumable, the folder locked while a command works in it. The commands that chain trainings use
these rules and nothing else:

* **the lock** (:func:`lock_folder`): ``.lock`` (:data:`core.run_folder.LOCK_FILE`) in the folder,
  held with ``flock`` on a descriptor opened without following a symbolic link, taken without
  waiting; the system lets it go when the process ends, however it ends. A folder, or a lock file,
  that is a symbolic link is refused with one line (nothing is written through a link); a lock
  another process holds is :class:`FolderBusy` (or ``None`` for a caller that goes on with the
  next step);
* **a step** (:func:`claim_step`, :func:`run_step`), in its run folder: what a killed atomic write
  left there (``.<name>.*.tmp``) is removed; a result there (:func:`core.run_folder.read_result`; a
  damaged one is one line): done, skipped; a checkpoint there but no result: half-done, resumed from
  the checkpoint; otherwise started (again) from scratch, without the metrics a start killed before
  its first checkpoint left;
* **a step's record** (:func:`core.run_folder.write_record`): written atomically (a temporary file renamed into
  place), so that a kill leaves the old record or the new one, never half of one.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Any, Callable

from core.errors import UserError
from core.files import open_no_follow
from core.run_folder import CHECKPOINT_FILE, LOCK_FILE, METRICS_FILE, Run, read_result

#: What :func:`claim_step` finds a step's folder asks for.
SKIPPED, RESUMED, STARTED = "skipped", "resumed", "started"


class FolderBusy(UserError):
    """Another process holds the folder's lock."""


class FolderLock:
    """A folder's lock, held until :meth:`release` (or the end of the process)."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)           # closing the descriptor lets the flock go
            self.fd = None

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_folder(folder: str | os.PathLike, busy: str | None = None) -> FolderLock | None:
    """Take ``folder``'s lock without waiting. Another process holding it: ``None``, or, with
    ``busy`` (the line to say), :class:`FolderBusy`. A folder or a lock file that is a symbolic link
    is a :class:`UserError`, nothing written."""
    folder = Path(folder)
    if folder.is_symlink():
        raise UserError(f"{str(folder)!r} is a symbolic link; a folder of trainings is never worked in through one "
                        "(remove the link, or give the real folder)")
    path = folder / LOCK_FILE
    fd = open_no_follow(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        if busy is not None:
            raise FolderBusy(busy) from None
        return None
    return FolderLock(fd, path)


def claim_step(run_dir: str | os.PathLike) -> str:
    """What the step in ``run_dir`` (an existing folder, locked by the caller) asks for:
    :data:`SKIPPED` (done), :data:`RESUMED` (a checkpoint) or :data:`STARTED`; removes what a killed
    atomic write left there, and for a start the metrics a start killed before its first checkpoint
    left."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        Run(run_dir).remove_temp_files()
    if read_result(run_dir) is not None:
        return SKIPPED
    if (run_dir / CHECKPOINT_FILE).is_file():
        return RESUMED
    (run_dir / METRICS_FILE).unlink(missing_ok=True)
    return STARTED


def run_step(run_dir: str | os.PathLike, label: str, start: Callable[[Path], dict[str, Any]],
             resume: Callable[[Path], dict[str, Any]],
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One step in ``run_dir`` by the rules of :func:`claim_step`: done, its result; half-done,
    ``resume(checkpoint)``; else ``start(run_dir)``. ``label`` names the step in the line it logs."""
    run_dir = Path(run_dir)
    log = log or (lambda message: print(message, flush=True))
    action = claim_step(run_dir)
    if action == SKIPPED:
        log(f"{label}: finished before ({run_dir}), skipped")
        return read_result(run_dir) or {}
    if action == RESUMED:
        log(f"{label}: resuming {run_dir / CHECKPOINT_FILE}")
        return resume(run_dir / CHECKPOINT_FILE)
    log(f"{label}: starting in {run_dir}")
    return start(run_dir)
