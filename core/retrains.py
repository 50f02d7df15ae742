"""Retrain the K best trials of an experiment, each in its own run folder, resumable one by one;
and find those retrains again (what ``python -m report`` compares with the search).

Every stage's retrain command plugs its own training in (``train_one``); the loop, the folder
names, the skip/resume rule and the ``origin.json`` that says where a retrain came from live here.

A retrain of trial ``T`` of experiment ``E`` lives in ``<out_dir>/<stage>-E-T/``:

* ``result.json`` there: finished, skipped;
* ``checkpoint.pt`` there but no result: a killed retrain, continued from its checkpoint (with the
  config the checkpoint holds);
* otherwise it starts (again) from scratch in that folder.

``origin.json`` (written before training starts) holds the experiment id and folder, the trial,
its rank in the search, its parameters and its search metric.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from core import distributed
from core.checkpoint import atomic_write_text
from core.errors import UserError
from core.experiments import Trial, find_experiment, ranked, read_profile
from core.run import CHECKPOINT_FILE, METRICS_FILE
from core.runner import RESULT_FILE

ORIGIN_FILE = "origin.json"


def read_json_file(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable (a folder being written)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def top_run_dir(out_dir: str | os.PathLike, stage: str, experiment_id: str, trial_id: str) -> Path:
    return Path(out_dir) / f"{stage}-{experiment_id}-{trial_id}"


@dataclass
class TopRetrain:
    """One of the K retrains: where it runs and what happened to it in this call."""

    rank: int                   # 1 = the search's best
    trial: Trial
    run_dir: Path
    action: str                 # 'skipped' (finished before), 'resumed', 'started'
    result: dict[str, Any] | None = None


def retrain_top(trials: Sequence[Trial], k: int, *, out_dir: str | os.PathLike, stage: str,
                experiment_id: str, experiment_dir: str | os.PathLike, origin_extra: Callable[[Trial], dict[str, Any]],
                train_one: Callable[[Trial, Path, Path | None], dict[str, Any]],
                log: Callable[[str], None] = print) -> list[TopRetrain]:
    """Retrain the ``k`` best of ``trials`` (see the module docstring), one after the other.

    ``train_one(trial, run_dir, resume)`` trains one (``resume``: the checkpoint to continue, or
    None) and returns the run's result; ``origin_extra(trial)`` adds stage fields (the
    parameters or architecture, checked before anything is written) to ``origin.json``.
    """
    if k < 1:
        raise UserError(f"--top: {k} is not allowed; it must be 1 or more")
    best = ranked(trials)
    if not best:
        raise UserError(f"experiment {experiment_id!r}: none of its {len(trials)} trials has a final result "
                        "(that did not diverge) yet")
    chosen = best[:k]
    if len(chosen) < k:
        log(f"--top {k}: only {len(chosen)} trials have a final result; retraining those")
    origins = [(rank, trial, origin_extra(trial)) for rank, trial in enumerate(chosen, 1)]  # all checked first
    done: list[TopRetrain] = []
    for rank, trial, extra in origins:
        run_dir = top_run_dir(out_dir, stage, experiment_id, trial.trial_id)
        result = read_json_file(run_dir / RESULT_FILE)
        if isinstance(result, dict):
            log(f"[{rank}/{len(chosen)}] trial {trial.trial_id}: finished before ({run_dir}), skipped")
            done.append(TopRetrain(rank, trial, run_dir, "skipped", result))
            continue
        checkpoint = run_dir / CHECKPOINT_FILE
        resume = checkpoint if checkpoint.is_file() else None
        origin = {"experiment_id": experiment_id, "experiment_dir": str(experiment_dir), "stage": stage,
                  "trial_id": trial.trial_id, "rank": rank, "search_metric": trial.final,
                  "search_epochs": trial.epochs_run, **extra}
        if distributed.is_main():  # under torchrun, rank 0 alone writes (as for every run folder)
            if resume is None:
                (run_dir / METRICS_FILE).unlink(missing_ok=True)   # what a start killed before its first checkpoint left
            atomic_write_text(run_dir / ORIGIN_FILE, json.dumps(origin, indent=2) + "\n")
        log(f"[{rank}/{len(chosen)}] trial {trial.trial_id} (search metric {trial.final:.4f}): "
            + (f"resuming {resume}" if resume else f"retraining in {run_dir}"))
        result = train_one(trial, run_dir, resume)
        done.append(TopRetrain(rank, trial, run_dir, "resumed" if resume else "started", result))
    return done


def retrain_top_of(source: str, experiments_dir: str | None, k: int, *, load: Callable[[Path], list[Trial]],
                   out_dir: str | os.PathLike, stage: str, origin_extra: Callable[[Trial], dict[str, Any]],
                   train_one: Callable[[Trial, Path, Path | None], dict[str, Any]]) -> list[dict[str, Any]]:
    """A retrain command's ``--top K``: find the experiment, read its trials with the stage's
    ``load``, retrain the best (:func:`retrain_top`), print one JSON row per retrain and the
    command that compares them with the search; returns the rows."""
    exp_dir = find_experiment(source, experiments_dir)
    exp_id = read_profile(exp_dir).experiment_id
    done = retrain_top(load(exp_dir), k, out_dir=out_dir, stage=stage, experiment_id=exp_id, experiment_dir=exp_dir,
                       origin_extra=origin_extra, train_one=train_one)
    rows = [{"rank": d.rank, "trial_id": d.trial.trial_id, "search_metric": d.trial.final, "action": d.action,
             "run_dir": str(d.run_dir), "test_acc": (d.result or {}).get("test_acc")} for d in done]
    print(json.dumps(rows), flush=True)
    print(f"compare the search with these retrains: python -m report {exp_dir}", flush=True)
    return rows


def find_retrains(folders: Sequence[str | os.PathLike], experiment_id: str) -> list[dict[str, Any]]:
    """Retrains of ``experiment_id`` found in ``folders`` (each a run folder, or a folder of run
    folders): their ``origin.json`` plus ``run_dir`` and, when finished, ``result``."""
    found: dict[str, dict[str, Any]] = {}
    for folder in folders:
        folder = Path(folder)
        candidates = [folder / ORIGIN_FILE] if (folder / ORIGIN_FILE).is_file() else sorted(folder.glob(f"*/{ORIGIN_FILE}"))
        for path in candidates:
            origin = read_json_file(path)
            if not isinstance(origin, dict) or origin.get("experiment_id") != experiment_id:
                continue
            result = read_json_file(path.parent / RESULT_FILE)
            found[str(path.parent.resolve())] = {**origin, "run_dir": str(path.parent),
                                                 "result": result if isinstance(result, dict) else None}
    return sorted(found.values(), key=lambda o: (o.get("rank") or 0, o["run_dir"]))
