"""An HPO experiment's winner handed on to a later stage: the lab's chain of stages.

HPO picks model, optimizer and learning rate; classic NAS then searches the skip connections with
that optimizer and learning rate (``python classic_nas/trial.py --from-hpo EXPERIMENT``, or
``CIFAR_AUTOML_FROM_HPO=EXPERIMENT`` in the shell that runs ``nnictl create`` for every trial of a
classic-NAS experiment; ``classic_nas/retrain.py --from-hpo EXPERIMENT`` for a retrain). The
experiment is read through the shared reader (:mod:`experiments.reader`: an id, a folder, an
``nni.sqlite`` or an ``nnictl experiment export`` file), so no stage imports another.

What is handed on: the best trial's optimizer and learning rate (:data:`HANDED_ON`, the
parameters the HPO trial repeats in its final result), nothing else. The rest of the recipe
(weight decay, schedule, momentum, epochs) stays the receiving stage's own, and the HPO winner's
model is not (the classic-NAS space is a MobileNet). The best trial is the one with the highest
final validation accuracy, among the valid ones (in [0, 1]) of trials that did not diverge
(:func:`experiments.reader.ranked`, the rule every reader ranks by).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from typing import Any

from core.config import OPTIMIZER_NAMES
from core.errors import UserError
from experiments.reader import load_experiment, ranked
from core.paths import FROM_HPO_ENV, default_from_hpo

#: The config fields an HPO winner hands on (names of :class:`core.config.TrainConfig` fields).
HANDED_ON = ("optimizer", "lr")
#: Trial states that may still end with a better result.
UNFINISHED = ("WAITING", "RUNNING", "UNKNOWN")


@dataclass(frozen=True)
class HpoWinner:
    """The best trial of an HPO experiment, as far as a later stage needs it."""

    experiment: str                 # as the user gave it (id, folder or file)
    trial_id: str
    val_acc: float
    optimizer: str
    lr: float
    model: str | None = None
    unfinished: int = 0             # trials of the experiment still running when it was read

    def fields(self) -> dict[str, Any]:
        """The config fields to train with: ``{"optimizer": ..., "lr": ...}``."""
        return {"optimizer": self.optimizer, "lr": self.lr}

    def provenance(self) -> dict[str, Any]:
        """What a trial repeats in its final result, so a reader can tell which winner it trained with."""
        return {"from_hpo": self.experiment, "hpo_trial": self.trial_id}

    def describe(self) -> str:
        model = f"{self.model}, " if self.model else ""
        return (f"optimizer {self.optimizer}, lr {self.lr:g} from HPO experiment {self.experiment} (best trial "
                f"{self.trial_id}: {model}validation accuracy {self.val_acc:.4f})")


def hpo_winner(source: str | os.PathLike, *, experiments_dir: str | os.PathLike | None = None,
               what: str = "--from-hpo") -> HpoWinner:
    """The winner of HPO experiment ``source``; ``what`` names the option in errors.

    A source that is not an experiment, an experiment with no finished trial (or none that did not
    diverge), or one whose best trial has no optimizer and lr (a classic-NAS experiment, say) is a
    :class:`UserError`. When trials are still running, the best may still change: a warning says
    so on standard error (each trial of a search reads the experiment when it starts).
    """
    try:
        trials = load_experiment(source, experiments_dir=experiments_dir, param_keys=HANDED_ON)
    except UserError as exc:
        raise UserError(f"{what}: {exc}") from None
    good = ranked(trials)
    if not good:
        raise UserError(f"{what}: experiment {str(source)!r} has no finished trial with a result yet (of its "
                        f"{len(trials)} trials); wait for one to finish, or give another experiment")
    best = good[0]
    missing = [k for k in HANDED_ON if k not in best.params]
    if missing:
        raise UserError(f"{what}: experiment {str(source)!r} is not an HPO experiment: its best trial "
                        f"{best.trial_id} has no {' or '.join(missing)} (its parameters: "
                        f"{', '.join(sorted(best.params)) or 'none'})")
    optimizer, lr = best.params["optimizer"], best.params["lr"]
    if optimizer not in OPTIMIZER_NAMES:
        raise UserError(f"{what}: the best trial {best.trial_id} of {str(source)!r} ran optimizer {optimizer!r}; "
                        f"allowed: {', '.join(OPTIMIZER_NAMES)}")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
        raise UserError(f"{what}: the best trial {best.trial_id} of {str(source)!r} ran lr {lr!r}; a learning rate "
                        "must be a positive number")
    model = best.final_metrics.get("model", best.params.get("model"))
    unfinished = sum(t.status in UNFINISHED for t in trials)
    if unfinished:
        print(f"warning: {what}: experiment {str(source)!r} still has {unfinished} unfinished trial(s); its best so "
              f"far is trial {best.trial_id}, and a later reading may find another", file=sys.stderr, flush=True)
    return HpoWinner(experiment=str(source), trial_id=best.trial_id, val_acc=float(best.final), optimizer=optimizer,
                     lr=float(lr), model=model if isinstance(model, str) else None, unfinished=unfinished)


def add_from_hpo_argument(parser: argparse.ArgumentParser, *, env: bool = False) -> None:
    """``--from-hpo EXPERIMENT`` (its default ``$CIFAR_AUTOML_FROM_HPO`` when ``env``: nnictl trials).
    The parser needs an ``--experiments-dir`` option too (where an experiment id is looked up)."""
    parser.add_argument("--from-hpo", metavar="EXPERIMENT", default=argparse.SUPPRESS,
                        help="train with the optimizer and lr of this HPO experiment's best trial (id, folder, "
                        "nni.sqlite or export file)" + (f"; default: env {FROM_HPO_ENV}" if env else ""))


def winner_from_args(args: argparse.Namespace, *, env: bool = False) -> HpoWinner | None:
    """The winner named by ``--from-hpo`` (else, when ``env``, by ``$CIFAR_AUTOML_FROM_HPO``), or
    ``None``. Optimizer or lr flags beside it are an error: they would be silently replaced."""
    given = getattr(args, "from_hpo", None)
    what = "--from-hpo" if given is not None or not env else FROM_HPO_ENV
    source = given if given is not None else (default_from_hpo() if env else None)
    if given is not None and not given.strip():
        raise UserError("--from-hpo: give an HPO experiment (id, folder, nni.sqlite or export file)")
    if not source:
        return None
    flags = [k for k in HANDED_ON if k in vars(args)]
    if flags:
        raise UserError(f"--{flags[0]}: not allowed with {what}, which takes the optimizer and lr from the HPO "
                        "experiment's best trial")
    return hpo_winner(source, experiments_dir=getattr(args, "experiments_dir", None), what=what)
