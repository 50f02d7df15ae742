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
which is then replaced as a whole: a failed report leaves the old one, and a bad source leaves
nothing. Any other OUT (a folder of other files, a run folder, a symbolic link) is refused and left
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
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from core.files import atomic_write_text
from core.config import loads_json
from core.errors import ArgumentParser, UserError, cli_main
from core.paths import default_out_dir
from core.run import METRICS_FILE
from report.common import is_run_folder

REPORT_FILE = "report.md"
#: Written into every report folder: says this command wrote it, and which files are its own.
MARKER_FILE = ".report.json"
MARKER_KIND = "python -m report"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m report", description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", metavar="source", help="experiment id, experiment folder, its "
                        "db/nni.sqlite, or a run folder; several experiments of one stage: a comparison")
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


def _publish(tmp: Path, out: Path) -> None:
    """Put the finished report folder ``tmp`` in the place of ``out`` (renames only): ``out`` is
    the old report until the new one takes its place; the old one is then removed."""
    check_out(out)
    if not out.exists():
        os.replace(tmp, out)
        return
    if not any(out.iterdir()):
        os.rmdir(out)
        os.replace(tmp, out)
        return
    aside = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    os.replace(out, aside / out.name)
    try:
        check_out(aside / out.name)     # still only the old report's files (nothing was added meanwhile)
        os.replace(tmp, out)
    except BaseException:
        os.replace(aside / out.name, out)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)


@cli_main
def main(argv: Sequence[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    from report import compare, darts_report, experiment_report, run_report, study

    out = Path(os.path.abspath(Path(args.out).expanduser())) if args.out else None   # links in OUT itself kept
    if out is not None:
        check_out(out)                  # before reading anything: a wrong -o fails at once
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
        data = run_report.load_run(source)
        default_out = source / "report"
        render = run_report.render_run
    else:
        if source.is_dir() and not (source / "db" / "nni.sqlite").is_file():
            raise UserError(f"{str(source)!r} is neither an NNI experiment folder (no db/nni.sqlite) nor a run "
                            f"folder (no {METRICS_FILE})")
        data = experiment_report.load(args.sources[0], args.experiments_dir, retrain_dirs)
        default_out = data.exp_dir / "report"
        render = experiment_report.render
    out = out or Path(os.path.abspath(default_out))
    check_out(out)
    try:
        made = _made_parents(out.parent)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
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
    print(f"wrote {out / REPORT_FILE}")
    return out / REPORT_FILE


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
