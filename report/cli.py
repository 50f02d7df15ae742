"""Turn an NNI experiment or a run folder into a Markdown report with plots, offline.

    python -m report EXPERIMENT_ID_OR_FOLDER [-o OUT/] [--retrains DIR ...]

The source is an experiment id (found as ``hpo/results.py`` finds it), an experiment folder (or its
``db/nni.sqlite``), or a run folder (a retrain of any stage, ``python -m core.train_model``, a
DARTS search). ``OUT/report.md`` and the PNG figures it links go to ``OUT`` (default: ``report/``
inside the experiment's or run's folder), replaced as a whole: a failed report leaves the old one,
and a bad source leaves nothing. An experiment's report looks for retrains of its trials
(``--top K`` of the retrain commands) in the runs folder (``CIFAR_AUTOML_RUNS``, default the
repository's ``runs/``) and in every ``--retrains`` folder.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from core.checkpoint import atomic_write_text
from core.errors import UserError, cli_main
from core.paths import default_out_dir
from core.run import CONFIG_FILE, METRICS_FILE

REPORT_FILE = "report.md"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m report", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="experiment id, experiment folder, its db/nni.sqlite, or a run folder")
    parser.add_argument("-o", "--out", help="report folder (default: <experiment or run folder>/report)")
    parser.add_argument("--experiments-dir", help="folder holding <id>/ (default: found via ~/nni-experiments)")
    parser.add_argument("--retrains", action="append", default=[], metavar="DIR",
                        help="also look for the experiment's retrains in DIR (a run folder or a folder of them); "
                        "repeatable")
    return parser


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and not (path / "db" / "nni.sqlite").is_file() and \
        any((path / name).exists() for name in (METRICS_FILE, CONFIG_FILE, "result.json", "checkpoint.pt"))


def _publish(tmp: Path, out: Path) -> None:
    """Put the finished ``tmp`` folder in the place of ``out`` (renames only)."""
    old = None
    if out.exists():
        if not out.is_dir():
            raise UserError(f"-o: {str(out)!r} exists and is not a folder")
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@cli_main
def main(argv: Sequence[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    from report import experiment_report, run_report

    source = Path(args.source).expanduser()
    if is_run_folder(source):
        data = run_report.load_run(source)
        default_out = source / "report"
        render = run_report.render_run
    else:
        if source.is_dir() and not (source / "db" / "nni.sqlite").is_file():
            raise UserError(f"{str(source)!r} is neither an NNI experiment folder (no db/nni.sqlite) nor a run "
                            f"folder (no {METRICS_FILE})")
        data = experiment_report.load(args.source, args.experiments_dir, [default_out_dir(), *args.retrains])
        default_out = data.exp_dir / "report"
        render = experiment_report.render
    out = Path(args.out).expanduser().resolve() if args.out else default_out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        atomic_write_text(tmp / REPORT_FILE, render(data, tmp))
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {out / REPORT_FILE}")
    return out / REPORT_FILE
