"""Experiments of one stage side by side: ``python -m report A B [C ...] -o OUT``.

Each experiment is read as for its own report (:func:`report.experiment_report.load`: one table of
trials), and the comparison composes that report's sections: what ran, side by side; the best
result against trial-epochs spent, one line per experiment (the fair x-axis when an assessor stops
trials early: a stopped trial costs the epochs it ran); which experiment found the better
configuration within its budget, and within the smallest budget they all spent, with the noise of
:mod:`report.stats` ("tied" within two standard errors); then each experiment's best trial, its
best trials, its per-trial figures and its exports.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from core.errors import UserError
from core.paths import TRIAL_FLAGS_ENV
from experiments.top_k import HOW_IT_RAN
from report import experiment_report as er
from report import trials as table_of
from report.markdown import file_part, md, seconds, table
from report.records import trial_config
from report.stats import CHANCE_SE, TIE_SE, Noise, chance_text, seed_spread, tied_with, with_se
from report.trials import TrialRow

#: How many of each experiment's best trials the comparison lists.
TOP = 10


@dataclass
class Comparison:
    exps: list[er.ExperimentData]

    @property
    def stage(self) -> str:
        return self.exps[0].stage


def load(sources: Sequence[str], experiments_dir: str | os.PathLike | None,
         retrain_dirs: Sequence[str | os.PathLike]) -> Comparison:
    """Read every experiment; experiments of different stages, or one given twice, are an error."""
    exps = [er.load(s, experiments_dir, retrain_dirs) for s in sources]
    seen: dict[tuple[int, int], int] = {}
    for i, (source, exp) in enumerate(zip(sources, exps)):
        st = os.stat(exp.exp_dir)       # one folder however it is spelled: twice, an id, a link, its database
        first = seen.setdefault((st.st_dev, st.st_ino), i)
        if first != i:
            raise UserError(f"comparing: {sources[first]!r} and {source!r} are the same experiment "
                            f"({exp.profile.experiment_id}); an experiment compared with itself is always tied")
    stages = {exp.stage for exp in exps}
    if len(stages) > 1:
        named = ", ".join(f"{s!r} is {er.STAGES.get(e.stage, e.stage)}" for s, e in zip(sources, exps))
        raise UserError(f"comparing: experiments of one stage only ({named}); compare the stages' winners with "
                        "python -m report --study")
    return Comparison(exps)


def _name(exp: er.ExperimentData) -> str:
    return exp.profile.experiment_id


def verdict(entries: Sequence[tuple[str, TrialRow | None]], what: str, seed: tuple[float, int] | None = None) -> str:
    """Which of ``entries`` (name, its best row) found the better configuration, with the noise:
    the others within :data:`TIE_SE` times the leader's noise are tied with it, the noise being the
    larger of its standard error and ``seed`` (the seed-to-seed standard deviation and over how
    many configurations it was measured; None: not measured, and the verdict says so). No verdict
    over results at chance."""
    found = [(md(n), r) for n, r in entries if r is not None]
    missing = [md(n) for n, r in entries if r is None]
    if not found:
        return f"{what}: no experiment had a finished trial yet."
    leader_name, leader = max(found, key=lambda e: e[1].valid_final)
    shown = "; ".join(f"{n}: {with_se(r.valid_final, r.se)}{' (at chance)' if r.at_chance else ''} (trial "
                      f"{md(r.trial.trial_id)})" for n, r in found)
    shown += "".join(f"; {n}: no finished trial yet" for n in missing)
    if leader.at_chance:
        return (f"{what}: **every experiment's best is at chance** ({shown}; within {CHANCE_SE:g} standard errors of "
                f"{chance_text(leader.classes)}): none learned anything at this budget, so none found a better "
                "configuration than another.")
    others = [(n, r) for n, r in found if r is not leader]
    noise = Noise(leader.se, seed[0] if seed else None, seed[1] if seed else 0)
    ties = [(n, tied_with(leader.valid_final, noise.value, r.valid_final)) for n, r in others]
    if any(t is None for _, t in ties):
        return (f"{what}: **{leader_name}** is ahead ({shown}); its standard error is unknown (its trials did not "
                "record how many validation images they were scored on), so whether that is more than noise "
                "cannot be said.")
    tied = [n for n, t in ties if t]
    if not others:
        return f"{what}: only {leader_name} had a finished trial ({shown})."
    margin = f"{TIE_SE:g} times its noise ({TIE_SE * noise.value:.4f}; {noise.text()})"
    if not tied:
        return (f"{what}: **{leader_name} found the better configuration** ({shown}), ahead of every other by more "
                f"than {margin}.")
    if len(tied) == len(others):
        return (f"{what}: **tied** ({shown}): {leader_name} is ahead by less than {margin}; these experiments cannot "
                "be told apart.")
    return (f"{what}: **{leader_name} is ahead, tied with {', '.join(tied)}** (within {margin}) and ahead of the rest "
            f"({shown}).")


# --- what differs between the experiments ----------------------------------------------------------

#: The aspects of an experiment the comparison names when they differ, in this order.
ASPECTS = ("search space", "tuner", "assessor", "budget", "data", "recipe", "trial command", "seed")
#: Tuner and assessor arguments that are a seed (told apart from the algorithm they seed).
SEED_ARGS = ("seed", "random_state")


def _algorithm(exp: er.ExperimentData, role: str) -> tuple[str, Any]:
    """An algorithm's name and its arguments without its seed, and that seed (None: none given)."""
    spec = exp.profile.params.get(role)
    if not isinstance(spec, dict):
        return "none", None
    args = dict(spec.get("classArgs") or {})
    seed = next((args.pop(k) for k in SEED_ARGS if k in args), None)
    name = spec.get("name") or spec.get("className") or "?"
    return name + (f" {json.dumps(args, sort_keys=True)}" if args else ""), seed


def _configs(exp: er.ExperimentData) -> list[dict[str, Any]]:
    """The recorded configs of the experiment's trials (those with a run folder holding one)."""
    out = []
    for r in exp.rows:
        if r.trial.log_dir:
            cfg = trial_config(r.trial.log_dir)
            if cfg:
                out.append(cfg)
    return out


def _recipe(exp: er.ExperimentData) -> dict[str, Any]:
    """The best trial's config without the searched parameters, the data and schedule fields, how it
    ran and its seed: what else the trials trained with."""
    cfg = trial_config(exp.best.trial.log_dir)
    skip = {*exp.keys, *er.DATA_FIELDS, *HOW_IT_RAN, "seed"}
    return {k: v for k, v in cfg.items() if k not in skip}


def _seeds(exp: er.ExperimentData) -> str:
    """The trials' seeds (their configs) and the tuner's, in words."""
    seeds = sorted({json.dumps(c["seed"]) for c in _configs(exp) if "seed" in c})
    tuner_seed = _algorithm(exp, "tuner")[1]
    text = f"trials' seed {', '.join(seeds)}" if seeds else "trials' seed not recorded"
    return text + (f"; tuner seed {tuner_seed}" if tuner_seed is not None else "")


def _aspects(exp: er.ExperimentData) -> dict[str, str]:
    p = exp.profile
    space = json.dumps(p.search_space, sort_keys=True)
    command, _ = er.trial_command(exp)
    return {"search space": space, "tuner": _algorithm(exp, "tuner")[0] if p.algorithm("tuner") else
            _algorithm(exp, "advisor")[0], "assessor": _algorithm(exp, "assessor")[0],
            "budget": f"{p.max_trials or 'unlimited'} trials, concurrency {p.params.get('trialConcurrency', 1)}, max "
                      f"duration {p.params.get('maxExperimentDuration', 'unlimited')}",
            "data": er.trial_data(exp), "recipe": json.dumps(_recipe(exp), sort_keys=True, default=str),
            "trial command": re.sub(r"--seed[= ]\S+", "--seed S", command), "seed": _seeds(exp)}


@dataclass(frozen=True)
class Differences:
    """The aspects (:data:`ASPECTS`) in which the experiments differ, and each one's value there."""

    differ: dict[str, list[str]]
    same: list[str]

    @property
    def seed_repeat(self) -> bool:
        """Nothing differs but the seed (or not even that): one search run again, not two strategies."""
        return set(self.differ) <= {"seed"}


def differences(cmp: Comparison) -> Differences:
    values = [_aspects(e) for e in cmp.exps]
    differ = {a: [v[a] for v in values] for a in ASPECTS if len({v[a] for v in values}) > 1}
    return Differences(differ, [a for a in ASPECTS if a not in differ])


def _recipe_words(exp: er.ExperimentData, keys: Sequence[str]) -> str:
    recipe = _recipe(exp)
    return "; ".join(f"{k} {json.dumps(recipe.get(k))}" for k in keys) or "-"


def differences_section(cmp: Comparison, diff: Differences) -> list[str]:
    """What differs between the experiments, first: a table of the aspects that differ, the trial
    command as the trials ran it (flags expanded), and whether this is a seed repeat."""
    exps = cmp.exps
    recipes = [_recipe(e) for e in exps]
    recipe_keys = sorted(k for k in set().union(*recipes)
                         if len({json.dumps(r.get(k), default=str) for r in recipes}) > 1)
    rows = []
    for aspect, values in diff.differ.items():
        if aspect == "recipe":
            values = [_recipe_words(e, recipe_keys) for e in exps]
        elif aspect == "search space":
            values = ["; ".join(f"{k} {v.get('_type')} {json.dumps(v.get('_value'))}"
                                for k, v in e.profile.search_space.items()) for e in exps]
        elif aspect == "trial command":
            values = [md(er.trial_command(e)[0], code=True) for e in exps]
        rows.append((aspect, *values))
    lines = ["## What differs", ""]
    commands = [er.trial_command(e) for e in exps]
    lines += [f"- {md(_name(e), code=True)} ran its trials as {md(c, code=True)}" + ("" if known else " (the flags of "
              f"{TRIAL_FLAGS_ENV} were not recorded by its trials: they are not shown)") for e, (c, known)
              in zip(exps, commands)]
    lines += [f"- {md(_name(e))}: {md(_seeds(e))}" for e in exps if "seed" not in diff.differ]
    lines += [""]
    if rows:
        lines += [table(("differs in", *(md(_name(e), code=True) for e in exps)), rows), ""]
    lines += [f"The same in all: {', '.join(diff.same) or 'nothing'}.", ""]
    if diff.seed_repeat:
        lines += [("**A seed repeat, not two search strategies**: these experiments differ only in the seed. What "
                   "separates their results is seed-to-seed noise, so they are not ranked as search strategies below."
                   if diff.differ else "**A repeat, not two search strategies**: nothing these experiments recorded "
                   "differs (not even the seed). What separates their results is run-to-run noise, so they are not "
                   "ranked as search strategies below."), ""]
    return lines


def cross_seed_spread(cmp: Comparison, diff: Differences) -> tuple[float, int] | None:
    """The seed-to-seed standard deviation of one configuration's result, from the configurations
    that finished in several of the experiments trained with other seeds (only when they trained on
    the same data with the same recipe); None when there are none."""
    if "data" in diff.differ or "recipe" in diff.differ or "seed" not in diff.differ:
        return None
    groups: dict[str, dict[int, float]] = {}
    for i, exp in enumerate(cmp.exps):
        for r in table_of.by_rank(exp.rows):
            key = json.dumps({k: r.trial.params.get(k) for k in exp.keys}, sort_keys=True)
            groups.setdefault(key, {}).setdefault(i, r.valid_final)    # its best run in that experiment
    return seed_spread([list(g.values()) for g in groups.values()])


def seed_repeat_section(cmp: Comparison, spread: tuple[float, int] | None) -> list[str]:
    """A seed repeat: how far apart the same search landed, without a verdict between strategies."""
    exps = cmp.exps
    shown = "; ".join(f"{md(_name(e))}: {with_se(e.best.valid_final, e.best.se)}"
                      f"{' (at chance)' if e.best.at_chance else ''} (trial {md(e.best.trial.trial_id)}, "
                      f"{md(e.label(e.best))})"
                      for e in exps)
    values = [e.best.valid_final for e in exps]
    lines = ["## The same search with another seed", "",
             f"- Best of each: {shown}; {max(values) - min(values):.4f} apart."]
    if spread is not None:
        ses = ", ".join(f"{e.best.se:.4f}" for e in exps if e.best.se) or "unknown"
        several = all(e.best.se and spread[0] >= 2 * e.best.se for e in exps)
        lines += [f"- The same configuration in several of them: its result moved by a standard deviation of "
                  f"{spread[0]:.4f} from seed to seed ({spread[1]} configuration(s) ran in more than one). Against "
                  f"that, the binomial standard error ({ses}) understates the noise of one result"
                  + (" several times" if several else "") + "."]
    else:
        lines += ["- No configuration finished in more than one of them: the seed-to-seed spread of one configuration "
                  "is not measured here."]
    return lines + ["", "A search's winner that moves with the seed is a result of this budget's noise, not a "
                    "finding: compare search strategies with several seeds each (docs/report.md, *Noise*).", ""]


def _side_by_side(cmp: Comparison) -> str:
    exps = cmp.exps
    aspects: list[tuple[str, list[str]]] = []

    def add(name: str, value) -> None:
        aspects.append((name, [str(value(e)) for e in exps]))

    add("name", lambda e: e.profile.params.get("experimentName") or "-")
    add("tuner", lambda e: e.profile.algorithm("tuner") or e.profile.algorithm("advisor") or "-")
    add("assessor", lambda e: e.profile.algorithm("assessor") or "none")
    add("search space", lambda e: "; ".join(f"{k} {v.get('_type')} {len(v.get('_value') or [])} values"
                                           if v.get("_type") == "choice" else f"{k} {v.get('_type')} {v.get('_value')}"
                                           for k, v in e.profile.search_space.items()) or "-")
    add("trial budget", lambda e: f"{e.profile.max_trials or 'unlimited'} trials")
    add("trials run", lambda e: ", ".join(f"{sum(r.status == s for r in e.rows)} {s}"
                                          for s in sorted({r.status for r in e.rows})))
    add("trial-epochs spent", er.epochs_spent)
    add("time (NNI's count)", lambda e: seconds(e.profile.exec_seconds) if e.profile.exec_seconds else "-")
    add("data (best trial's config)", er.trial_data)
    add("best trial", lambda e: f"{e.best.trial.trial_id} ({e.label(e.best)})")
    add(f"best final {er.METRIC} ± SE", lambda e: with_se(e.best.valid_final, e.best.se))
    add("tied with its best", lambda e: "?" if e.best.se is None else
        sum(bool(r.tied) for r in e.rows if r is not e.best))
    add("found after (trial-epochs)", lambda e: next(x for x, b in zip(*table_of.spent(e.rows)) if b is e.best))
    return table(("", *(md(_name(e), code=True) for e in exps)), [(name, *values) for name, values in aspects])


def render(cmp: Comparison, out: Path) -> str:
    """The Markdown of the comparison; figures and each experiment's exports are written into ``out``."""
    exps = cmp.exps
    names = ", ".join(md(_name(e), code=True) for e in exps)
    diff = differences(cmp)
    spread = cross_seed_spread(cmp, diff)
    lines = [f"# Comparison: {names} ({md(er.STAGES.get(cmp.stage, cmp.stage))})", "",
             *differences_section(cmp, diff), "## Side by side", "", _side_by_side(cmp), ""]
    data = {er.trial_data(e) for e in exps}
    if len(data) > 1:
        lines += ["**These experiments' trials did not train on the same data and schedule** (see *data* above): "
                  "their accuracies are measured differently, and the verdict below compares unlike things.", ""]
    budgets = {_name(e): er.epochs_spent(e) for e in exps}
    common = min(budgets.values())
    if diff.seed_repeat:
        lines += seed_repeat_section(cmp, spread)
    else:
        lines += ["## Which found the better configuration?", "",
                  "- " + verdict([(_name(e), e.best) for e in exps], "Each within its whole budget ("
                                 + ", ".join(f"{md(n)} {b} trial-epochs" for n, b in budgets.items()) + ")", spread)]
        if len(set(budgets.values())) > 1:
            lines += ["- " + verdict([(_name(e), table_of.best_within(e.rows, common)) for e in exps],
                                     f"Within the smallest budget any of them spent ({common} trial-epochs, the fair "
                                     "comparison of search strategies)", spread)]
        lines += [""]
    lines += [*er.budget_section(exps, out, "budget.png", 2)]
    names = [_name(e) for e in exps]
    for i, e in enumerate(exps):         # one experiment id twice (a copy of its folder): each its own files
        prefix = file_part(names[i] if names.count(names[i]) == 1 else f"{names[i]} ({i + 1})") + "_"
        lines += [f"## Experiment {md(_name(e), code=True)}", "", *er.what_ran(e), *er.hpo_winner_note(e), "",
                  *er.best_section(e, 3), er.heading(3, f"Its {min(TOP, len(e.rows))} best trials" if len(e.rows) > TOP
                                                     else "Its trials"), "",
                  er.trial_table(e, TOP), "", *er.per_trial_figures(e, out, prefix, 3),
                  *er.problems_section(e, 3), *er.exports_section(e, out, prefix, 3)]
    return "\n".join(lines) + "\n"
