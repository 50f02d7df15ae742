"""The report of an NNI experiment of any stage, and of the retrains of its best trials."""
from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from core.errors import UserError
from core.experiments import Profile, Trial, find_experiment, load_experiment, ranked, read_profile
from core.retrains import match_retrains
from report import plots
from report.common import Invalid, checked, figure, number_problem, read_config, read_metrics, seconds, table, valid
from report.run_report import load_run, render_run
from report.stats import kendall_tau

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
    retrains: list[dict[str, Any]] = field(default_factory=list)    # one per trial, compared with the search
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


def load(source: str | os.PathLike, experiments_dir: str | os.PathLike | None,
         retrain_dirs: Sequence[str | os.PathLike]) -> ExperimentData:
    """Read the experiment and find its retrains; an error when no trial has a final result yet."""
    exp_dir = find_experiment(source, experiments_dir)
    profile = read_profile(exp_dir)
    trials = load_experiment(exp_dir, param_keys=tuple(profile.search_space))
    if not ranked(trials):
        running = sum(t.status in ("RUNNING", "WAITING") for t in trials)
        raise UserError(f"experiment {profile.experiment_id}: no trial finished yet (none of its {len(trials)} trials "
                        f"has a final result{f'; {running} running' if running else ''}); nothing to report")
    problems: list[str] = []
    invalid_finals = _check_trials(trials, problems)
    dirs = [str(Path(d).expanduser()) for d in retrain_dirs]
    data = ExperimentData(exp_dir, profile, trials, retrain_dirs=dirs, problems=problems,
                          invalid_finals=invalid_finals)
    found = match_retrains(dirs, profile.experiment_id, data.stage, trials, list(profile.search_space))
    data.retrains, data.ignored = found.matched, found.ignored
    return data


def _check_trials(trials: Sequence[Trial], problems: list[str]) -> dict[str, Any]:
    """Trials' results that are not valid accuracies (NaN, infinite, outside [0, 1]) are taken out of
    the ranking and said where they are; returns the invalid final results by trial id."""
    invalid = {}
    for t in trials:
        why = number_problem("default", t.final)
        if why is not None:
            problems.append(f"trial {t.trial_id}: final {METRIC} {t.final!r} is invalid ({why}; from the "
                            "experiment database); the trial is left out of the ranking")
            invalid[t.trial_id], t.final = t.final, None
        bad = [(i, v) for i, v in enumerate(t.intermediates, 1) if number_problem("default", v) is not None]
        for i, v in bad:
            problems.append(f"trial {t.trial_id}: intermediate result {i} = {v!r} is invalid (from the experiment "
                            "database); left out of the curves")
        if bad:
            t.intermediates = [v for v in t.intermediates if number_problem("default", v) is None]
    if not ranked(trials) and invalid:
        raise UserError(f"no trial of the experiment has a valid final result ({len(invalid)} invalid: "
                        f"{problems[0]})")
    return invalid


def _value(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def _duration(t: Trial) -> float | None:
    return (t.end_ms - t.start_ms) / 1000 if t.start_ms and t.end_ms else None


def _arch_label(t: Trial, keys: Sequence[str]) -> str:
    return "".join(str(t.params.get(k, "?")) for k in keys)


def _what_ran(exp: ExperimentData) -> list[str]:
    p = exp.profile
    space = "; ".join(f"`{k}` {v.get('_type')} {json.dumps(v.get('_value'))}" for k, v in p.search_space.items()) \
        or "none given to NNI (the trial holds its own space)"
    algos = ", ".join(f"{role} {p.algorithm(role)}" for role in ("tuner", "assessor", "advisor") if p.algorithm(role))
    best = ranked(exp.trials)[0]
    cfg = read_config(Path(best.log_dir)) if best.log_dir else {}
    unset = {"subset": 0, "val_subset": 0, "max_batches": 0}          # 0: all of them
    data = ", ".join(f"{k} {cfg[k]}" for k in DATA_FIELDS
                     if cfg.get(k) is not None and cfg.get(k) != unset.get(k, None)) or "not recorded"
    counts = defaultdict(int)
    for t in exp.trials:
        counts[t.status] += 1
    return [f"- experiment: `{p.experiment_id}` ({p.params.get('experimentName') or 'no name'}), folder `{exp.exp_dir}`",
            f"- stage: {STAGES.get(exp.stage, exp.stage)} (trial code `{p.trial_code_dir}`)",
            f"- trial command: `{p.trial_command}`",
            f"- search space: {space}",
            f"- algorithms: {algos or 'none recorded'}",
            f"- trial budget: {p.max_trials or 'unlimited'} trials, concurrency {p.params.get('trialConcurrency', 1)}, "
            f"max duration {p.params.get('maxExperimentDuration', 'unlimited')}",
            f"- data (the best trial's config): {data}",
            f"- trials so far: {len(exp.trials)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})"]


def _trial_table(exp: ExperimentData, keys: Sequence[str]) -> tuple[str, list[Trial]]:
    good = ranked(exp.trials)
    rest = [t for t in exp.trials if t not in good]
    order = good + rest
    rows = []
    for i, t in enumerate(order, 1):
        final = Invalid(exp.invalid_finals[t.trial_id]) if t.trial_id in exp.invalid_finals else t.final
        rows.append([i if t in good else "-", t.trial_id, t.sequence_id, *(_value(t.params.get(k, "-")) for k in keys),
                     final, t.epochs_run, seconds(_duration(t)), t.status,
                     "yes" if t.early_stopped else "no"])
    header = ("rank", "trial", "No.", *keys, f"final {METRIC}", "epochs", "duration", "status", "early-stopped")
    return table(header, rows), order


def _effects(exp: ExperimentData, keys: Sequence[str], out: Path) -> list[str]:
    good = ranked(exp.trials)
    lines = []
    on_off = exp.stage == "classic_nas"
    for key in keys:
        groups: dict[str, list[float]] = defaultdict(list)
        for t in good:
            if key in t.params:
                groups[_value(t.params[key])].append(t.final)
        if not groups:
            continue
        labelled = sorted(groups.items(), key=lambda kv: kv[0])
        if on_off:
            labelled = [(("on" if k == "1" else "off" if k == "0" else k), v) for k, v in labelled]
        name = f"effect_{key}.png"
        plots.effect(key, labelled, out / name, METRIC)
        lines += [figure(name, f"Final {METRIC} per value of {key} (dots: trials; bars: mean)"), ""]
    return lines


def _model_optimizer(exp: ExperimentData) -> list[str]:
    good = ranked(exp.trials)
    if not good or not all("model" in t.params and "optimizer" in t.params for t in good):
        return []
    best: dict[tuple[str, str], Trial] = {}
    for t in good:       # best first: the first seen per cell is the cell's best
        best.setdefault((t.params["model"], t.params["optimizer"]), t)
    models = sorted({m for m, _ in best})
    optims = sorted({o for _, o in best})
    rows = []
    for m in models:
        cells = []
        for o in optims:
            t = best.get((m, o))
            cells.append(f"{t.final:.4f} (lr {t.params.get('lr')})" if t else "-")
        rows.append([m, *cells])
    return ["## Model x optimizer", "",
            f"Best final {METRIC} of each model with each optimizer (its learning rate in brackets; "
            "`-`: not tried or no trial finished).", "", table(("model", *optims), rows), ""]


def _architectures(exp: ExperimentData, keys: Sequence[str], out: Path) -> list[str]:
    if exp.stage != "classic_nas" or not keys:
        return []
    good = ranked(exp.trials)
    best: dict[str, float] = {}
    for t in good:
        best.setdefault(_arch_label(t, keys), t.final)
    name = "architectures.png"
    plots.bars(list(best), list(best.values()), out / name, title="Final validation accuracy per architecture",
               xlabel=f"architecture ({', '.join(keys)}: 1 = skip on)", ylabel=f"final {METRIC} (fraction)")
    return ["## Architectures", "", figure(name, "Best final validation accuracy of each architecture tried, best first"),
            "", table((f"architecture ({''.join(k[-1] for k in keys)} = {', '.join(keys)})", f"best final {METRIC}"),
                      list(best.items())), ""]


def _retrains(exp: ExperimentData, keys: Sequence[str], out: Path) -> list[str]:
    where = ", ".join(f"`{d}`" for d in exp.retrain_dirs)
    lines = ["## Does the ranking survive a long retrain?", ""]
    ignored = _ignored(exp)
    if not exp.retrains:
        stage_cmd = {"hpo": "python hpo/retrain.py", "classic_nas": "python classic_nas/retrain.py"}.get(exp.stage)
        hint = f" Retrain the K best with `{stage_cmd} --experiment {exp.profile.experiment_id} --top K`." if stage_cmd else ""
        return lines + [f"No retrain of this experiment's trials found (looked in {where}).{hint}", "", *ignored]
    rank = {t.trial_id: i for i, t in enumerate(ranked(exp.trials), 1)}
    rows, points = [], []
    for r in exp.retrains:
        t: Trial = r["trial"]
        result = checked(r["result"], f"`{r['run_dir']}/result.json`", exp.problems) if r["result"] else None
        label = " ".join(_value(t.params.get(k)) for k in keys) if exp.stage != "classic_nas" else \
            "".join(str(t.params.get(k, "?")) for k in keys)
        retrain_acc = result.get("test_acc") if result else None
        try:
            last: Any = read_last_epoch(r["run_dir"])
            state = "finished" if result else f"running/stopped after epoch {last}"
        except UserError as exc:
            last, state = "-", f"metrics unreadable: {exc}"
        rows.append([rank.get(t.trial_id, "-"), t.trial_id, label, t.final, retrain_acc,
                     result.get("epoch") if result else last, state, f"`{r['run_dir']}`"])
        if t.final is not None and valid(retrain_acc) is not None:
            points.append((f"{t.trial_id} {label}", float(t.final), float(retrain_acc)))
    lines += [f"Retrains found in {where}: {len(exp.retrains)} ({len(points)} finished with a valid test accuracy).",
              "", table(("search rank", "trial", "configuration", f"search {METRIC}", "retrain test accuracy",
                         "retrain epochs", "state", "run folder"), rows), "", *ignored]
    if len(points) < 2:
        return lines + ["Fewer than two retrains finished: no ranking to compare yet.", ""]
    tau = kendall_tau([p[1] for p in points], [p[2] for p in points])
    name = "search_vs_retrain.png"
    plots.search_vs_retrain(points, out / name, search_metric=METRIC, retrain_metric="test accuracy", tau=tau)
    search_best = max(points, key=lambda p: p[1])
    top = max(p[2] for p in points)
    retrain_best = [p for p in points if p[2] == top]
    tau_text = (f"**Kendall's tau = {tau:.3f}**" if tau is not None
                else "**Kendall's tau is undefined** (all search or all retrain results tied)")
    lines += [figure(name, "Search metric against retrain test accuracy, per retrained configuration"), "",
              f"{tau_text} between the search's and the retrain's ranking of these {len(points)} configurations "
              "(1: same order, -1: reversed, 0: unrelated).", ""]
    others = [p for p in retrain_best if p is not search_best]
    if search_best in retrain_best and not others:
        lines += [f"The search's winner ({search_best[0]}) is also the retrain's winner.", ""]
    elif search_best in retrain_best:
        lines += [f"The search's winner ({search_best[0]}) ties for the retrain's best ({top:.4f}) with "
                  f"{', '.join(p[0] for p in others)}.", ""]
    else:
        lines += [f"**The search's winner ({search_best[0]}, search {search_best[1]:.4f}, retrain {search_best[2]:.4f}) "
                  f"is not the retrain's winner ({', '.join(p[0] for p in retrain_best)}: retrain {top:.4f}, search "
                  f"{', '.join(f'{p[1]:.4f}' for p in retrain_best)}).**", ""]
    return lines


def _ignored(exp: ExperimentData) -> list[str]:
    """The retrain folders left out of the comparison, each with its reason."""
    if not exp.ignored:
        return []
    return [f"Left out of the comparison ({len(exp.ignored)}):", "",
            *(f"- `{folder}`: {reason}" for folder, reason in exp.ignored), ""]


def read_last_epoch(run_dir: str) -> int:
    metrics = read_metrics(Path(run_dir))
    return int(metrics[-1]["epoch"]) if metrics else 0


def render(exp: ExperimentData, out: Path) -> str:
    """The Markdown of the experiment's report; figures are written into ``out``."""
    keys = exp.keys
    table_md, order = _trial_table(exp, keys)
    best = ranked(exp.trials)[0]
    lines = [f"# Report: experiment {exp.profile.experiment_id} ({STAGES.get(exp.stage, exp.stage)})", "",
             "## What ran", "", *_what_ran(exp), "",
             "## Best trial", "",
             f"Trial **{best.trial_id}** (No. {best.sequence_id}): final {METRIC} **{best.final:.4f}** after "
             f"{best.epochs_run} epochs; parameters `{json.dumps(best.params, sort_keys=True)}`; run folder "
             f"`{best.log_dir}`." + (f" Its test accuracy (recorded, never searched on): "
                                     f"{best.final_metrics['test_acc']:.4f}." if "test_acc" in best.final_metrics else ""),
             "", "## All trials, best first", "", table_md, ""]
    for t in order:
        if t.error:
            lines.append(f"- trial {t.trial_id} failed: `{t.error}`")
    lines += ["", "## Results per trial", ""]
    numbers = [t.sequence_id if t.sequence_id is not None else i for i, t in enumerate(exp.trials)]
    good = set(id(t) for t in ranked(exp.trials))
    finals = [t.final if id(t) in good else None for t in exp.trials]
    stopped = [t.intermediates[-1] if t.early_stopped else None for t in exp.trials]
    plots.final_per_trial(numbers, finals, stopped, out / "trials.png", METRIC)
    lines += [figure("trials.png", f"Final {METRIC} of each trial in start order, and the best so far"), ""]
    curves = [(t.trial_id, t.intermediates, t.early_stopped) for t in exp.trials if t.intermediates]
    if curves:
        plots.intermediate_curves(curves, out / "curves.png", METRIC)
        lines += [figure("curves.png", f"Per-epoch {METRIC} of every trial; early-stopped ones dashed, ending in x"), ""]
    else:
        lines += ["No trial reported an intermediate result yet.", ""]
    effects = _effects(exp, keys, out)
    if effects:
        lines += ["## Effect of each searched parameter", "", *effects]
    lines += _model_optimizer(exp)
    lines += _architectures(exp, keys, out)
    if exp.stage == "oneshot_darts" and best.log_dir:
        try:
            run = load_run(best.log_dir)
        except UserError as exc:
            lines += [f"The best trial's run folder cannot be shown: {exc}", ""]
        else:
            lines += ["## The best trial's run", "", render_run(run, out, prefix="best_trial_", heading="##")]
    lines += _retrains(exp, keys, out)
    if exp.problems:
        lines += ["## Invalid numbers", "",
                  "These values are not valid for what they measure; they are shown as invalid and left out of the "
                  "figures, the ranking and every comparison:", "", *(f"- {p}" for p in exp.problems), ""]
    lines += ["## TensorBoard", "",
              "Trials write their per-epoch numbers as TensorBoard scalars into `<trial folder>/tensorboard/`: select "
              "trials in the web UI's trial list and press TensorBoard, or run "
              f"`tensorboard --logdir {exp.exp_dir}/environments`.", ""]
    return "\n".join(lines) + "\n"
