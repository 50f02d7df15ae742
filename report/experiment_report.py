"""The report of an NNI experiment of any stage, and of the retrains of its best trials.

Every section reads the one table of trials (:mod:`report.trials`) built in :func:`load`, and is a
function of its own (``level``: the heading depth, ``prefix``: the figures' and exports' file name
prefix), so that a comparison of experiments (:mod:`report.compare`) and the study report
(:mod:`report.study`) compose the same sections rather than drawing their own.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from core.errors import UserError
from experiments.nni_trial import COMMAND_FILE
from core.paths import TRIAL_FLAGS_ENV
from core.run_folder import RESULT_FILE, read_json_file
from experiments.folder import DB_FILE, ENVIRONMENTS_DIR, find_experiment
from experiments.reader import (Profile, Trial, accuracy_problem, load_experiment, rank_problem, ranked,
                                read_profile)
from experiments.top_k import match_retrains
from report import plots, trials as table_of
from report.markdown import Md, figure, file_part, md, seconds, table
from report.records import Invalid, checked, load_run, number_problem, run_metrics, trial_config, valid
from report.run_report import render_run
from core.chance import classes_of
from report.stats import (CHANCE_SE, MIN_TRIALS_FOR_IMPORTANCE, TIE_SE, Noise, at_chance, binomial_se, chance_level,
                          chance_limit, chance_text, importance, kendall, mean_std, seed_spread, tied_with, with_se)
from report.trials import TrialRow

METRIC = "validation accuracy"
STAGES = {"hpo": "HPO (hyper-parameters)", "classic_nas": "classic NAS (skip connections)",
          "oneshot_darts": "one-shot DARTS (as an nnictl trial)"}
#: config fields that say which data and how much training a trial had
DATA_FIELDS = ("data", "subset", "val_fraction", "val_subset", "epochs", "batch_size", "max_batches")


@dataclass
class ExperimentData:
    exp_dir: Path
    profile: Profile
    trials: list[Trial]
    rows: list[TrialRow] = field(default_factory=list)               # the one table (report.trials), start order
    retrains: list[dict[str, Any]] = field(default_factory=list)    # one per trial and seed, compared with the search
    retrain_dirs: list[str] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)     # retrain folders left out, and why
    problems: list[str] = field(default_factory=list)                # invalid numbers, and where they are
    invalid_finals: dict[str, Any] = field(default_factory=dict)     # trial id -> its invalid final result

    @property
    def stage(self) -> str:
        return Path(self.profile.trial_code_dir).name or "unknown"

    @property
    def keys(self) -> list[str]:
        """The searched parameters (the search space's keys, plus any a tuner added, such as Hyperband's budget)."""
        keys = list(self.profile.search_space)
        for t in self.trials:
            keys += [k for k in t.params if k not in keys]
        return keys

    @property
    def best(self) -> TrialRow:
        return table_of.best_row(self.rows)

    def label(self, row: TrialRow) -> str:
        """A trial's configuration in a few characters: ``mobilenet Adam 0.001``, or ``010011`` (classic NAS)."""
        params = row.trial.params
        if self.stage == "classic_nas":
            return "".join(str(params.get(k, "?")) for k in self.keys)
        return " ".join(_value(params.get(k)) for k in self.keys if k in params)


def load(source: str | os.PathLike, experiments_dir: str | os.PathLike | None,
         retrain_dirs: Sequence[str | os.PathLike]) -> ExperimentData:
    """Read the experiment, build its table of trials and find its retrains; an error when no trial
    has a final result yet."""
    exp_dir = find_experiment(source, experiments_dir)
    profile = read_profile(exp_dir)
    trials = load_experiment(exp_dir, param_keys=tuple(profile.search_space))
    if all(t.final is None for t in trials):
        running = sum(t.status in ("RUNNING", "WAITING") for t in trials)
        raise UserError(f"experiment {profile.experiment_id}: no trial finished yet (none of its {len(trials)} trials "
                        f"has a final result{f'; {running} running' if running else ''}); nothing to report")
    problems: list[str] = []
    invalid_finals = _check_trials(trials, problems)
    dirs = _distinct_folders(retrain_dirs)
    data = ExperimentData(exp_dir, profile, trials, rows=table_of.build(trials, invalid_finals), retrain_dirs=dirs,
                          problems=problems, invalid_finals=invalid_finals)
    found = match_retrains(dirs, profile.experiment_id, data.stage, trials, list(profile.search_space))
    data.retrains, data.ignored = found.matched, found.ignored
    return data


def _distinct_folders(folders: Sequence[str | os.PathLike]) -> list[str]:
    """The folders to look for retrains in, each once (the runs folder given again with --retrains,
    or through another path to it, is the same folder)."""
    seen: dict[str, str] = {}
    for folder in folders:
        path = str(Path(folder).expanduser())
        seen.setdefault(os.path.realpath(path), path)
    return list(seen.values())


def _check_trials(trials: Sequence[Trial], problems: list[str]) -> dict[str, Any]:
    """Trials' results that are not valid accuracies (NaN, infinite, outside [0, 1]: the rule of
    :func:`experiments.reader.rank_problem`, which leaves them out of the ranking) are said where they
    are; returns the invalid final results by trial id. An error when no trial can be ranked."""
    invalid = {}
    for t in trials:
        why = None if t.final is None else accuracy_problem(t.final)
        if why is not None:
            problems.append(f"trial {t.trial_id}: final {METRIC} {t.final!r} is invalid ({why}; from the "
                            "experiment database); the trial is left out of the ranking")
            invalid[t.trial_id], t.final = t.final, None
        bad = [(e, v) for e, v in t.curve if number_problem("default", v) is not None]
        for e, v in bad:
            problems.append(f"trial {t.trial_id}: intermediate result {e} = {v!r} is invalid (from the experiment "
                            "database); left out of the curves")
        if bad:   # still epochs the trial ran (Trial.epochs_run); the others keep their epochs (Trial.curve)
            kept = [(e, v) for e, v in t.curve if number_problem("default", v) is None]
            t.intermediate_epochs, t.intermediates = [e for e, _ in kept], [v for _, v in kept]
            t.invalid_intermediates += len(bad)
    if not ranked(trials):
        diverged = sum(rank_problem(t) == "diverged" for t in trials)
        raise UserError("no trial of the experiment has a valid final result (" + "; ".join(
            ([f"{len(invalid)} invalid: {problems[0]}"] if invalid else [])
            + ([f"{diverged} diverged"] if diverged else [])) + ")")
    return invalid


def heading(level: int, text: str) -> str:
    return "#" * level + " " + text


def _value(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def _final_cell(row: TrialRow) -> Any:
    """A final result as a table shows it: the accuracy with its standard error, or why it is invalid."""
    if isinstance(row.final, Invalid):
        return row.final
    if row.valid_final is None:
        return None
    return with_se(row.valid_final, row.se) + (" (at chance)" if row.at_chance else "")


def trial_data(exp: ExperimentData) -> str:
    """Which data and how much training the best trial had (its config), in one line."""
    best = exp.best.trial
    cfg = trial_config(best.log_dir)
    unset = {"subset": 0, "val_subset": 0, "max_batches": 0}          # 0: all of them
    return ", ".join(f"{k} {cfg[k]}" for k in DATA_FIELDS
                     if cfg.get(k) is not None and cfg.get(k) != unset.get(k, None)) or "not recorded"


def epochs_spent(exp: ExperimentData) -> int:
    """Every trial's epochs together (failed and early-stopped ones included)."""
    return sum(t.epochs_run for t in exp.trials)


def trial_command(exp: ExperimentData) -> tuple[str, bool]:
    """The trial command as the trials ran it: the experiment's ``trialCommand`` with the flags its
    trials found in ``CIFAR_AUTOML_TRIAL_FLAGS`` put in place of the variable (each NNI trial records
    them, :data:`experiments.nni_trial.COMMAND_FILE`), and whether they were recorded."""
    command = exp.profile.trial_command
    for row in [exp.best, *exp.rows]:
        if not row.trial.log_dir:
            continue
        try:
            record = read_json_file(Path(row.trial.log_dir) / COMMAND_FILE)
        except UserError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("trial_flags"), str):
            flags = record["trial_flags"].strip()
            expanded = re.sub(r"\$\{?" + TRIAL_FLAGS_ENV + r"(:-)?\}?", lambda _: flags, command)
            return " ".join(expanded.split()), True
    return command, False


def what_ran(exp: ExperimentData) -> list[str]:
    """The experiment's space, algorithms, budget and data, as bullets."""
    p = exp.profile
    space = "; ".join(f"{md(k, code=True)} {md(v.get('_type'))} {md(json.dumps(v.get('_value')))}"
                      for k, v in p.search_space.items()) or "none given to NNI (the trial holds its own space)"
    algos = ", ".join(f"{role} {md(p.algorithm(role))}" for role in ("tuner", "assessor", "advisor")
                      if p.algorithm(role))
    counts: dict[str, int] = defaultdict(int)
    for row in exp.rows:
        counts[row.status] += 1
    command, known = trial_command(exp)
    return [f"- experiment: {md(p.experiment_id, code=True)} ({md(p.params.get('experimentName') or 'no name')}), "
            f"folder {md(exp.exp_dir, code=True)}",
            f"- stage: {md(STAGES.get(exp.stage, exp.stage))} (trial code {md(p.trial_code_dir, code=True)})",
            f"- trial command: {md(command, code=True)}" + (f" (as its trials ran it: {TRIAL_FLAGS_ENV} expanded)"
                                                          if known else ""),
            f"- search space: {space}",
            f"- algorithms: {algos or 'none recorded'}",
            f"- trial budget: {md(p.max_trials or 'unlimited')} trials, concurrency "
            f"{md(p.params.get('trialConcurrency', 1))}, max duration "
            f"{md(p.params.get('maxExperimentDuration', 'unlimited'))}",
            f"- spent: {epochs_spent(exp)} trial-epochs (every trial's epochs, failed and early-stopped ones included)",
            f"- data (the best trial's config): {md(trial_data(exp))}",
            f"- trials so far: {len(exp.trials)} ({', '.join(f'{n} {md(s)}' for s, n in sorted(counts.items()))})",
            chance_bullet(exp)]


def chance_bullet(exp: ExperimentData) -> str:
    """What ran: the experiment's chance level, and the rule that calls a result at chance."""
    classes = table_of.chance_of(exp.rows)
    limit = chance_limit(classes, exp.best.images)
    return (f"- {chance_text(classes)}: a result at most {CHANCE_SE:g} standard errors above it is marked *at chance* "
            "(it learned nothing)" + (f"; at the best's {exp.best.images:,} validation images that is {limit:.4f} or "
                                      "less" if limit is not None else ""))


def best_section(exp: ExperimentData, level: int) -> list[str]:
    row = exp.best
    best = row.trial
    test = (f" Its test accuracy (recorded, never searched on): {best.final_metrics['test_acc']:.4f}."
            if isinstance(best.final_metrics.get("test_acc"), float) else "")
    return [heading(level, "Best trial"), "",
            f"Trial **{md(best.trial_id)}** (No. {md(best.sequence_id)}): final {METRIC} **{row.valid_final:.4f}**"
            + (f" ± {row.se:.4f}" if row.se is not None else "") + f" after {best.epochs_run} "
            f"epoch{'s' if best.epochs_run != 1 else ''}; parameters "
            f"{md(json.dumps(best.params, sort_keys=True), code=True)}; run folder {md(best.log_dir, code=True)}."
            + test, "", *best_noise_text(exp), ""]


def best_noise_text(exp: ExperimentData) -> list[str]:
    """Under the best trial: which trials are tied with it and what that counts as noise, or, when
    the best is at chance, that the search learned nothing (and no trial is better than another)."""
    row = exp.best
    if row.at_chance:
        return [f"**At chance: the search learned nothing at this budget.** Its best, {row.valid_final:.4f}, is within "
                f"{CHANCE_SE:g} standard errors of {chance_text(row.classes)}, so no trial is better than another and "
                "none is called the winner or tied with it. Train longer, on more images, or check the recipe (a "
                "network that predicts one class for every image scores exactly chance)."]
    lines = [table_of.tie_text(exp.rows, lambda r: f"{md(r.trial.trial_id)} ({md(exp.label(r))})")]
    if row.se is not None and len(table_of.by_rank(exp.rows)) > 1:
        lines += ["", "The tie rule counts validation sampling only (the binomial standard error): one search runs "
                  "each configuration with one seed, so the seed-to-seed spread, often several standard errors, is "
                  "not in it (docs/report.md, *Noise*)."]
    return lines


def trial_table(exp: ExperimentData, limit: int | None = None) -> str:
    """Every trial (or the ``limit`` best), best first, then the unranked ones in start order."""
    keys = exp.keys
    order = table_of.by_rank(exp.rows) + [r for r in exp.rows if r.rank is None]
    rows = []
    chance = bool(exp.best.at_chance)          # the best at chance: nothing is tied with it
    for r in order[:limit] if limit else order:
        t = r.trial
        rows.append([r.rank or "-", t.trial_id, t.sequence_id, *(_value(t.params.get(k, "-")) for k in keys),
                     _final_cell(r), {True: "yes", False: "", None: "?"}[r.tied] if r.rank and not chance else "-",
                     t.epochs_run, seconds(r.duration), r.status])
    header = ("rank", "trial", "No.", *keys, f"final {METRIC} ± SE", f"tied with best (≤ {TIE_SE:g} SE)", "epochs",
              "duration", "status")
    return table(header, rows)


def trials_section(exp: ExperimentData, level: int) -> list[str]:
    lines = [heading(level, "All trials, best first"), "",
             "SE: the binomial standard error of each final result, sqrt(p (1 - p) / n) over its n validation images. "
             "EARLY_STOPPED: stopped by the assessor (NNI records USER_CANCELED). At chance: at most "
             f"{CHANCE_SE:g} standard errors above {chance_text(table_of.chance_of(exp.rows))}.", "", trial_table(exp),
             ""]
    lines += [f"- trial {md(r.trial.trial_id)} failed: {md(r.trial.error, code=True)}" for r in exp.rows
              if r.trial.error]
    return lines + [""]


def per_trial_figures(exp: ExperimentData, out: Path, prefix: str, level: int) -> list[str]:
    lines = [heading(level, "Results per trial"), ""]
    numbers = [t.sequence_id if t.sequence_id is not None else i for i, t in enumerate(exp.trials)]
    finals = [r.valid_final for r in exp.rows]
    stopped = [t.intermediates[-1] if t.early_stopped else None for t in exp.trials]
    best = exp.best
    band = (best.valid_final - TIE_SE * best.se, best.valid_final) if best.se is not None and not best.at_chance \
        else None
    chance = chance_level(table_of.chance_of(exp.rows))
    name = f"{prefix}trials.png"
    plots.final_per_trial(numbers, finals, stopped, out / name, METRIC, tie_band=band, ses=[r.se for r in exp.rows],
                          chance=chance)
    lines += [figure(name, f"Final {METRIC} of each trial in start order, and the best so far (band: ± its standard "
                     "error)" + ("; shaded: tied with the best" if band else "")
                     + ("; dotted: chance" if chance is not None else "")), ""]
    curves = [(t.trial_id, t.curve, t.early_stopped) for t in exp.trials if t.intermediates]
    if curves:
        name = f"{prefix}curves.png"
        plots.intermediate_curves(curves, out / name, METRIC, se=best.se, chance=chance)
        lines += [figure(name, f"Per-epoch {METRIC} of every trial; early-stopped ones dashed, ending in x"), ""]
    else:
        lines += ["No trial reported an intermediate result yet.", ""]
    return lines


def budget_section(exps: Sequence[ExperimentData], out: Path, name: str, level: int) -> list[str]:
    """Best result so far against trial-epochs spent, one line per experiment: the fair axis when an
    assessor stops some trials early (a stopped trial costs the epochs it ran, not a whole trial)."""
    series, ses = {}, {}
    for exp in exps:
        xs, best = table_of.spent(exp.rows)
        label = (f"{exp.profile.experiment_id} ({exp.profile.algorithm('tuner') or '?'}"
                 f"{' + ' + exp.profile.algorithm('assessor') if exp.profile.algorithm('assessor') else ''})")
        series[label] = (xs, [b.valid_final if b else None for b in best])
        ses[label] = [b.se if b else None for b in best]
    chance = chance_level(next((c for c in (table_of.chance_of(e.rows) for e in exps) if c is not None), None))
    plots.best_so_far(series, out / name, METRIC, ses=ses, chance=chance)
    return [heading(level, "Best result against the training spent"), "",
            figure(name, f"Best final {METRIC} so far against trial-epochs spent (each trial's epochs, early-stopped "
                   "and failed ones included, counted when it ended); band: ± the best's standard error"
                   + ("; dotted: chance" if chance is not None else "")), ""]


def _mean_noise(values: Sequence[float], ses: Sequence[float | None]) -> float | None:
    """The noise of a mean of trials' results: the larger of their spread over sqrt(n) and the
    binomial standard error of one of them (the same validation images score them all)."""
    if not values:
        return None
    _, std = mean_std(values)
    known = [e for e in ses if e is not None]
    parts = [v for v in (std / len(values) ** 0.5 if std is not None else None, max(known) if known else None)
             if v is not None]
    return max(parts) if parts else None


def effects_section(exp: ExperimentData, out: Path, prefix: str, level: int) -> list[str]:
    lines = []
    on_off = exp.stage == "classic_nas"
    chance = chance_level(table_of.chance_of(exp.rows))
    for key in exp.keys:
        groups: dict[str, list[TrialRow]] = defaultdict(list)
        for r in exp.rows:
            if key in r.trial.params and (r.rank is not None or r.trial.early_stopped or r.status == "FAILED"):
                groups[_value(r.trial.params[key])].append(r)
        if not any(r.rank is not None for rows in groups.values() for r in rows):
            continue
        labelled = sorted(groups.items(), key=lambda kv: kv[0])
        if on_off:
            labelled = [(("on" if k == "1" else "off" if k == "0" else k), v) for k, v in labelled]
        finished = [[r for r in rows if r.rank is not None] for _, rows in labelled]
        name = f"{prefix}effect_{file_part(key)}.png"
        plots.effect(key, [(k, [r.valid_final for r in f]) for (k, _), f in zip(labelled, finished)], out / name,
                     METRIC, stopped=[[r.trial.intermediates[-1] for r in rows
                                       if r.rank is None and r.trial.early_stopped] for _, rows in labelled],
                     failed=[[r.trial.intermediates[-1] if r.trial.intermediates else None for r in rows
                              if r.rank is None and r.status == "FAILED"] for _, rows in labelled],
                     yerr=[_mean_noise([r.valid_final for r in f], [r.se for r in f]) for f in finished],
                     se=exp.best.se, chance=chance)
        lines += [figure(name, f"Final {METRIC} per value of {key} (dots: finished trials; bars: their mean ± its "
                         "noise; hollow: early-stopped and failed trials at their last intermediate result)"), ""]
    return [heading(level, "Effect of each searched parameter"), "", *lines] if lines else []


def _varying(exp: ExperimentData, rows: Sequence[TrialRow]) -> list[str]:
    """The searched parameters that take more than one value among ``rows``."""
    return [k for k in exp.keys if len({json.dumps(r.trial.params.get(k), sort_keys=True) for r in rows}) > 1]


def _kind(values: Sequence[Any]) -> str:
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "log" if all(v > 0 for v in values) and max(values) / min(values) >= 100 else "linear"
    return "category"


def parallel_section(exp: ExperimentData, out: Path, prefix: str, level: int) -> list[str]:
    rows = table_of.by_rank(exp.rows)
    keys = _varying(exp, rows)
    lines = [heading(level, "Parallel coordinates"), ""]
    if len(rows) < 2 or not keys:
        return lines + ["Fewer than two finished trials, or no parameter that differs between them: nothing to "
                        "draw.", ""]
    axes = []
    for k in keys:
        column = [r.trial.params.get(k) for r in rows]
        kind = _kind(column)
        axes.append((k, column if kind != "category" else [plots.json_label(v) for v in column], kind))
    name = f"{prefix}parallel.png"
    plots.parallel_coordinates(axes, [r.valid_final for r in rows], [bool(r.tied) for r in rows], out / name, METRIC,
                               se=exp.best.se)
    return lines + [figure(name, f"Every finished trial's parameters and final {METRIC}, coloured by the result "
                           f"(thick: tied with the best); numeric axes spanning two decades or more are logarithmic"),
                    ""]


def importance_section(exp: ExperimentData, out: Path, prefix: str, level: int) -> list[str]:
    rows = table_of.by_rank(exp.rows)
    keys = _varying(exp, rows)
    lines = [heading(level, "Parameter importance"), ""]
    if len(rows) < MIN_TRIALS_FOR_IMPORTANCE:
        return lines + [f"Importance cannot be estimated from {len(rows)} finished trial(s): it takes at least "
                        f"{MIN_TRIALS_FOR_IMPORTANCE}, or the figure would draw noise.", ""]
    if not keys:
        return lines + ["Every finished trial ran the same parameters: there is no importance to estimate.", ""]
    y = [r.valid_final for r in rows]
    if max(y) == min(y):
        return lines + [f"Every finished trial has the same final {METRIC}: no parameter explains a difference.", ""]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # scikit-learn's notes on few out-of-bag samples
        imp = importance({k: [r.trial.params.get(k) for r in rows] for k in keys}, y)
    method = (f"a random forest (scikit-learn, {len(rows)} finished trials) predicting the final {METRIC} from "
              f"{', '.join(md(k) for k in keys)}; importance is each parameter's share of the forest's decrease in impurity, as "
              f"optuna's mean-decrease-impurity evaluator computes it")
    if imp.oob_r2 <= 0:
        return lines + [f"Not shown: {method}, but the forest predicts held-out trials no better than their mean "
                        f"(out-of-bag R² = {imp.oob_r2:.2f}), so its importances would be noise.", ""]
    name = f"{prefix}importance.png"
    plots.importance(imp.names, imp.shares, imp.spread, out / name,
                     f"Parameter importance ({imp.n} trials; out-of-bag R² {imp.oob_r2:.2f})")
    rows_md = sorted(zip(imp.names, imp.shares, imp.spread), key=lambda r: -r[1])
    return lines + [f"From {method}. The forest explains {imp.oob_r2:.0%} of the variance of held-out trials "
                    "(out-of-bag R²); the bars' spread is over its trees.", "",
                    figure(name, "Share of each parameter in the forest's impurity decrease"), "",
                    table(("parameter", "importance", "spread over trees"), rows_md), ""]


def _searched_values(exp: ExperimentData, key: str) -> list[Any]:
    """Every value the search space offers for ``key`` (a choice), and any other a trial ran."""
    spec = exp.profile.search_space.get(key) or {}
    values = list(spec.get("_value") or []) if spec.get("_type") == "choice" else []
    for r in exp.rows:
        v = r.trial.params.get(key)
        if v is not None and v not in values:
            values.append(v)
    return values


def model_optimizer_section(exp: ExperimentData, level: int) -> list[str]:
    good = table_of.by_rank(exp.rows)
    if not good or not all("model" in r.trial.params and "optimizer" in r.trial.params for r in good):
        return []
    best: dict[tuple[str, str], TrialRow] = {}
    for r in good:       # best first: the first seen per cell is the cell's best
        best.setdefault((r.trial.params["model"], r.trial.params["optimizer"]), r)
    unfinished: dict[tuple[str, str], list[TrialRow]] = defaultdict(list)
    for r in exp.rows:
        if r.rank is None and "model" in r.trial.params and "optimizer" in r.trial.params:
            unfinished[(r.trial.params["model"], r.trial.params["optimizer"])].append(r)
    models = sorted(_searched_values(exp, "model"), key=str)
    optims = sorted(_searched_values(exp, "optimizer"), key=str)
    rows = []
    for m in models:
        cells = []
        for o in optims:
            r = best.get((m, o))
            if r is not None:
                cells.append(f"{with_se(r.valid_final, r.se)}{' (at chance)' if r.at_chance else ''} "
                             f"(lr {r.trial.params.get('lr')})")
                continue
            left = defaultdict(int)
            for u in unfinished.get((m, o), []):
                left["early-stopped" if u.trial.early_stopped else u.status.lower()] += 1
            cells.append("no finished trial (" + ", ".join(f"{n} {k}" for k, n in sorted(left.items())) + ")"
                         if left else "not tried")
        rows.append([m, *cells])
    return [heading(level, "Model x optimizer"), "",
            f"Best final {METRIC} ± SE of each model with each optimizer the search space offers (its learning rate "
            "in brackets); a pair without a finished trial says why.", "", table(("model", *optims), rows), ""]


def architectures_section(exp: ExperimentData, out: Path, prefix: str, level: int) -> list[str]:
    keys = exp.keys
    if exp.stage != "classic_nas" or not keys:
        return []
    best: dict[str, TrialRow] = {}
    for r in table_of.by_rank(exp.rows):
        best.setdefault(exp.label(r), r)
    name = f"{prefix}architectures.png"
    plots.bars(list(best), [r.valid_final for r in best.values()], out / name,
               title="Final validation accuracy per architecture",
               xlabel=f"architecture ({', '.join(keys)}: 1 = skip on)", ylabel=f"final {METRIC} (fraction)",
               yerr=[r.se for r in best.values()], chance=chance_level(table_of.chance_of(exp.rows)))
    rows = [[arch, _final_cell(r), {True: "yes", False: "", None: "?"}[r.tied] if not exp.best.at_chance else "-"]
            for arch, r in best.items()]
    return [heading(level, "Architectures"), "",
            figure(name, "Best final validation accuracy of each architecture tried, best first"), "",
            table((f"architecture ({''.join(k[-1] for k in keys)} = {', '.join(keys)})", f"best final {METRIC} ± SE",
                   "tied with best"), rows), ""]


@dataclass(frozen=True)
class HpoProvenance:
    """Which HPO winner a classic-NAS experiment's trials trained with (``--from-hpo`` /
    CIFAR_AUTOML_FROM_HPO), as their final results repeat it."""

    source: str | None          # the HPO experiment as the trials were given it (None: no --from-hpo)
    trial: str | None           # its best trial
    optimizer: Any
    lr: Any
    trials: int                 # how many finished trials trained with it
    of: int                     # of how many finished trials

    def names(self, exp_id: str, exp_dir: Path) -> bool:
        """Whether ``source`` names that experiment (its id, its folder or its database)."""
        if not self.source:
            return False
        path = Path(self.source)
        return self.source == exp_id or path.name == exp_id or (path.name == DB_FILE
                                                                 and path.parent.parent.name == exp_id) \
            or os.path.realpath(path) == os.path.realpath(exp_dir)


def hpo_provenance(exp: ExperimentData) -> HpoProvenance | None:
    """The HPO winner the experiment's finished trials trained with (the most common one), or None
    for an experiment of another stage."""
    if exp.stage != "classic_nas":
        return None
    finished = [r.trial for r in exp.rows if r.trial.final_metrics]
    seen: dict[tuple, int] = defaultdict(int)
    for t in finished:
        fm = t.final_metrics
        seen[(fm.get("from_hpo"), fm.get("hpo_trial"), json.dumps(fm.get("optimizer")), json.dumps(fm.get("lr")))] += 1
    if not seen:
        return None
    (source, trial, optimizer, lr), count = max(seen.items(), key=lambda kv: (kv[0][0] is not None, kv[1]))
    if source is None:
        cfg = trial_config(exp.best.trial.log_dir)
        optimizer, lr = json.dumps(cfg.get("optimizer")), json.dumps(cfg.get("lr"))
    return HpoProvenance(source, trial, json.loads(optimizer), json.loads(lr), count, len(finished))


def hpo_winner_note(exp: ExperimentData) -> list[str]:
    """A classic-NAS experiment: whether its trials trained with an HPO experiment's winner."""
    p = hpo_provenance(exp)
    if p is None:
        return []
    if p.source is None:
        own = (f" (the best trial's optimizer {md(p.optimizer)}, lr {md(p.lr)})"
               if p.optimizer is not None and p.lr is not None else "")
        return [f"- HPO winner: not taken; the trials trained with the stage's own recipe{own}, not with an HPO "
                "experiment's winner (no --from-hpo / CIFAR_AUTOML_FROM_HPO)."]
    share = "every finished trial" if p.trials == p.of else f"{p.trials} of {p.of} finished trials"
    return [f"- HPO winner: taken; {share} trained with optimizer {md(p.optimizer)}, lr {md(p.lr)}, the winner (trial "
            f"{md(p.trial)}) of HPO experiment {md(p.source, code=True)} (--from-hpo / CIFAR_AUTOML_FROM_HPO)."]


# --- retrains --------------------------------------------------------------------------------------

def _retrain_acc(r: dict[str, Any], problems: list[str]) -> tuple[Any, int | None, str]:
    """A retrain's test accuracy (a number, :class:`Invalid` or None), its image count and its state."""
    result = checked(r["result"], f"{r['run_dir']}/{RESULT_FILE}", problems) if r["result"] else None
    try:
        last: Any = read_last_epoch(r["run_dir"])
        state = "finished" if result else f"running/stopped after epoch {last}"
    except UserError as exc:
        state = f"metrics unreadable: {exc}"
    if not result:
        return None, None, state
    n = result.get("test_images")
    return result.get("test_acc"), n if isinstance(n, int) and n > 0 else None, state


@dataclass
class _Retrained:
    """One configuration's retrains: its seeds' test accuracies, their mean and the noise of it."""

    row: TrialRow
    runs: list[dict[str, Any]]
    accs: list[float]
    states: list[str]
    ses: list[float | None]
    images: int | None = None
    classes: int | None = None
    mean: float | None = None
    std: float | None = None
    noise: float | None = None          # of the mean: the larger of seed spread / sqrt(n) and the binomial SE
    at_chance: bool | None = None


def _retrained(exp: ExperimentData) -> tuple[list[_Retrained], tuple[float, int] | None]:
    """Every retrained configuration (in search rank order) and the seed-to-seed standard deviation
    pooled over those retrained with several seeds (None: none was)."""
    row_of = {r.trial.trial_id: r for r in exp.rows}
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in exp.retrains:
        groups.setdefault(r["trial"].trial_id, []).append(r)
    entries = []
    for trial_id, runs in groups.items():
        e = _Retrained(row_of[trial_id], runs, [], [], [])
        for r in runs:
            acc, n, state = _retrain_acc(r, exp.problems)
            e.states.append(state if len(runs) == 1 else f"seed {r['seed']}: {state}")
            if valid(acc) is not None:
                e.accs.append(float(acc))
                e.ses.append(binomial_se(float(acc), n))
                e.images = e.images or n
                e.classes = e.classes or classes_of(r.get("config"), r.get("result"))
            elif isinstance(acc, Invalid):
                e.states[-1] += f" ({acc})"
        if e.accs:
            e.mean, e.std = mean_std(e.accs)
        entries.append(e)
    spread = seed_spread([e.accs for e in entries])
    for e in entries:
        if e.mean is None:
            continue
        se = binomial_se(e.mean, e.images)      # one test set scores every seed: its sampling error stays
        seed = spread[0] / len(e.accs) ** 0.5 if spread else None
        e.noise = Noise(se, seed).value
        e.at_chance = at_chance(e.mean, e.images, e.classes)
    return entries, spread


def retrains_section(exp: ExperimentData, out: Path, prefix: str, level: int) -> list[str]:
    where = ", ".join(md(d, code=True) for d in exp.retrain_dirs)
    lines = [heading(level, "Does the ranking survive a long retrain?"), ""]
    ignored = _ignored(exp)
    if not exp.retrains:
        stage_cmd = {"hpo": "python hpo/retrain.py", "classic_nas": "python classic_nas/retrain.py"}.get(exp.stage)
        hint = (" Retrain the K best with "
                + md(f"{stage_cmd} --experiment {exp.profile.experiment_id} --top K [--seeds S1 S2 ...]", code=True)
                + "." if stage_cmd else "")
        return lines + [f"No retrain of this experiment's trials found (looked in {where}).{hint}", "", *ignored]
    entries, spread = _retrained(exp)
    n_runs = sum(len(e.accs) for e in entries)
    done = [e for e in entries if e.mean is not None]
    top = max(done, key=lambda e: e.mean, default=None)
    chance_top = top is not None and bool(top.at_chance)
    rows = []
    for e in entries:
        shown = None if e.mean is None else \
            f"{e.mean:.4f} ± {e.std:.4f} (n={len(e.accs)})" if e.std is not None else with_se(e.mean, e.ses[0])
        if shown is not None and e.at_chance:
            shown += " (at chance)"
        tied = "-" if e.mean is None or chance_top else {True: "yes", False: "", None: "?"}[
            tied_with(top.mean, top.noise, e.mean)]
        rows.append([e.row.rank or "-", e.row.trial.trial_id, exp.label(e.row), _final_cell(e.row),
                     ", ".join(str(r["seed"]) for r in e.runs), shown, ", ".join(f"{a:.4f}" for a in e.accs) or "-",
                     tied, "; ".join(e.states), Md(", ".join(md(r["run_dir"], code=True) for r in e.runs))])
    noise = (f"the larger of the seed-to-seed standard deviation ({spread[0]:.4f}, pooled over the {spread[1]} "
             "configuration(s) retrained with several seeds) over sqrt(its seeds) and its binomial standard error"
             if spread else "its binomial standard error only: no configuration was retrained with more than one seed, "
             "so this counts test-set sampling and not the seed-to-seed spread")
    lines += [f"Retrains found in {where}: {len(exp.retrains)} run(s) of {len(entries)} configuration(s) ({n_runs} "
              "finished with a valid test accuracy). Per configuration: the test accuracy's mean ± standard deviation "
              f"over its seeds (one seed: ± its binomial standard error); tied: within {TIE_SE:g} times the noise of "
              f"the best mean, which is {noise}.", "",
              table(("search rank", "trial", "configuration", f"search {METRIC} ± SE", "seeds",
                     "retrain test accuracy", "per seed", "tied with best", "state", "run folders"), rows), "",
              *ignored]
    points = [e for e in done if e.row.valid_final is not None]
    if chance_top:
        return lines + [f"**At chance: the retrains learned nothing at this budget.** Their best mean, {top.mean:.4f}, "
                        f"is within {CHANCE_SE:g} standard errors of {chance_text(top.classes)}: no retrain is better "
                        "than another, so no winner, tie or rank correlation with the search is stated.", ""]
    if exp.best.at_chance:
        return lines + ["**The search's results are at chance** (see *Best trial*): its ranking carries no "
                        "information, so no rank correlation with the retrains is stated.", ""]
    if len(points) < 2:
        return lines + ["Fewer than two configurations have a finished retrain: no ranking to compare yet.", ""]
    k = kendall([e.row.valid_final for e in points], [e.mean for e in points])
    name = f"{prefix}search_vs_retrain.png"
    labels = [f"{e.row.trial.trial_id} {exp.label(e.row)}" for e in points]
    plots.search_vs_retrain([(lab, e.row.valid_final, e.mean) for lab, e in zip(labels, points)], out / name,
                            search_metric=METRIC, retrain_metric="test accuracy (mean over seeds)",
                            tau=k.tau if k else None, xerr=[e.row.se for e in points],
                            yerr=[e.std if e.std is not None else e.ses[0] for e in points],
                            chance=(chance_level(exp.best.classes), chance_level(top.classes)))
    tau_text = (f"**Kendall's tau = {k.tau:.3f}** (p = {k.p:.3g}, n = {k.n}; the probability of a tau at least this "
                "far from 0 if the two rankings were unrelated)" if k else
                "**Kendall's tau is undefined** (all search or all retrain results tied)")
    lines += [figure(name, "Search metric against retrain test accuracy (mean over seeds), per configuration; bars: "
                     "search standard error, standard deviation over seeds (one seed: its standard error)"), "",
              f"{tau_text} between the search's and the retrains' ranking (mean over seeds) of these {len(points)} "
              "configurations (1: same order, -1: reversed, 0: unrelated)"
              + ("; over two configurations it is +1 or -1 whatever they are." if len(points) == 2 else "."), ""]
    search_best = max(points, key=lambda e: e.row.valid_final)
    best_mean = max(e.mean for e in points)
    retrain_best = [e for e in points if e.mean == best_mean]
    others = [e for e in retrain_best if e is not search_best]
    name_of = dict(zip(map(id, points), labels))
    if search_best in retrain_best and not others:
        lines += [f"The search's winner ({md(name_of[id(search_best)])}) is also the retrain's winner.", ""]
    elif search_best in retrain_best:
        lines += [f"The search's winner ({md(name_of[id(search_best)])}) ties for the retrain's best ({best_mean:.4f}) "
                  f"with {', '.join(md(name_of[id(e)]) for e in others)}.", ""]
    else:
        leader = retrain_best[0]
        tie = tied_with(best_mean, leader.noise, search_best.mean)
        lines += [f"**The search's winner ({md(name_of[id(search_best)])}, search {search_best.row.valid_final:.4f}, "
                  f"retrain {search_best.mean:.4f}) is not the retrain's winner "
                  f"({', '.join(md(name_of[id(e)]) for e in retrain_best)}: retrain {best_mean:.4f}, search "
                  f"{', '.join(f'{e.row.valid_final:.4f}' for e in retrain_best)}).**"
                  + ("" if tie is None else f" Within the noise it is {'tied with it' if tie else 'behind it'}: "
                     f"{best_mean - search_best.mean:.4f} apart, {TIE_SE:g} times the noise of the retrain's best "
                     f"being {TIE_SE * leader.noise:.4f}."), ""]
    return lines


def _ignored(exp: ExperimentData) -> list[str]:
    """The retrain folders left out of the comparison, each with its reason."""
    if not exp.ignored:
        return []
    return [f"Left out of the comparison ({len(exp.ignored)}):", "",
            *(f"- {md(folder, code=True)}: {md(reason)}" for folder, reason in exp.ignored), ""]


def read_last_epoch(run_dir: str) -> int:
    metrics = run_metrics(Path(run_dir))
    return int(metrics[-1]["epoch"]) if metrics else 0


def exports_section(exp: ExperimentData, out: Path, prefix: str, level: int) -> list[str]:
    about = {"experiment_id": exp.profile.experiment_id, "experiment_dir": str(exp.exp_dir), "stage": exp.stage,
             "metric": METRIC, "search_space": exp.profile.search_space}
    csv_name, json_name = table_of.write_exports(exp.rows, exp.keys, out, about, prefix)
    return [heading(level, "Exports"), "",
            f"Every trial ({len(exp.rows)}, failed and early-stopped ones included) with its sequence id, trial id, "
            "status, the parameters it really ran, final result with standard error, best intermediate result, "
            f"epochs and duration: [{md(csv_name, code=True)}]({quote(csv_name)}) (a column `params_<name>` per "
            f"parameter) and [{md(json_name, code=True)}]({quote(json_name)}) (with every intermediate result).", ""]


def problems_section(exp: ExperimentData, level: int) -> list[str]:
    if not exp.problems:
        return []
    return [heading(level, "Invalid numbers"), "",
            "These values are not valid for what they measure; they are shown as invalid and left out of the "
            "figures, the ranking and every comparison:", "", *(f"- {md(p)}" for p in exp.problems), ""]


def render(exp: ExperimentData, out: Path, prefix: str = "", level: int = 1, tensorboard: bool = True,
           title: str | None = None, intro: Sequence[str] = ()) -> str:
    """The Markdown of the experiment's report (a title at ``level``, then the lines ``intro``, its
    sections one deeper); figures and exports are written into ``out``, their names starting with
    ``prefix``."""
    sub = level + 1
    title = title or f"Report: experiment {md(exp.profile.experiment_id)} ({md(STAGES.get(exp.stage, exp.stage))})"
    lines = [heading(level, title), "", *intro,
             heading(sub, "What ran"), "", *what_ran(exp), *hpo_winner_note(exp), "",
             *best_section(exp, sub), *trials_section(exp, sub), *per_trial_figures(exp, out, prefix, sub),
             *budget_section([exp], out, f"{prefix}budget.png", sub), *effects_section(exp, out, prefix, sub),
             *parallel_section(exp, out, prefix, sub), *importance_section(exp, out, prefix, sub),
             *model_optimizer_section(exp, sub), *architectures_section(exp, out, prefix, sub)]
    best = exp.best.trial
    if exp.stage == "oneshot_darts" and best.log_dir:
        try:
            run = load_run(best.log_dir)
        except UserError as exc:
            lines += [f"The best trial's run folder cannot be shown: {md(exc)}", ""]
        else:
            lines += [heading(sub, "The best trial's run"), "",
                      render_run(run, out, prefix=f"{prefix}best_trial_", heading="#" * sub)]
    lines += retrains_section(exp, out, prefix, sub)
    lines += problems_section(exp, sub)
    lines += exports_section(exp, out, prefix, sub)
    if tensorboard:
        lines += [heading(sub, "TensorBoard"), "",
                  "Trials write their per-epoch numbers as TensorBoard scalars into `<trial folder>/tensorboard/`: "
                  "select trials in the web UI's trial list and press TensorBoard, or run "
                  f"{md(f'tensorboard --logdir {exp.exp_dir}/{ENVIRONMENTS_DIR}', code=True)}.", ""]
    return "\n".join(lines) + "\n"
