"""Write the best architecture of a classic-NAS experiment to ``best_arch.json``.

    python -m classic_nas.export EXPERIMENT_ID [--out best_arch.json]
    python -m classic_nas.export ~/nni-experiments/EXPERIMENT_ID        # a folder, nni.sqlite or export file

The experiment is read without the web UI by the shared reader :mod:`experiments.reader` (the
experiment's sqlite database, or an ``nnictl experiment export`` file). The best trial is the one
with the highest final ``default`` (validation accuracy) of those :func:`experiments.reader.ranked`
ranks (a valid accuracy in [0, 1], not diverged: the rule every reader ranks by). Its
architecture is the ``skip1`` ... ``skip6`` keys the trial repeats in its final result (robust to
NNI 3.0 recording another concurrent trial's parameters; the reader prefers them), else its
parameters, written as ``{"skip1": 0 or 1, ...}`` for ``classic_nas/retrain.py --arc``. The table of every
trial, best first, goes to standard output.

An existing ``--out`` file is replaced only when it holds such an architecture (an earlier export,
say); any other file is refused, and left as it is, unless ``--overwrite`` is given.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Sequence

from core.files import add_overwrite_argument, atomic_write_text, check_output_file
from core.errors import ArgumentParser, UserError, cli_main
from experiments.reader import Trial, ranked
from experiments.reader import load_experiment as _load_experiment


def load_experiment(source: str | os.PathLike, experiments_dir: str | os.PathLike | None = None) -> list[Trial]:
    """The trials of a classic-NAS experiment, with the architecture each really trained."""
    from classic_nas.space import SKIP_LABELS

    return _load_experiment(source, experiments_dir=experiments_dir, param_keys=SKIP_LABELS)


def trial_arch(trial: Trial) -> dict[str, int]:
    """The architecture a trial trained (see the module docstring), validated."""
    from classic_nas.space import validate_arch

    return validate_arch(trial.params, source=f"trial {trial.trial_id}")


def format_table(trials: Sequence[Any]) -> str:
    from classic_nas.space import arch_name

    lines = [f"{'trial':8} {'arch':8} {'val_acc':>7}  per-epoch val_acc"]
    for t in trials:
        epochs = " ".join(f"{v:.4f}" for v in t.intermediates)
        lines.append(f"{t.trial_id:8} {arch_name(trial_arch(t)):8} {t.final:7.4f}  {epochs}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m classic_nas.export", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="experiment id, experiment folder, nni.sqlite, or an nnictl export .json/.csv")
    parser.add_argument("--experiments-dir", help="folder holding <id>/ (default: found via ~/nni-experiments)")
    parser.add_argument("--out", default="best_arch.json", help="architecture file to write (default: %(default)s); "
                        "an existing file is replaced only when it holds an architecture")
    add_overwrite_argument(parser)
    return parser


def holds_arch(text: str) -> bool:
    """Whether ``text`` is what this command writes: a classic-NAS architecture file."""
    from classic_nas.space import validate_arch

    validate_arch(json.loads(text))
    return True


@cli_main
def main(argv: Sequence[str] | None = None) -> dict[str, int]:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out: {str(out)!r} is a folder; give the file to write, e.g. {str(out / 'best_arch.json')!r}")
    check_output_file(out, "--out", "a classic-NAS architecture", holds_arch, args.overwrite)
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):   # said before the experiment is read
        raise UserError(f"--out: cannot write {str(out)!r} ({str(parent)!r} is not writable)")
    trials = load_experiment(args.source, experiments_dir=args.experiments_dir)
    good = ranked(trials)
    if not good:
        raise UserError(f"experiment {args.source!r}: none of its {len(trials)} trials has a final result "
                        "(that did not diverge) yet")
    best = good[0]
    arch = trial_arch(best)
    print(format_table(good))
    try:
        atomic_write_text(out, json.dumps(arch, indent=2) + "\n")
    except OSError as exc:
        raise UserError(f"--out: cannot write {str(out)!r} ({exc.strerror or exc}); nothing was written") from None
    print(f"best: trial {best.trial_id} val_acc {best.final:.4f} -> {out}")
    return arch


if __name__ == "__main__":
    main()
