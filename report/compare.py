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

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from core.errors import UserError
from report import experiment_report as er
from report import trials as table_of
from report.common import md, seconds, table
from report.stats import TIE_SE, tied_with, with_se
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


def verdict(entries: Sequence[tuple[str, TrialRow | None]], what: str) -> str:
    """Which of ``entries`` (name, its best row) found the better configuration, with the noise:
    the others within :data:`TIE_SE` of the leader's standard errors are tied with it."""
    found = [(md(n), r) for n, r in entries if r is not None]
    missing = [md(n) for n, r in entries if r is None]
    if not found:
        return f"{what}: no experiment had a finished trial yet."
    leader_name, leader = max(found, key=lambda e: e[1].valid_final)
    shown = "; ".join(f"{n}: {with_se(r.valid_final, r.se)} (trial {md(r.trial.trial_id)})" for n, r in found)
    shown += "".join(f"; {n}: no finished trial yet" for n in missing)
    others = [(n, r) for n, r in found if r is not leader]
    ties = [(n, tied_with(leader.valid_final, leader.se, r.valid_final)) for n, r in others]
    if any(t is None for _, t in ties):
        return (f"{what}: **{leader_name}** is ahead ({shown}); its standard error is unknown (its trials did not "
                "record how many validation images they were scored on), so whether that is more than noise "
                "cannot be said.")
    tied = [n for n, t in ties if t]
    if not others:
        return f"{what}: only {leader_name} had a finished trial ({shown})."
    if not tied:
        return (f"{what}: **{leader_name} found the better configuration** ({shown}), ahead of every other by more "
                f"than {TIE_SE:g} of its standard errors ({TIE_SE * leader.se:.4f}).")
    if len(tied) == len(others):
        return (f"{what}: **tied** ({shown}): {leader_name} is ahead by less than {TIE_SE:g} of its standard errors "
                f"({TIE_SE * leader.se:.4f}); these experiments cannot be told apart.")
    return (f"{what}: **{leader_name} is ahead, tied with {', '.join(tied)}** (within {TIE_SE:g} standard errors, "
            f"{TIE_SE * leader.se:.4f}) and ahead of the rest ({shown}).")


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
    lines = [f"# Comparison: {names} ({md(er.STAGES.get(cmp.stage, cmp.stage))})", "",
             "## Side by side", "", _side_by_side(cmp), ""]
    data = {er.trial_data(e) for e in exps}
    if len(data) > 1:
        lines += ["**These experiments' trials did not train on the same data and schedule** (see *data* above): "
                  "their accuracies are measured differently, and the verdict below compares unlike things.", ""]
    budgets = {_name(e): er.epochs_spent(e) for e in exps}
    common = min(budgets.values())
    lines += ["## Which found the better configuration?", "",
              "- " + verdict([(_name(e), e.best) for e in exps], "Each within its whole budget ("
                             + ", ".join(f"{md(n)} {b} trial-epochs" for n, b in budgets.items()) + ")")]
    if len(set(budgets.values())) > 1:
        lines += ["- " + verdict([(_name(e), table_of.best_within(e.rows, common)) for e in exps],
                                 f"Within the smallest budget any of them spent ({common} trial-epochs, the fair "
                                 "comparison of search strategies)")]
    lines += ["", *er.budget_section(exps, out, "budget.png", 2)]
    for e in exps:
        prefix = f"{_name(e)}_"
        lines += [f"## Experiment {md(_name(e), code=True)}", "", *er.what_ran(e), *er.hpo_winner_note(e), "",
                  *er.best_section(e, 3), er.heading(3, f"Its {min(TOP, len(e.rows))} best trials" if len(e.rows) > TOP
                                                     else "Its trials"), "",
                  er.trial_table(e, TOP), "", *er.per_trial_figures(e, out, prefix, 3),
                  *er.problems_section(e, 3), *er.exports_section(e, out, prefix, 3)]
    return "\n".join(lines) + "\n"
