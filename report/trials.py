"""The one table of an experiment's trials every part of a report reads: the trial table, the
figures, ``trials.csv`` and ``trials.json``, comparisons and the study report.

One :class:`TrialRow` per trial, in start order, failed and early-stopped ones included: what the
trial ran (its parameters as :mod:`experiments.reader` recovers them), how it ended, its final result
(or why that is invalid), the number of validation images the result was measured on, its standard
error, its rank, whether it is tied with the best and whether it is at chance (:mod:`report.stats`).
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from core.files import atomic_write_text
from core.errors import UserError
from experiments.reader import Trial, ranked
from core.chance import classes_of
from report.markdown import md
from report.records import Invalid, run_metrics, trial_config
from report.stats import CHANCE_SE, TIE_SE, at_chance, binomial_se, tied_with

#: The final-result and metrics key holding how many validation images a trial was scored on.
IMAGES_KEY = "val_images"
CSV_FILE = "trials.csv"
JSON_FILE = "trials.json"
#: The columns of trials.csv before the parameters (``params_<name>``) and after them.
CSV_HEAD = ("sequence_id", "trial_id", "status", "nni_status", "rank", "final", "final_se", "val_images", "tied",
            "at_chance", "best_intermediate", "epochs", "duration_s", "start_time", "end_time")
CSV_TAIL = ("params_source", "final_invalid", "error", "run_folder")


@dataclass
class TrialRow:
    """One trial as every part of the report sees it."""

    trial: Trial
    final: float | Invalid | None            # a valid final result, an invalid one, or none
    images: int | None = None                # validation images the final result was measured on
    se: float | None = None                  # its binomial standard error
    rank: int | None = None                  # 1 = the best; None: no valid final result
    tied: bool | None = None                 # within TIE_SE standard errors of the best (None: unknown)
    classes: int | None = None               # the data's number of classes (core.chance)
    at_chance: bool | None = None            # its final result is at chance (report.stats.at_chance; None: unknown)

    @property
    def status(self) -> str:
        """NNI's status, except that an early-stopped trial says so (NNI 3.0 records USER_CANCELED)."""
        return "EARLY_STOPPED" if self.trial.early_stopped else self.trial.status

    @property
    def valid_final(self) -> float | None:
        return None if self.final is None or isinstance(self.final, Invalid) else float(self.final)

    @property
    def best_intermediate(self) -> float | None:
        return max(self.trial.intermediates) if self.trial.intermediates else None

    @property
    def duration(self) -> float | None:
        t = self.trial
        return (t.end_ms - t.start_ms) / 1000 if t.start_ms and t.end_ms else None


def _images(trial: Trial) -> int | None:
    """How many validation images the trial's final result was measured on: its final result says
    so (trials of this project repeat it), else its run folder's last epoch does."""
    n = trial.final_metrics.get(IMAGES_KEY)
    if n is None and trial.log_dir:
        try:
            metrics = run_metrics(Path(trial.log_dir))
        except UserError:          # an unreadable run folder: the number is unknown, the report goes on
            metrics = []
        if metrics:
            n = metrics[-1].get(IMAGES_KEY)
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def build(trials: Sequence[Trial], invalid_finals: dict[str, Any]) -> list[TrialRow]:
    """The rows of ``trials`` (start order); ``invalid_finals``: trial id -> its invalid final result."""
    good = ranked(trials)
    rank = {id(t): i for i, t in enumerate(good, 1)}
    rows = []
    for t in trials:
        final = Invalid(invalid_finals[t.trial_id]) if t.trial_id in invalid_finals else \
            (t.final if id(t) in rank else None)
        row = TrialRow(t, final, rank=rank.get(id(t)))
        if row.valid_final is not None:
            row.images = _images(t)
            row.se = binomial_se(row.valid_final, row.images)
        rows.append(row)
    best = best_row(rows)
    if best is not None:
        for row in rows:
            if row.valid_final is not None:
                row.tied = True if row is best else tied_with(best.valid_final, best.se, row.valid_final)
    mark_chance(rows)
    return rows


def _classes(trial: Trial) -> int | None:
    """The number of classes of a trial's data: its final result says so, else its run folder's
    config (:func:`core.chance.classes_of`)."""
    return classes_of(trial_config(trial.log_dir), trial.final_metrics)


def mark_chance(rows: Sequence[TrialRow]) -> None:
    """Each row's number of classes (a trial that did not record it takes the one the experiment's
    other trials on the same data recorded) and whether its final result is at chance. When the
    best is at chance no trial is better than another: nothing is called tied (``tied`` None)."""
    data = {id(r): trial_config(r.trial.log_dir).get("data") if r.trial.log_dir else None for r in rows}
    for row in rows:
        row.classes = _classes(row.trial)
    known: dict[Any, int] = {}
    for row in rows:
        if row.classes is not None:
            known.setdefault(data[id(row)], row.classes)
    for row in rows:
        if row.classes is None:
            row.classes = known.get(data[id(row)])
        if row.valid_final is not None:
            row.at_chance = at_chance(row.valid_final, row.images, row.classes)
    best = best_row(rows)
    if best is not None and best.at_chance:
        for row in rows:
            row.tied = None


def chance_of(rows: Sequence[TrialRow]) -> int | None:
    """The experiment's number of classes (its best trial's, else any trial's), for its chance line."""
    best = best_row(rows)
    if best is not None and best.classes is not None:
        return best.classes
    return next((r.classes for r in rows if r.classes is not None), None)


def best_row(rows: Sequence[TrialRow]) -> TrialRow | None:
    return next((r for r in rows if r.rank == 1), None)


def by_rank(rows: Sequence[TrialRow]) -> list[TrialRow]:
    """The ranked rows, best first."""
    return sorted((r for r in rows if r.rank is not None), key=lambda r: r.rank)


def tie_text(rows: Sequence[TrialRow], label=lambda r: md(r.trial.trial_id)) -> str:
    """One sentence: which trials are tied with the best, or why that cannot be said."""
    best = best_row(rows)
    if best is None:
        return ""
    if best.se is None:
        return ("Its standard error is unknown (the trial did not record how many validation images it was scored "
                "on), so no trial can be called tied with it.")
    if len(by_rank(rows)) == 1:
        return f"Standard error {best.se:.4f} ({best.images:,} validation images; binomial). No other trial finished."
    others = [r for r in by_rank(rows) if r is not best and r.tied]
    base = (f"Standard error {best.se:.4f} ({best.images:,} validation images; binomial). Trials within "
            f"{TIE_SE:g} standard errors of it ({best.valid_final - TIE_SE * best.se:.4f} or more) are tied with it: ")
    if not others:
        return base + "none; the best is ahead of every other trial by more than the noise."
    shown = ", ".join(label(r) for r in others[:10]) + (f" and {len(others) - 10} more" if len(others) > 10 else "")
    return base + f"{len(others)} ({shown}); the search cannot tell these apart from the best."


# --- exports ---------------------------------------------------------------------------------------

def _iso(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds") if ms else None


def record(row: TrialRow) -> dict[str, Any]:
    """One trial as ``trials.json`` holds it (strict JSON: an invalid number is a string there)."""
    t = row.trial
    return {"sequence_id": t.sequence_id, "trial_id": t.trial_id, "status": row.status, "nni_status": t.status,
            "early_stopped": t.early_stopped, "params": t.params, "params_source": t.params_source,
            "rank": row.rank, "final": row.valid_final,
            "final_invalid": str(row.final.raw) if isinstance(row.final, Invalid) else None,
            "final_se": row.se, "val_images": row.images, "tied": row.tied, "at_chance": row.at_chance,
            "classes": row.classes,
            "best_intermediate": row.best_intermediate, "intermediates": per_epoch(t),
            "epochs": t.epochs_run, "duration_s": row.duration, "start_time": _iso(t.start_ms),
            "end_time": _iso(t.end_ms), "error": t.error, "run_folder": t.log_dir}


def per_epoch(trial: Trial) -> list[float | None]:
    """The trial's intermediate results, one per epoch it ran (``trials.json``): None at an epoch
    whose result was left out as invalid, every other at its own epoch (:attr:`Trial.curve`)."""
    values: list[float | None] = [None] * trial.epochs_run
    for epoch, value in trial.curve:
        values += [None] * (epoch - len(values))
        values[epoch - 1] = value
    return values


#: What a spreadsheet takes for the start of a formula (OWASP's CSV injection list).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def neutral(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: one starting as a formula would (``=``, ``+``,
    ``-``, ``@``, a tab or a carriage return) and not a number gets a leading ``'`` (OWASP)."""
    return "'" + text if text.startswith(FORMULA_START) and not _NUMBER.fullmatch(text) else text


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return neutral(str(value))
    return neutral(json.dumps(value, sort_keys=True))


def csv_text(rows: Sequence[TrialRow], keys: Sequence[str]) -> str:
    """``trials.csv``: one line per trial, the parameters as ``params_<name>`` columns (RFC 4180:
    CRLF line ends, so that the writer quotes a value holding a carriage return as it quotes a line
    feed; with ``\n`` alone it leaves a lone CR bare, which readers take for the end of the row)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow([*CSV_HEAD, *(f"params_{k}" for k in keys), *CSV_TAIL])
    for row in rows:
        r = record(row)
        writer.writerow([_cell(r[c]) for c in CSV_HEAD] + [_cell(row.trial.params.get(k)) for k in keys]
                        + [_cell(r[c]) for c in CSV_TAIL])
    return buf.getvalue()


def _strict(value: Any) -> Any:
    """``value`` with every non-finite float as a string (JSON has no NaN or infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def write_exports(rows: Sequence[TrialRow], keys: Sequence[str], out: Path, about: dict[str, Any],
                  prefix: str = "") -> list[str]:
    """Write ``<prefix>trials.csv`` and ``<prefix>trials.json`` (``about``: the experiment's id,
    stage, metric, search space) into ``out``; returns their names."""
    csv_name, json_name = f"{prefix}{CSV_FILE}", f"{prefix}{JSON_FILE}"
    atomic_write_text(out / csv_name, csv_text(rows, keys))
    data = {**about, "tie_rule": f"within {TIE_SE:g} standard errors of the best's final result",
            "chance_rule": f"at most {CHANCE_SE:g} standard errors (of a guess's accuracy) above 1 / classes",
            "trials": [record(r) for r in rows]}
    atomic_write_text(out / json_name, json.dumps(_strict(data), indent=1, allow_nan=False, default=str) + "\n")
    return [csv_name, json_name]


def spent(rows: Sequence[TrialRow]) -> tuple[list[int], list[TrialRow | None]]:
    """The budget curve: trial-epochs spent after each trial ended (every trial's epochs, failed and
    early-stopped ones included, in the order trials ended; running ones last) and the best row so
    far at that point (None before the first valid final result)."""
    order = sorted(rows, key=lambda r: (r.trial.end_ms is None, r.trial.end_ms or 0, r.trial.sequence_id or 0))
    xs: list[int] = []
    best: list[TrialRow | None] = []
    current, total = None, 0
    for row in order:
        total += row.trial.epochs_run
        if row.valid_final is not None and (current is None or row.valid_final > current.valid_final):
            current = row
        xs.append(total)
        best.append(current)
    return xs, best


def best_within(rows: Sequence[TrialRow], budget: int) -> TrialRow | None:
    """The best row found by the time ``budget`` trial-epochs were spent."""
    found = None
    for x, row in zip(*spent(rows)):
        if x > budget:
            break
        found = row
    return found
