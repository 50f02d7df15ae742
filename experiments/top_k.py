"""Retrain the K best trials of an experiment, each in its own run folder, resumable one by one;
and find those retrains again (what ``python -m report`` compares with the search).

Every stage's retrain command plugs its own training in (``config_for``, ``train_one``); the loop,
the folder names, the reuse rule and the ``origin.json`` that says where a retrain came from live
here; each retrain is a step of :mod:`core.steps` (its lock, skip and resume rules).

A retrain of trial ``T`` of experiment ``E`` lives in ``<out_dir>/<stage>-E-T/`` (and, for the same
trial retrained with other options under ``--new-folder``, ``<stage>-E-T-2/``, ``-3/`` ...). With
``--seeds S1 S2 ...`` each seed is a retrain of its own, in ``<stage>-E-T-seed<S>/`` (``-2/`` ...
likewise), so a configuration's accuracy is a mean over seeds rather than one draw:

* a folder is reused only when the config it recorded (``config.yaml``) equals the one asked for
  now, field by field, except the fields that say how a run ran rather than what it trained
  (:data:`HOW_IT_RAN`); otherwise the command stops with one line naming the differing fields, or,
  with ``--new-folder``, retrains into the next free folder;
* ``result.json`` there: finished, skipped;
* ``checkpoint.pt`` there but no result: a killed retrain, continued from its checkpoint;
* otherwise it starts (again) from scratch in that folder.

One process per folder: a retrain holds the lock file ``.lock`` in its folder while it trains; a
second ``--top`` command started meanwhile says so, leaves that trial to the first and goes on with
the next one (under ``torchrun``, rank 0 takes the lock and decides for every rank).

``origin.json`` (written before training starts) holds the experiment id and folder, the trial,
its rank in the search, its parameters, its search metric and the retrain's seed. :func:`match_retrains` finds the
retrains of an experiment again and keeps only those that belong to it (module function doc).

torch (checkpoints, :mod:`core.distributed`) is imported by the functions that need it, so that the
retrain commands build their parsers and check their flags before paying for that import.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from core.files import temp_files
from core.config import from_dict, to_dict
from core.errors import UserError
from core.output import print_result
from core.run_folder import (CHECKPOINT_FILE, CONFIG_FILE, LOCK_FILE, RESULT_FILE, TRAINED_ARCH_FILE, read_config,
                             read_json_file, read_result, write_record)
from core.steps import SKIPPED, claim_step, lock_folder
from experiments.folder import find_experiment
from experiments.reader import Trial, ranked, read_profile

ORIGIN_FILE = "origin.json"
#: Config fields that say how a run ran (where, how fast, where its files go), not what it trained:
#: a retrain is reused whatever they are now.
HOW_IT_RAN = ("device", "progress", "data_root", "out_dir", "run_name", "threads", "channels_last", "compile")


def top_run_dir(out_dir: str | os.PathLike, stage: str, experiment_id: str, trial_id: str, copy: int = 1,
                seed: int | None = None) -> Path:
    """The run folder of a retrain of that trial: ``copy`` 1 is the first, 2, 3... those made by
    ``--new-folder``; ``seed``: one of ``--seeds`` (None: the config's seed, no ``--seeds``)."""
    name = f"{stage}-{experiment_id}-{trial_id}" + (f"-seed{seed}" if seed is not None else "")
    return Path(out_dir) / (name if copy == 1 else f"{name}-{copy}")


def with_seed(cfg: Any, seed: int) -> Any:
    """``cfg`` (a config dataclass) with another ``seed``, checked as every config is."""
    return from_dict(type(cfg), {**to_dict(cfg), "seed": seed}, source="--seeds")


# --- which folder, and is it the same retrain? --------------------------------------------------

def recorded_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run folder recorded: its ``config.yaml`` (:func:`core.run_folder.read_config`),
    else its checkpoint's; None when it holds neither (nothing was trained there yet)."""
    config = read_config(run_dir)
    if config is not None:
        return config
    if (run_dir / CHECKPOINT_FILE).is_file():
        from core.checkpoint import load_checkpoint

        config = load_checkpoint(run_dir / CHECKPOINT_FILE).get("config")
        return config if isinstance(config, dict) else None
    return None


def _normal(config: Any) -> dict[str, Any]:
    """A config as its ``config.yaml`` holds it (a YAML round trip), for comparing."""
    values = config if isinstance(config, dict) else to_dict(config)
    return yaml.safe_load(yaml.safe_dump(values, sort_keys=False))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-12)
    return a == b


def config_differences(recorded: dict[str, Any], asked: dict[str, Any],
                       words: tuple[str, str] = ("there", "now")) -> list[str]:
    """``'epochs 1 there, 200 now'`` for each field (not in :data:`HOW_IT_RAN`) whose value differs."""
    missing = object()
    out = []
    for key in sorted((set(recorded) | set(asked)) - set(HOW_IT_RAN)):
        there, now = recorded.get(key, missing), asked.get(key, missing)
        if not _same(there, now):
            show = lambda v: "(not set)" if v is missing else json.dumps(v)  # noqa: E731
            out.append(f"{key} {show(there)} {words[0]}, {show(now)} {words[1]}")
    return out


def _folder_for(asked: dict[str, Any], out_dir: str | os.PathLike, stage: str, experiment_id: str, trial: Trial,
                new_folder: bool, seed: int | None = None) -> Path:
    """The folder a retrain of ``trial`` with config ``asked`` uses: the first existing one whose
    recorded config equals ``asked`` (or that holds none yet), else a new one under ``new_folder``;
    otherwise a :class:`UserError` naming the fields that differ."""
    copy, differ = 1, None
    while True:
        run_dir = top_run_dir(out_dir, stage, experiment_id, trial.trial_id, copy, seed)
        if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
            raise UserError(f"{str(run_dir)!r} is a symbolic link or a file, not a retrain folder; move it away")
        if not run_dir.exists():
            if differ is None or new_folder:
                return run_dir
            where, diff = differ
            shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
            raise UserError(f"--top: trial {trial.trial_id}{'' if seed is None else f' (seed {seed})'} was retrained in "
                            f"{str(where)!r} with other options ({shown}); "
                            "pass the options it was trained with to reuse it, or --new-folder to retrain it in a "
                            "new folder")
        recorded = recorded_config(run_dir)
        if recorded is None:      # a start of ours (running, or killed) before its config leaves at most these
            ours = {LOCK_FILE, ORIGIN_FILE, *(t.name for name in (CONFIG_FILE, ORIGIN_FILE)
                                              for t in temp_files(run_dir / name))}
            foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in ours)
            if foreign:
                raise UserError(f"{str(run_dir)!r} holds {', '.join(foreign[:3])} but no {CONFIG_FILE}: not a retrain "
                                "folder (nothing there is touched); move it away")
        diff = config_differences(_normal(recorded), asked) if recorded is not None else []
        if not diff:
            return run_dir
        if differ is None or len(diff) < len(differ[1]):    # name the closest one
            differ = (run_dir, diff)
        copy += 1


@dataclass
class TopRetrain:
    """One of the K retrains: where it runs and what happened to it in this call."""

    rank: int                   # 1 = the search's best
    trial: Trial
    run_dir: Path
    action: str                 # 'skipped' (finished before), 'resumed', 'started', 'busy' (another process has it)
    result: dict[str, Any] | None = None
    seed: int | None = None     # one of --seeds (None: no --seeds)


def _claim(asked: dict[str, Any], trial: Trial, *, out_dir: str | os.PathLike, stage: str, experiment_id: str,
           new_folder: bool, seed: int | None = None) -> tuple[str, Path, Any, bool]:
    """On the process that writes: the folder, locked, and what to do there: ``(action, run_dir,
    lock, created)`` with action 'skipped', 'resumed', 'started' (:func:`core.steps.claim_step`) or
    'busy' (lock None: another process holds it, :func:`core.steps.lock_folder`)."""
    for _ in range(3):   # another process may record its config between the look and the lock
        run_dir = _folder_for(asked, out_dir, stage, experiment_id, trial, new_folder, seed)
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_folder(run_dir)
        if lock is None:
            return "busy", run_dir, None, False
        if _folder_for(asked, out_dir, stage, experiment_id, trial, new_folder, seed) == run_dir:
            break
        lock.release()
    else:
        raise UserError(f"--top: trial {trial.trial_id}: other processes keep starting retrains of it; try again")
    return claim_step(run_dir), run_dir, lock, created


def _release(lock: Any, run_dir: Path, created: bool, failed: bool) -> None:
    """Let the folder go; a folder this call created and left with nothing but its own files is removed."""
    if lock is not None:
        lock.release()
    if failed and created:
        left = {p.name for p in run_dir.iterdir()}
        if left <= {LOCK_FILE, ORIGIN_FILE}:
            for name in left:
                (run_dir / name).unlink(missing_ok=True)
            run_dir.rmdir()


def retrain_top(trials: Sequence[Trial], k: int, *, out_dir: str | os.PathLike, stage: str,
                experiment_id: str, experiment_dir: str | os.PathLike, origin_extra: Callable[[Trial], dict[str, Any]],
                config_for: Callable[[Trial], Any],
                train_one: Callable[[Any, Trial, Path, Path | None], dict[str, Any]],
                new_folder: bool = False, log: Callable[[str], None] | None = None,
                seeds: Sequence[int] | None = None) -> list[TopRetrain]:
    """Retrain the ``k`` best of ``trials`` (see the module docstring), one after the other; with
    ``seeds``, each once per seed, seed by seed (all K with the first seed, then all K with the
    next: a partial run already ranks every configuration).

    ``config_for(trial)`` is the config asked for that trial (checked before anything is written);
    ``train_one(cfg, trial, run_dir, resume)`` trains it (``resume``: the checkpoint to continue,
    or None) and returns the run's result; ``origin_extra(trial)`` adds stage fields (the
    parameters or architecture, checked first too) to ``origin.json``. ``log``: where progress lines
    go (default ``print``, looked up when called: under torchrun other ranks' print is silenced).
    """
    from core import distributed

    log = log or (lambda message: print(message, flush=True))
    if k < 1:
        raise UserError(f"--top: {k} is not allowed; it must be 1 or more")
    best = ranked(trials)
    if not best:
        raise UserError(f"experiment {experiment_id!r}: none of its {len(trials)} trials has a final result "
                        "(that did not diverge) yet")
    chosen = best[:k]
    if len(chosen) < k:
        log(f"--top {k}: only {len(chosen)} trials have a final result; retraining those")
    plans = []
    configs = {}
    for rank, trial in enumerate(chosen, 1):                # every input checked before anything is written
        configs[rank] = (config_for(trial), origin_extra(trial))
    for seed in (seeds if seeds else [None]):
        for rank, trial in enumerate(chosen, 1):
            cfg, extra = configs[rank]
            cfg = cfg if seed is None else with_seed(cfg, seed)
            plans.append((rank, trial, cfg, _normal(cfg), extra, seed))
    problem = None
    if distributed.is_main():   # every folder checked before anything is written; under torchrun rank 0 looks
        try:
            for rank, trial, cfg, asked, extra, seed in plans:
                _folder_for(asked, out_dir, stage, experiment_id, trial, new_folder, seed)
        except UserError as exc:
            problem = str(exc)
    problem = distributed.broadcast(problem)   # and every rank stops with its line (rank 0 prints it)
    if problem is not None:
        raise UserError(problem)
    done: list[TopRetrain] = []
    for i, (rank, trial, cfg, asked, extra, seed) in enumerate(plans, 1):
        head = (f"[{rank}/{len(chosen)}] trial {trial.trial_id}" if seed is None else
                f"[{i}/{len(plans)}] trial {trial.trial_id} (rank {rank}), seed {seed}")
        lock, created = None, False
        if distributed.is_main():
            try:
                action, run_dir, lock, created = _claim(asked, trial, out_dir=out_dir, stage=stage,
                                                        experiment_id=experiment_id, new_folder=new_folder,
                                                        seed=seed)
                decision: tuple[str, str] = (action, str(run_dir))
            except UserError as exc:
                decision = ("error", str(exc))
        else:
            decision = ("", "")
        action, where = distributed.broadcast(decision)   # under torchrun rank 0 decides for all
        if action == "error":
            raise UserError(where)
        run_dir = Path(where)
        failed = True
        try:
            if action == "busy":
                log(f"{head}: another process is retraining it in {run_dir} (it holds {LOCK_FILE} there); left "
                    "to that process, skipped here")
                done.append(TopRetrain(rank, trial, run_dir, "busy", seed=seed))
            elif action == SKIPPED:
                log(f"{head}: finished before with the same options ({run_dir}), skipped")
                done.append(TopRetrain(rank, trial, run_dir, "skipped", read_json_file(run_dir / RESULT_FILE), seed))
            else:
                resume = run_dir / CHECKPOINT_FILE if action == "resumed" else None
                origin = {"experiment_id": experiment_id, "experiment_dir": str(experiment_dir), "stage": stage,
                          "trial_id": trial.trial_id, "rank": rank, "search_metric": trial.final,
                          "search_epochs": trial.epochs_run, "seed": asked.get("seed"), **extra}
                if distributed.is_main():  # under torchrun, rank 0 alone writes (as for every run folder)
                    write_record(run_dir / ORIGIN_FILE, origin, indent=2)
                log(f"{head} (search metric {trial.final:.4f}): "
                    + (f"resuming {resume}" if resume else f"retraining in {run_dir}"))
                result = train_one(cfg, trial, run_dir, resume)
                done.append(TopRetrain(rank, trial, run_dir, action, result, seed))
            failed = False
        finally:
            if distributed.is_main():
                _release(lock, run_dir, created, failed)
    return done


def retrain_top_of(source: str, experiments_dir: str | None, k: int, *, load: Callable[[Path], list[Trial]],
                   base: Any, stage: str, origin_extra: Callable[[Trial], dict[str, Any]],
                   config_for: Callable[[Trial], Any], train_one: Callable[[Any, Trial, Path, Path | None], dict[str, Any]],
                   new_folder: bool = False, seeds: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """A retrain command's ``--top K``: find the experiment, read its trials with the stage's
    ``load``, retrain the best (:func:`retrain_top`) under ``base.out_dir``, print one JSON row per
    retrain and the command that compares them with the search; returns the rows. ``base``: the
    command's config (its flags), already checked."""
    from core import distributed

    if distributed.launched():   # rank 0 decides about each folder and tells the others: join the group now
        from core.trainer import resolve_device

        distributed.setup(resolve_device(base.device))
    exp_dir = find_experiment(source, experiments_dir)
    exp_id = read_profile(exp_dir).experiment_id
    done = retrain_top(load(exp_dir), k, out_dir=base.out_dir, stage=stage, experiment_id=exp_id,
                       experiment_dir=exp_dir, origin_extra=origin_extra, config_for=config_for, train_one=train_one,
                       new_folder=new_folder, seeds=seeds)
    rows = [{"rank": d.rank, "trial_id": d.trial.trial_id, **({} if d.seed is None else {"seed": d.seed}),
             "search_metric": d.trial.final, "action": d.action, "run_dir": str(d.run_dir),
             "test_acc": (d.result or {}).get("test_acc")} for d in done]
    print_result(rows)
    print(f"compare the search with these retrains: python -m report {exp_dir}", flush=True)
    return rows


# --- finding the retrains of an experiment again ------------------------------------------------

@dataclass
class FoundRetrains:
    """What :func:`match_retrains` found: the retrains compared with the search (one per trial),
    and every other retrain folder of the experiment with the reason it was left out."""

    matched: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)     # (folder, reason)


def retrain_stage(search_stage: str) -> str:
    """The ``stage`` a retrain of a search stage's trials records (``hpo`` -> ``hpo_retrain``)."""
    return f"{search_stage}_retrain"


def _candidates(folders: Sequence[str | os.PathLike]) -> list[Path]:
    out: dict[str, Path] = {}
    for folder in folders:
        folder = Path(folder)
        paths = [folder / ORIGIN_FILE] if (folder / ORIGIN_FILE).is_file() else sorted(folder.glob(f"*/{ORIGIN_FILE}"))
        for path in paths:
            out.setdefault(os.path.realpath(path.parent), path)
    return list(out.values())


def _ran_value(run_dir: Path, config: dict[str, Any], key: str) -> Any:
    """The value of a searched parameter the retrain really trained with: its config field, else its
    architecture file's entry."""
    if key in config:
        return config[key]
    arch = read_json_file(run_dir / TRAINED_ARCH_FILE)
    return arch.get(key) if isinstance(arch, dict) else None


def match_retrains(folders: Sequence[str | os.PathLike], experiment_id: str, search_stage: str,
                   trials: Sequence[Trial], keys: Sequence[str]) -> FoundRetrains:
    """The retrains of ``experiment_id`` found in ``folders`` (each a run folder, or a folder of run
    folders), as ``origin.json`` plus ``run_dir``, ``config``, ``result`` (when finished) and
    ``trial`` (the experiment's :class:`Trial`).

    Kept: a folder whose ``origin.json`` names this experiment, a retrain stage of its search stage
    and a trial the experiment has, and which really trained that trial's parameters ``keys`` (its
    config, or its architecture file, holds the values the trial ran with). Of several retrains of
    one trial with one seed one is kept (a finished one first; retrains with other seeds are kept
    beside it, ``seed`` set from the config they trained with); and only retrains trained with the
    same options besides the seed (the recipe most of them share) are compared. Everything else is
    listed with its reason.
    """
    found = FoundRetrains()
    by_id = {t.trial_id: t for t in trials}
    want_stage = retrain_stage(search_stage)
    kept: list[dict[str, Any]] = []
    for path in _candidates(folders):
        run_dir = path.parent
        try:
            origin = read_json_file(path)
        except UserError as exc:
            found.ignored.append((str(run_dir), f"unreadable {ORIGIN_FILE}: {exc}"))
            continue
        if not isinstance(origin, dict):
            found.ignored.append((str(run_dir), f"{ORIGIN_FILE} is not a JSON object"))
            continue
        if origin.get("experiment_id") != experiment_id:
            continue                                   # another experiment's retrain
        reason = None
        trial = by_id.get(origin.get("trial_id")) if isinstance(origin.get("trial_id"), str) else None
        if origin.get("stage") != want_stage:
            reason = f"its stage is {origin.get('stage')!r}, not {want_stage!r} (this is a {search_stage} experiment)"
        elif trial is None:
            reason = f"trial {origin.get('trial_id')!r} is not a trial of this experiment"
        try:
            config = recorded_config(run_dir) or {}
            result = read_result(run_dir)
            if reason is None:
                for key in keys:
                    ran, searched = _ran_value(run_dir, config, key), trial.params.get(key)
                    if searched is None or not _same(ran, searched):
                        reason = (f"it trained {key} {json.dumps(ran)}, but trial {trial.trial_id} ran {key} "
                                  f"{json.dumps(searched)}")
                        break
        except UserError as exc:
            reason = str(exc)
        if reason is not None:
            found.ignored.append((str(run_dir), reason))
            continue
        kept.append({**origin, "run_dir": str(run_dir), "config": config, "trial": trial,
                     "result": result, "seed": config.get("seed")})
    # one recipe: the options besides the searched parameters, the seed and how it ran
    def recipe(r: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in r["config"].items() if k not in keys and k not in HOW_IT_RAN
                           and k != "seed"}, sort_keys=True, default=str)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in kept:
        groups.setdefault(recipe(r), []).append(r)
    if groups:
        main = max(groups.values(), key=lambda g: (sum(r["result"] is not None for r in g), len(g)))
        for g in groups.values():
            if g is not main:
                for r in g:
                    diff = config_differences(main[0]["config"], r["config"], ("in the compared ones", "here"))
                    found.ignored.append((r["run_dir"], "trained with other options than the compared retrains ("
                                          + "; ".join(diff[:3]) + ")"))
        per_run: dict[tuple[str, str], dict[str, Any]] = {}
        for r in sorted(main, key=lambda r: (r["result"] is None, r["run_dir"])):
            first = per_run.setdefault((r["trial"].trial_id, json.dumps(r["seed"])), r)
            if first is not r:
                found.ignored.append((r["run_dir"], f"a second retrain of trial {r['trial'].trial_id} (counted once: "
                                                    f"{first['run_dir']}, trained with the same seed {r['seed']})"))
        found.matched = list(per_run.values())
    rank = {t.trial_id: i for i, t in enumerate(ranked(trials), 1)}
    found.matched.sort(key=lambda r: (rank.get(r["trial"].trial_id, len(rank) + 1), str(r["seed"]), r["run_dir"]))
    found.ignored.sort()
    return found
