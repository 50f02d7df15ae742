"""Turn an NNI experiment or a run folder into a Markdown report with plots, offline.

    python -m report EXPERIMENT_ID_OR_FOLDER [-o OUT/] [--retrains DIR ...]
    python -m report A B [C ...] -o OUT/                   # experiments of one stage, compared
    python -m report --study HPO_EXP NAS_EXP DARTS_RUN RETRAIN_RUN [-o OUT/]   # any subset, any order

The source is an experiment id (found as ``hpo/results.py`` finds it), an experiment folder (or its
``db/nni.sqlite``), a run folder (a retrain of any stage, ``python -m core.train_model``, a
DARTS search), or a DARTS protocol folder (``oneshot_darts/search.py --seeds ...``).
``OUT/report.md`` and the PNG figures it links go to ``OUT`` (default: ``report/`` inside the
experiment's or run's folder). OUT must not exist yet, be an empty folder, or be a report this
command wrote before (it leaves the file ``.report.json`` there, listing its files),
which is then replaced as a whole, in one step: a failed report leaves the old one, a bad source
leaves nothing, and what a killed one left beside OUT is put back or removed by the next run. Any other OUT (a folder of other files, a run folder, a symbolic link) is refused and left
as it is. An experiment's report looks for retrains of its trials (``--top K`` of the retrain
commands) in the runs folder (``CIFAR_AUTOML_RUNS``, default the repository's ``runs/``) and in every
``--retrains`` folder. An experiment's report folder also holds ``trials.csv`` and ``trials.json``
(every trial; :mod:`report.trials`).

Several experiments compare them (:mod:`report.compare`; ``-o`` is then required); ``--study``
writes the study report of up to four sources of one study, one of each kind
(:mod:`report.study`; default folder ``<runs folder>/study-<sources>``).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from core.files import atomic_write_text
from core.config import loads_json
from core.errors import ArgumentParser, UserError, cli_main
from core.paths import default_out_dir
from core.run_folder import METRICS_FILE
from experiments.folder import DB_PATH, is_experiment_dir
from report.records import is_run_folder, load_run

REPORT_FILE = "report.md"
#: Written into every report folder: says this command wrote it, and which files are its own.
MARKER_FILE = ".report.json"
MARKER_KIND = "python -m report"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m report", description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", metavar="source", help="experiment id, experiment folder, its "
                        f"{DB_PATH}, or a run folder; several experiments of one stage: a comparison")
    parser.add_argument("-o", "--out", help="report folder (default: <experiment or run folder>/report); it must be "
                        "new, empty, or a report written by this command, which is replaced")
    parser.add_argument("--study", action="store_true", help="the study report of the sources: an HPO experiment, a "
                        "classic-NAS experiment, a DARTS search and a retrain run (any subset, any order)")
    parser.add_argument("--experiments-dir", help="folder holding <id>/ (default: found via ~/nni-experiments)")
    parser.add_argument("--retrains", action="append", default=[], metavar="DIR",
                        help="also look for the experiment's retrains in DIR (a run folder or a folder of them); "
                        "repeatable")
    return parser


def _own_files(out: Path) -> set[str] | None:
    """The files of the report folder ``out`` as its marker lists them; None when ``out`` is not
    a report this command wrote."""
    marker = out / MARKER_FILE
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        data = loads_json(marker.read_text(), str(marker))
    except (OSError, UnicodeDecodeError, UserError):
        return None
    if not isinstance(data, dict) or data.get("kind") != MARKER_KIND or not isinstance(data.get("files"), list):
        return None
    return {str(f) for f in data["files"]} | {MARKER_FILE}


def check_out(out: Path) -> None:
    """``out`` may receive a report: it does not exist, is an empty folder, or is a report folder
    this command wrote holding nothing but its own files. Anything else is a :class:`UserError`,
    and nothing there is touched."""
    shown = repr(str(out))
    if out.is_symlink():
        raise UserError(f"-o: {shown} is a symbolic link; a report is never written through one (give the folder "
                        "it points to, or another)")
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"-o: {shown} exists and is not a folder; give a new folder for the report")
    try:
        entries = list(out.iterdir())
    except OSError as exc:
        raise UserError(f"-o: {shown} cannot be read ({exc.strerror})") from None
    if not entries:
        return
    own = _own_files(out)
    if own is None:
        raise UserError(f"-o: {shown} exists and is not a report written by python -m report (no {MARKER_FILE} "
                        "in it); it is left as it is: give a new or empty folder, or the folder of an earlier report")
    others = sorted(e.name for e in entries if e.name not in own or e.is_symlink() or not e.is_file())
    if others:
        raise UserError(f"-o: {shown} is an earlier report, but it also holds files the report did not write "
                        f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); it is left as it is: move "
                        "them out, or give another folder")


def _made_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the ones created, deepest first."""
    missing = []
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            pass
    return missing


# --- putting a report in place: OUT is the old report or the new one at every moment ---------------
#
# The report is built in ``.OUT.tmp-XXXXXXXX`` beside OUT (``tempfile.mkdtemp``'s eight characters),
# locked (``flock``) by the process building it for as long as it lives. It takes OUT's place by
# exchanging the two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``); where the file system
# cannot, the old report is first moved into ``.OUT.old-XXXXXXXX/OUT`` and the new one renamed into
# place. The old report is removed last. A run killed at any point (SIGKILL, SIGTERM) leaves at most
# those folders, and the next run into OUT puts a moved-aside report back where OUT is missing and
# removes the rest (:func:`recover`): only folders of exactly these names, not locked by a living run,
# holding nothing but files a report writes.

_RANDOM = re.compile(r"[a-z0-9_]{8}")       # tempfile.mkdtemp's names
_RENAME_EXCHANGE = 2                         # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the folders ``a`` and ``b`` in one step (neither is ever missing); False where the
    system or the file system cannot (then nothing happened)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):          # a C library without it (glibc before 2.28)
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _hold(folder: Path, wait: bool = False) -> int | None:
    """An open descriptor of ``folder`` holding its lock (``flock``, released when the process
    ends, however it ends); None when another process holds it, or it cannot be locked here."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def _holding(folder: Path):
    """Hold ``folder``'s lock (waiting for it): one report run at a time renames in it."""
    fd = _hold(folder, wait=True)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _leftover(folder: Path) -> bool:
    """Whether ``folder`` holds only what a report run writes: plain files (no folders, no links),
    and when its marker is there, only the files it lists (or a temporary file of an atomic write)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return False
    if any(e.is_symlink() or not e.is_file() for e in entries):
        return False
    own = _own_files(folder)
    return own is None or all(e.name in own or (e.name.startswith(".") and e.name.endswith(".tmp"))
                              for e in entries)


def recover(out: Path) -> None:
    """Put back, or remove, what a killed run into ``out`` left beside it: a report moved aside
    (``.OUT.old-XXXXXXXX/OUT``) goes back to ``out`` when ``out`` is missing, and is removed when
    ``out`` is there; a report being built or being removed (``.OUT.tmp-XXXXXXXX``) is removed.
    Folders another living run holds, and any that hold more than a report's files, are left alone."""
    if out.is_symlink():
        return
    try:
        entries = sorted(out.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        kind = next((k for k in ("tmp", "old") if entry.name.startswith(f".{out.name}.{k}-")), None)
        if kind is None or not _RANDOM.fullmatch(entry.name[len(out.name) + 6:]) or entry.is_symlink() \
                or not entry.is_dir():
            continue
        fd = _hold(entry)
        if fd is None:                      # a living run's, or a file system without locks: not ours to judge
            continue
        try:
            if kind == "tmp":
                if _leftover(entry):
                    shutil.rmtree(entry, ignore_errors=True)
                continue
            inner = list(entry.iterdir())
            old = entry / out.name
            if inner == [old] and not old.is_symlink() and old.is_dir():
                if not out.exists() and not out.is_symlink():
                    os.rename(old, out)         # what was OUT before the killed run moved it aside
                    print(f"restored {out}: a killed python -m report had moved it aside")
                elif _leftover(old):
                    shutil.rmtree(old, ignore_errors=True)
            if not any(entry.iterdir()):
                entry.rmdir()
        except OSError:
            pass                                # left for the next run (nothing was lost)
        finally:
            os.close(fd)


def _prepare(out: Path) -> None:
    """Recover what a killed run into ``out`` left, then check that ``out`` may receive a report."""
    if out.parent.is_dir() and not out.parent.is_symlink():
        with _holding(out.parent):
            recover(out)
    check_out(out)


def _publish(tmp: Path, out: Path) -> None:
    """Put the finished report folder ``tmp`` in the place of ``out``: ``out`` is the old report
    until the new one takes its place, in one step; the old one is then removed."""
    with _holding(out.parent):
        check_out(out)
        if not out.exists() or not any(out.iterdir()):
            os.replace(tmp, out)            # a missing or empty folder: replaced in one step
            return
        if _exchange(tmp, out):
            old = tmp
            try:
                check_out(old)              # still only the old report's files (nothing was added meanwhile)
            except UserError:
                _exchange(tmp, out)
                raise UserError(f"-o: {str(out)!r} changed while the report was written (files were added to it); "
                                "it is left as it is") from None
        else:                               # one rename after the other: a kill between them is recovered
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.rename(out, old / out.name)
            try:
                check_out(old / out.name)
                os.rename(tmp, out)
            except BaseException:
                os.rename(old / out.name, out)
                old.rmdir()
                raise
    shutil.rmtree(old, ignore_errors=True)


@cli_main
def main(argv: Sequence[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    from report import compare, darts_report, experiment_report, run_report, study

    if args.out is not None and not args.out:
        raise UserError("-o: the folder's name is empty; give the report folder, or leave -o out for the default one")
    out = Path(os.path.abspath(Path(args.out).expanduser())) if args.out is not None else None   # links in OUT kept
    if out is not None:
        _prepare(out)                   # before reading anything: a wrong -o fails at once
    retrain_dirs = [default_out_dir(), *args.retrains]
    source = Path(args.sources[0]).expanduser()
    if args.study:
        data = study.load(args.sources, args.experiments_dir, retrain_dirs)
        default_out = Path(default_out_dir()) / study.default_name(data)
        render = study.render
    elif len(args.sources) > 1:
        if out is None:
            raise UserError("comparing experiments: give the report folder with -o OUT")
        for s in args.sources:
            if is_run_folder(Path(s).expanduser()) or darts_report.is_protocol_folder(Path(s).expanduser()):
                raise UserError(f"comparing: {s!r} is a run folder; a comparison takes experiments (ids or folders) "
                                "of one stage; for a study's stages side by side use --study")
        data = compare.load(args.sources, args.experiments_dir, retrain_dirs)
        default_out, render = out, compare.render
    elif darts_report.is_protocol_folder(source):   # a DARTS protocol (search.py --seeds ...)
        data = darts_report.load_protocol(source)
        default_out = source / "report"
        render = darts_report.render_protocol
    elif is_run_folder(source):
        data = load_run(source)
        default_out = source / "report"
        render = run_report.render_run
    else:
        if source.is_dir() and not is_experiment_dir(source):
            raise UserError(f"{str(source)!r} is neither an NNI experiment folder (no {DB_PATH}) nor a run "
                            f"folder (no {METRICS_FILE})")
        data = experiment_report.load(args.sources[0], args.experiments_dir, retrain_dirs)
        default_out = data.exp_dir / "report"
        render = experiment_report.render
    out = out or Path(os.path.abspath(default_out))
    _prepare(out)
    try:
        made = _made_parents(out.parent)
        with _holding(out.parent):
            tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
            held = _hold(tmp)               # while this process lives, no other run takes it for a leftover
    except OSError as exc:
        raise UserError(f"-o: cannot write the report into {str(out.parent)!r} ({exc.strerror})") from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())   # a folder's usual mode, not mkdtemp's 0700
        atomic_write_text(tmp / REPORT_FILE, render(data, tmp))
        files = sorted(p.name for p in tmp.iterdir())
        shown = args.sources[0] if len(args.sources) == 1 and not args.study else list(args.sources)
        atomic_write_text(tmp / MARKER_FILE, json.dumps({"kind": MARKER_KIND, "source": shown, "study": args.study,
                                                         "files": files}, indent=2) + "\n")
        _publish(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:             # deepest first; only folders this command created, and only if empty
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(exc, OSError):
            raise UserError(f"-o: cannot write the report to {str(out)!r} ({exc.strerror or exc})") from None
        raise
    finally:
        if held is not None:
            os.close(held)
    print(f"wrote {out / REPORT_FILE}")
    return out / REPORT_FILE


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
