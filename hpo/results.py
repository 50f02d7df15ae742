"""The HPO stage's view of an experiment: its trials read by the shared reader
(:mod:`experiments.reader`, with the HPO parameters ``model``, ``optimizer``, ``lr`` recovered from
each trial's final result), Hyperband's trial-epoch accounting, and a command line.

    python hpo/results.py ID_OR_PATH [--top 10] [--epochs N]

prints the trials (a trial the assessor stopped as EARLY_STOPPED, a result at chance marked so), the
best one and, with ``--epochs``, the trial-epochs run against running every configuration to the end.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Sequence

from core.chance import at_chance, classes_of
from core.errors import ArgumentParser, UserError, cli_main
from core.output import print_result
from core.run_folder import read_config
from experiments.reader import Trial, best_trial, rank_problem, ranked
from experiments.reader import load_experiment as _load_experiment
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

def status(trial: Trial) -> str:
    """NNI's status, except that a trial the assessor stopped says EARLY_STOPPED (NNI 3.0 records
    USER_CANCELED), as the reports say."""
    return "EARLY_STOPPED" if trial.early_stopped else trial.status


def trial_at_chance(trial: Trial) -> bool | None:
    """Whether the trial's final result is at chance (:func:`core.chance.at_chance`: at most two
    standard errors above 1 / classes, over the validation images its final result names)."""
    config: dict[str, Any] = {}
    if trial.log_dir:
        try:
            config = read_config(trial.log_dir) or {}
        except UserError:          # a damaged config.yaml: the classes are unknown, the table goes on
            config = {}
    n = trial.final_metrics.get("val_images")
    return at_chance(trial.final, n if isinstance(n, int) else None, classes_of(config, trial.final_metrics))


def format_table(trials: Sequence[Trial], top: int = 0, mode: str = "maximize") -> str:
    """Every trial in start order, or the ``top`` best (:func:`ranked`); a final result that is not
    ranked says why (:func:`rank_problem`), one at chance says so (:func:`trial_at_chance`)."""
    rows = ranked(trials, mode)[:top] if top else list(trials)
    lines = [f"{'trial':8} {'status':14} {'final':>7} {'epochs':>6}  params"]
    for t in rows:
        final = f"{t.final:.4f}" if isinstance(t.final, float) else "-"
        why = rank_problem(t) if t.final is not None else None
        extra = (("  (at chance)" if not why and trial_at_chance(t) else "")
                 + (f"  [{t.error}]" if t.error else "") + (f"  [not ranked: {why}]" if why else ""))
        lines.append(f"{t.trial_id:8} {status(t):14} {final:>7} {t.epochs_run:>6}  "
                     f"{json.dumps(t.params, sort_keys=True)}{extra}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python hpo/results.py", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="experiment id, experiment folder, nni.sqlite, or an nnictl export .json/.csv")
    parser.add_argument("--experiments-dir", help="folder holding <id>/ (default: found via ~/nni-experiments)")
    parser.add_argument("--top", type=int, default=0, help="list only the N best trials (those that may be ranked: a final accuracy in [0, 1], not "
                        "diverged; 0 = every trial, in start order)")
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
        print_result({"trial_id": best.trial_id, "params": best.params, "final": best.final,
                      "final_metrics": best.final_metrics, "intermediates": best.intermediates})
        return best
    print(format_table(trials, args.top, args.mode))
    if best is None and any(t.final is not None for t in trials):
        print(f"\nno trial of the {len(trials)} can be ranked (a final validation accuracy in [0, 1] of a trial "
              "that did not diverge)")
    elif best is None:  # a running experiment: show what is known so far
        print(f"\nno trial of the {len(trials)} has a final result yet")
    else:
        print(f"\nbest: trial {best.trial_id} final {best.final:.4f} params {json.dumps(best.params, sort_keys=True)}"
              + (f" test_acc {best.final_metrics['test_acc']:.4f}" if "test_acc" in best.final_metrics else ""))
        if trial_at_chance(best):
            print("the best is at chance (within 2 standard errors of 1 / classes): the search learned nothing at "
                  "this budget, and no trial is better than another")
    if args.epochs:
        print("trial-epochs: " + json.dumps(epoch_budget(trials, args.epochs)))
    return best


if __name__ == "__main__":
    main()
