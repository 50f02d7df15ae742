"""Mirror the lab's local working folder to the lab folder, and restore it from there after a reset.

Used when the lab folder is on a FUSE mount (Google Drive on Colab, :func:`on_fuse`): the stages work
on local disk and every change is copied to the lab folder while they run (``docs/colab.md`` says why:
NNI's SQLite database and the per-epoch checkpoints are not written straight onto Drive's mount).

- :func:`mirror` copies every file of the working folder that is new or changed since the last
  mirror (size and modification time, recorded in the lab folder's ``.mirror.json``), each through a
  temporary file renamed into place, so the lab folder never holds a half-copied file; it removes from
  the lab folder the files the working folder no longer has (a report replaced as a whole, say).
  Symbolic links, lock files, temporary files and SQLite's journals are not copied.
- An SQLite database (``*.sqlite``: NNI's ``db/nni.sqlite``) is copied while NNI's manager may be
  writing it: first with SQLite's backup API into a hidden temporary file beside it on local disk (a
  consistent snapshot, never half a transaction; its read lock lasts milliseconds, well within the
  1 s that NNI's manager waits on a lock: node-sqlite3's default busy timeout, which NNI 3.0 keeps),
  then that file is copied to the lab folder like any other.
- :func:`restore` copies back every mirrored file that the working folder lacks, with its recorded
  modification time, so the next mirror finds nothing changed.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

MANIFEST = ".mirror.json"


@dataclass
class Mirrored:
    copied: int = 0
    removed: int = 0
    manifest: dict[str, list[int]] = field(default_factory=dict)   # the lab folder's, after this mirror


def on_fuse(path: str | os.PathLike, mounts: str | None = None) -> bool:
    """Whether ``path`` is on a FUSE file system, as Google Drive's mount on Colab is: the file-system
    type of the deepest mount point holding it in ``mounts`` (default ``/proc/self/mounts``; False
    where that cannot be read)."""
    real = os.path.realpath(os.path.abspath(path))
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return False
    best, fstype = "", ""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, parts[2]
    return fstype.startswith("fuse")


def skipped(name: str) -> bool:
    """Files never mirrored: the manifest, lock files, temporary files, SQLite journals."""
    return (name == MANIFEST or name.endswith(".lock") or (name.startswith(".") and name.endswith(".tmp"))
            or name.endswith(("-journal", "-wal", "-shm")))


def _files(root: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    for folder, dirs, names in os.walk(root):          # does not follow linked folders
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))   # temporary folders
        for name in sorted(names):
            path = Path(folder, name)
            if skipped(name):
                continue
            try:
                st = path.lstat()
            except FileNotFoundError:                  # removed while walking (a trial's temporary file)
                continue
            if not path.is_symlink() and os.path.isfile(path):
                yield path.relative_to(root).as_posix(), path, st


def _snapshot_sqlite(src: Path, snapshot: Path) -> None:
    """A consistent copy of a database another process may be writing (SQLite's backup API)."""
    source = sqlite3.connect(src, timeout=30)
    try:
        target = sqlite3.connect(snapshot)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()


def _copy(src: Path, dst: Path, mtime_ns: int) -> None:
    """``src`` to ``dst`` through a temporary file renamed into place, with ``mtime_ns``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.mirror.tmp")
    snapshot = src.with_name(f".{src.name}.{os.getpid()}.snapshot.tmp")
    try:
        if src.suffix == ".sqlite":
            _snapshot_sqlite(src, snapshot)
            shutil.copyfile(snapshot, tmp)
        else:
            shutil.copyfile(src, tmp)
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
        snapshot.unlink(missing_ok=True)


def read_manifest(dst: Path) -> dict[str, list[int]]:
    try:
        data = json.loads((dst / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    # only paths inside the mirror: a removal never leaves ``dst`` whatever the file says
    return {rel: sig for rel, sig in data.items()
            if isinstance(rel, str) and rel and not Path(rel).is_absolute() and ".." not in Path(rel).parts}


def _write_manifest(dst: Path, manifest: dict[str, list[int]]) -> None:
    tmp = dst / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, sort_keys=True))
    os.replace(tmp, dst / MANIFEST)


def mirror(src: str | os.PathLike, dst: str | os.PathLike, manifest: dict[str, list[int]] | None = None) -> Mirrored:
    """Make ``dst`` a copy of ``src`` (module doc); ``manifest``: the one the last mirror returned
    (default: read from ``dst``). Returns what was copied and removed, and the manifest now."""
    src, dst = Path(src), Path(dst)
    old = read_manifest(dst) if manifest is None else manifest
    new: dict[str, list[int]] = {}
    done = Mirrored()
    for rel, path, st in _files(src):
        sig = [st.st_size, st.st_mtime_ns]
        if old.get(rel) == sig:
            new[rel] = sig
            continue
        dst.mkdir(parents=True, exist_ok=True)
        try:
            _copy(path, dst / rel, st.st_mtime_ns)
        except FileNotFoundError:                      # removed since the walk saw it
            continue
        new[rel] = sig
        done.copied += 1
    for rel in sorted(set(old) - set(new)):
        if not (src / rel).exists():
            (dst / rel).unlink(missing_ok=True)
            done.removed += 1
            _remove_empty_parents(dst / rel, dst)
        else:
            new[rel] = old[rel]
    if new != old or not (dst / MANIFEST).is_file():
        dst.mkdir(parents=True, exist_ok=True)
        _write_manifest(dst, new)
    done.manifest = new
    return done


def _remove_empty_parents(path: Path, root: Path) -> None:
    folder = path.parent
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def restore(dst: str | os.PathLike, src: str | os.PathLike) -> int:
    """Copy back into ``src`` every file mirrored to ``dst`` that ``src`` lacks; returns how many."""
    src, dst = Path(src), Path(dst)
    count = 0
    for rel, (_size, mtime_ns) in sorted(read_manifest(dst).items()):
        target = src / rel
        if target.exists() or not (dst / rel).is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.restore.tmp")
        try:
            shutil.copyfile(dst / rel, tmp)
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        count += 1
    return count
