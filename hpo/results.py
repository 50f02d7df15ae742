"""The HPO stage's view of an experiment: its trials read by the shared reader
(:mod:`core.experiments`, with the HPO parameters ``model``, ``optimizer``, ``lr`` recovered from
each trial's final result), Hyperband's trial-epoch accounting, and a command line.

    python hpo/results.py ID_OR_PATH [--top 10] [--epochs N]

prints the trials, the best one and, with ``--epochs``, the trial-epochs run against running every
configuration to the end.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any, Sequence

from core.errors import ArgumentParser, UserError, cli_main
from core.experiments import Trial, best_trial, ranked
from core.experiments import load_experiment as _load_experiment
from hpo import BUDGET_KEY, PARAM_KEYS

__all__ = ["Trial", "best_trial", "ranked", "load_experiment", "searched_params", "configuration_key",
           "epoch_budget"]


def load_experiment(source: str | os.PathLike, *, experiments_dir: str | os.PathLike | None = None) -> list[Trial]:
    """The trials of an HPO experiment (id, folder, ``nni.sqlite`` or export file)."""
    return _load_experiment(source, experiments_dir=experiments_dir, param_keys=PARAM_KEYS)


def searched_params(trial: Trial) -> dict[str, Any]:
    """The trial's parameters without Hyperband's budget (what a retrain takes over)."""
    return {k: v for k, v in trial.params.items() if k != BUDGET_KEY}


def configuration_key(trial: Trial) -> str:
    """Which configuration a trial trained: Hyperband's ids ``'<bracket>_<round>_<config>'`` keep
    the config number when a configuration is promoted to a larger budget; other ids are one
    configuration each; without an id (export files), the parameters themselves."""
    pid = trial.parameter_id
    if isinstance(pid, str) and pid.count("_") == 2:
        return "config " + pid.rsplit("_", 1)[1]
    if pid is not None:
        return f"id {pid}"
    return json.dumps(searched_params(trial), sort_keys=True)


def epoch_budget(trials: Sequence[Trial], full_epochs: int) -> dict[str, int]:
    """Trial-epochs run versus running every trained configuration to ``full_epochs``.

    Hyperband reruns a promoted configuration from scratch with a larger budget, so a configuration
    can span several trials (see :func:`configuration_key`). Only configurations that trained at
    least one epoch count (a trial rejected at once costs nothing either way).
    """
    configs = {configuration_key(t) for t in trials if t.epochs_run}
    run = sum(t.epochs_run for t in trials)
    full = len(configs) * full_epochs
    return {"trials": len(trials), "configurations": len(configs), "epochs_run": run,
            "epochs_if_all_ran_to_end": full, "epochs_saved": full - run}


# --- command line ------------------------------------------------------------------------------

def format_table(trials: Sequence[Trial], top: int = 0) -> str:
    rows = sorted(trials, key=lambda t: -(t.final if t.final is not None else -math.inf)) if top else list(trials)
    rows = rows[:top] if top else rows
    lines = [f"{'trial':8} {'status':14} {'final':>7} {'epochs':>6}  params"]
    for t in rows:
        final = f"{t.final:.4f}" if t.final is not None else "-"
        extra = f"  [{t.error}]" if t.error else ""
        lines.append(f"{t.trial_id:8} {t.status:14} {final:>7} {t.epochs_run:>6}  "
                     f"{json.dumps(t.params, sort_keys=True)}{extra}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python hpo/results.py", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="experiment id, experiment folder, nni.sqlite, or an nnictl export .json/.csv")
    parser.add_argument("--experiments-dir", help="folder holding <id>/ (default: found via ~/nni-experiments)")
    parser.add_argument("--top", type=int, default=0, help="list only the N best trials (0 = all, in start order)")
    parser.add_argument("--epochs", type=int, default=0,
                        help="epochs a trial runs when not stopped early (Hyperband: R): print trial-epochs saved")
    parser.add_argument("--mode", default="maximize", help="maximize (default) or minimize")
    parser.add_argument("--json", action="store_true", help="print the best trial as JSON only")
    return parser


@cli_main
def main(argv: Sequence[str] | None = None) -> Trial | None:
    args = build_parser().parse_args(argv)
    for name in ("top", "epochs"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name}: {getattr(args, name)} is not allowed; it must be 0 or more")
    trials = load_experiment(args.source, experiments_dir=args.experiments_dir)
    good = ranked(trials, args.mode)
    best = good[0] if good else None
    if args.json:
        if best is None:
            raise UserError(f"none of the {len(trials)} trials has a final result (that did not diverge) yet")
        print(json.dumps({"trial_id": best.trial_id, "params": best.params, "final": best.final,
                          "final_metrics": best.final_metrics, "intermediates": best.intermediates}))
        return best
    print(format_table(trials, args.top))
    if best is None:  # a running experiment: show what is known so far
        print(f"\nno trial of the {len(trials)} has a final result yet")
    else:
        print(f"\nbest: trial {best.trial_id} final {best.final:.4f} params {json.dumps(best.params, sort_keys=True)}"
              + (f" test_acc {best.final_metrics['test_acc']:.4f}" if "test_acc" in best.final_metrics else ""))
    if args.epochs:
        print("trial-epochs: " + json.dumps(epoch_budget(trials, args.epochs)))
    return best


if __name__ == "__main__":
    main()
