"""Read an NNI experiment's trials without the manager or the web UI: the shared experiment reader.

>>> trials = load_experiment("k3x9w2ab", param_keys=("model", "optimizer", "lr"))
>>> best = best_trial(trials)
>>> best.params, best.final, best.intermediates

Sources, in the order :func:`load_experiment` tries them:

* a ``.json`` or ``.csv`` file written by ``nnictl experiment export ID --filename F --type json|csv
  [--intermediate]`` (finished trials only: NNI exports trials that have a final result);
* an experiment folder (holding ``db/nni.sqlite``) or that ``nni.sqlite`` file itself;
* an experiment id: its folder is looked up in the list nnictl keeps under
  ``~/nni-experiments/.experiment`` (so a custom ``experimentWorkingDirectory`` is found), else
  ``~/nni-experiments/<id>``; ``experiments_dir`` overrides the look-up.

The database is read directly (read-only), so this works while the experiment runs, after
``nnictl stop``, and on a copy of the folder from another machine.

Which parameters a trial ran with: NNI 3.0's local training service hands queued parameter sets to
trials in the order the trials ask for them, so the parameter set NNI *records* for a trial (web
UI, REST ``trial-jobs``, ``export-data``) can be another concurrent trial's (NNI issue #5726).
The metrics a trial reports carry the parameter id it really received, and the trials of this
project also repeat their parameters in the final result (which keys: the caller's
``param_keys``, since each stage searches its own); both are preferred over the record.
``Trial.params_source`` says which one was used.
"""
from __future__ import annotations

import csv
import math
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from core.config import DuplicateKeyError, loads_json, parse_json, read_text
from core.errors import UserError
from core.files import check_input_file
from experiments.folder import db_path, experiment_dir, is_experiment_dir, is_experiment_id, not_an_experiment, not_found

FINISHED = ("SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED")


@dataclass
class Trial:
    """One trial of an experiment."""

    trial_id: str
    status: str                                  # SUCCEEDED, FAILED, USER_CANCELED (early-stopped), RUNNING...
    params: dict[str, Any]                       # the parameters it ran with (see params_source)
    final: float | None = None                   # the final result's ``default`` (None: no final result)
    intermediates: list[float] = field(default_factory=list)  # per-epoch results, in order
    invalid_intermediates: int = 0               # per-epoch results left out as not a (valid) number
    intermediate_epochs: list[int] = field(default_factory=list)  # the epoch of each of intermediates (see curve)
    final_metrics: dict[str, Any] = field(default_factory=dict)  # the whole final-result dict
    parameter_id: Any = None                     # NNI's id of ``params``
    params_source: str = "recorded"              # 'result', 'metrics', 'inferred' or 'recorded' (module doc)
    sequence_id: int | None = None               # "Trial No." in the web UI
    start_ms: int | None = None
    end_ms: int | None = None
    log_dir: str | None = None                   # the trial's folder (its run folder in this project)
    error: str | None = None                     # the trial's last ``error: ...`` line, when it failed so

    @property
    def epochs_run(self) -> int:
        """How many epochs the trial completed (one intermediate result per epoch, those left out as
        invalid included)."""
        return len(self.intermediates) + self.invalid_intermediates

    @property
    def curve(self) -> list[tuple[int, float]]:
        """Each intermediate result with its epoch (1 = the first): the epoch it was reported at, so
        results after one left out as invalid keep theirs (``intermediate_epochs``; when that does
        not match ``intermediates``, as for a trial built without it: 1, 2, ... in order)."""
        epochs = self.intermediate_epochs if len(self.intermediate_epochs) == len(self.intermediates) \
            else range(1, len(self.intermediates) + 1)
        return list(zip(epochs, self.intermediates))

    @property
    def early_stopped(self) -> bool:
        """Stopped by the assessor (NNI 3.0 shows early-stopped trials as USER_CANCELED)."""
        return self.status in ("EARLY_STOPPED", "USER_CANCELED") and self.final is None and bool(self.intermediates)


# --- decoding NNI's values ---------------------------------------------------------------------

def _loads_deep(value: Any) -> Any:
    """NNI stores metrics as JSON strings of JSON strings ('"0.5"', '"{\\"default\\": 0.5}"'); a
    string that is not JSON stays a string; an object repeating a key is an error."""
    while isinstance(value, str):
        try:
            value = parse_json(value)
        except DuplicateKeyError as exc:
            raise UserError(f"an experiment record repeats the key {exc.args[0]!r} in one object: {value[:200]}") \
                from None
        except (ValueError, RecursionError):
            return value
    return value


def _number(value: Any) -> float | None:
    value = _loads_deep(value)
    if isinstance(value, dict):
        value = value.get("default")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _per_epoch(values: Iterable[Any]) -> tuple[list[float], list[int], int]:
    """A trial's intermediate results in the order it reported them, one per epoch: the numbers
    among them, the epoch (1, 2, ...) of each, and how many are left out (not a number)."""
    kept, epochs, left_out = [], [], 0
    for epoch, value in enumerate(values, 1):
        number = _number(value)
        if number is None:
            left_out += 1
        else:
            kept.append(number)
            epochs.append(epoch)
    return kept, epochs, left_out


def _result_dict(value: Any) -> dict[str, Any]:
    value = _loads_deep(value)
    if isinstance(value, dict):
        return value
    number = _number(value)
    return {"default": number} if number is not None else {}


def _params_from_result(final_metrics: dict[str, Any], params: dict[str, Any],
                        keys: Sequence[str]) -> dict[str, Any] | None:
    """The parameters a trial of this project repeated in its final result (the ``keys`` its stage
    searches), merged over ``params``; ``None`` when the result does not hold them all."""
    if not keys or not all(k in final_metrics for k in keys):
        return None
    merged = dict(params)
    merged.update({k: final_metrics[k] for k in keys})
    return merged


def _last_error_line(log_dir: str | None) -> str | None:
    if not log_dir:
        return None
    stderr = Path(log_dir) / "trial.stderr"
    try:
        lines = stderr.read_text(errors="replace").splitlines()
    except OSError:
        return None
    errors = [line for line in lines if line.startswith("error: ")]
    return errors[-1] if errors else None


# --- the experiment database -------------------------------------------------------------------

def _query(db: str | os.PathLike, *statements: str) -> list[list[tuple]]:
    """The rows of each SQL statement, read from an experiment database opened read-only; a
    missing, unreadable or foreign file is a :class:`UserError`."""
    db = Path(db)
    if not db.is_file():
        raise UserError(f"experiment database {str(db)!r} does not exist")
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise UserError(f"experiment database {str(db)!r} cannot be opened ({exc})") from None
    try:
        return [con.execute(sql).fetchall() for sql in statements]
    except sqlite3.Error as exc:
        raise UserError(f"{str(db)!r} is not an NNI experiment database ({exc})") from None
    finally:
        con.close()


def trials_from_db(db: str | os.PathLike, param_keys: Sequence[str] = ()) -> list[Trial]:
    """Every trial recorded in an experiment's ``db/nni.sqlite``, in start order; ``param_keys``:
    the parameters its trials repeat in their final result (see the module docstring)."""
    events, metrics = _query(db, "SELECT timestamp, trialJobId, event, data, logPath, sequenceId "
                                 "FROM TrialJobEvent ORDER BY timestamp",
                             "SELECT timestamp, trialJobId, parameterId, type, sequence, data "
                             "FROM MetricData ORDER BY timestamp")
    return _assemble(events, metrics, param_keys)


def _assemble(events: Iterable[Sequence[Any]], metrics: Iterable[Sequence[Any]],
              param_keys: Sequence[str] = ()) -> list[Trial]:
    trials: dict[str, Trial] = {}
    params_by_id: dict[str, dict[str, Any]] = {}
    for ts, trial_id, event, data, log_path, seq in events:
        trial = trials.get(trial_id)
        if trial is None:
            trial = trials[trial_id] = Trial(trial_id=trial_id, status=event, params={})
        trial.status = event
        trial.log_dir = log_path or trial.log_dir
        if seq is not None:
            trial.sequence_id = seq
        if event == "RUNNING" and trial.start_ms is None:
            trial.start_ms = ts
        if event in FINISHED:
            trial.end_ms = ts
        record = _loads_deep(data) if data else None
        if isinstance(record, dict) and "parameters" in record:
            trial.params = dict(record.get("parameters") or {})
            trial.parameter_id = record.get("parameter_id")
            params_by_id[str(trial.parameter_id)] = trial.params
    periodical: dict[str, list[tuple[int, Any]]] = {}
    reported_id: dict[str, str] = {}
    for _, trial_id, parameter_id, kind, seq, data in metrics:
        trial = trials.setdefault(trial_id, Trial(trial_id=trial_id, status="UNKNOWN", params={}))
        if parameter_id is not None:
            reported_id[trial_id] = str(parameter_id)
        if kind == "PERIODICAL":     # one per epoch, a number or not (left out, still an epoch)
            periodical.setdefault(trial_id, []).append((seq, data))
        elif kind == "FINAL":
            trial.final_metrics = _result_dict(data)
            trial.final = _number(data)
    claimed = set(reported_id.values())
    recorded_ok = {str(t.parameter_id) for tid, t in trials.items() if tid not in reported_id}
    # trials that reported nothing but whose recorded parameters another trial reported with
    displaced = [t for tid, t in trials.items() if tid not in reported_id and str(t.parameter_id) in claimed]
    leftover = sorted(set(params_by_id) - claimed - (recorded_ok - claimed))
    for trial_id, trial in trials.items():
        trial.intermediates, trial.intermediate_epochs, trial.invalid_intermediates = _per_epoch(
            v for _, v in sorted(periodical.get(trial_id, []), key=lambda sv: sv[0]))
        real = reported_id.get(trial_id)
        if real is not None and real in params_by_id and real != str(trial.parameter_id):
            trial.params, trial.parameter_id = dict(params_by_id[real]), _loads_deep(real)
        if real is not None:
            trial.params_source = "metrics"
    if len(displaced) == 1 and len(leftover) == 1:  # the one parameter set nobody else ran
        displaced[0].params, displaced[0].parameter_id = dict(params_by_id[leftover[0]]), _loads_deep(leftover[0])
        displaced[0].params_source = "inferred"
    for trial in trials.values():
        from_result = _params_from_result(trial.final_metrics, trial.params, param_keys)
        if from_result is not None:
            trial.params, trial.params_source = from_result, "result"
        if trial.status == "FAILED":
            trial.error = _last_error_line(trial.log_dir)
    return sorted(trials.values(), key=lambda t: (t.sequence_id is None, t.sequence_id or 0, t.start_ms or 0))


# --- nnictl experiment export ------------------------------------------------------------------

def trials_from_export(path: str | os.PathLike, param_keys: Sequence[str] = ()) -> list[Trial]:
    """Trials from ``nnictl experiment export`` (``--type json`` or ``csv``)."""
    path = check_input_file(path, "export file")
    if path.suffix.lower() == ".csv":
        return _trials_from_csv(path)
    records = loads_json(read_text(path, "export file"), f"export file {str(path)!r} (pass a .csv for --type csv)")
    if not isinstance(records, list) or not all(isinstance(r, dict) and "parameter" in r for r in records):
        raise UserError(f"export file {str(path)!r} is not an `nnictl experiment export` list of "
                        "{parameter, value, trialJobId} records")
    trials = []
    for i, record in enumerate(records):
        final_metrics = _result_dict(record.get("value"))
        params = dict(record.get("parameter") or {})
        kept, epochs, left_out = _per_epoch(record.get("intermediate") or [])
        trial = Trial(trial_id=str(record.get("trialJobId", i)), status="SUCCEEDED", params=params,
                      final=_number(record.get("value")), final_metrics=final_metrics, intermediates=kept,
                      intermediate_epochs=epochs, invalid_intermediates=left_out, sequence_id=i)
        from_result = _params_from_result(final_metrics, params, param_keys)
        if from_result is not None:
            trial.params, trial.params_source = from_result, "result"
        trials.append(trial)
    return trials


def _csv_value(text: str) -> Any:
    try:
        return parse_json(text)
    except DuplicateKeyError as exc:
        raise UserError(f"an export table cell repeats the key {exc.args[0]!r} in one object: {text[:200]}") from None
    except (ValueError, RecursionError):
        return text


def _trials_from_csv(path: Path) -> list[Trial]:
    # nnictl writes {**parameters, **final-result dict, trialJobId}; our results repeat the
    # parameters, so those columns already hold the values the trial ran with.
    not_a_table = UserError(f"export file {str(path)!r} is not an `nnictl experiment export --type csv` table")
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (csv.Error, UnicodeDecodeError):
        raise not_a_table from None
    if not rows or "trialJobId" not in rows[0]:
        raise not_a_table
    trials = []
    for i, row in enumerate(rows):
        if None in row or None in row.values():  # a row with more or fewer cells than the header
            raise UserError(f"export file {str(path)!r}: row {i + 2} does not match the header")
        values = {k: _csv_value(v) for k, v in row.items() if k not in ("trialJobId", "intermediate") and v != ""}
        final = values.pop("default", values.pop("reward", None))
        final = float(final) if isinstance(final, (int, float)) else None
        intermediates = _csv_value(row.get("intermediate") or "[]")
        kept, epochs, left_out = _per_epoch(intermediates if isinstance(intermediates, list) else [])
        trials.append(Trial(trial_id=row["trialJobId"], status="SUCCEEDED", params=values, final=final,
                            final_metrics={"default": final, **values}, intermediates=kept,
                            intermediate_epochs=epochs, invalid_intermediates=left_out,
                            params_source="result", sequence_id=i))
    return trials


@dataclass
class Profile:
    """What an experiment was asked to run: NNI's ``ExperimentProfile`` (its config), latest revision."""

    experiment_id: str
    params: dict[str, Any]                       # the experiment config as NNI stored it (camelCase keys)
    start_ms: int | None = None
    end_ms: int | None = None
    exec_seconds: int | None = None              # NNI's execDuration

    @property
    def search_space(self) -> dict[str, Any]:
        return dict(self.params.get("searchSpace") or {})

    @property
    def max_trials(self) -> int | None:
        return self.params.get("maxTrialNumber")

    @property
    def trial_command(self) -> str:
        return str(self.params.get("trialCommand") or "")

    @property
    def trial_code_dir(self) -> str:
        return str(self.params.get("trialCodeDirectory") or "")

    def algorithm(self, role: str) -> str | None:
        """``tuner``, ``assessor`` or ``advisor``: its name (built-in) or class name (custom), or None."""
        algo = self.params.get(role)
        if not isinstance(algo, dict):
            return None
        return algo.get("name") or algo.get("className")


def read_profile(exp_dir: str | os.PathLike) -> Profile:
    """The latest ``ExperimentProfile`` row of the experiment in ``exp_dir``
    (:func:`experiments.folder.find_experiment`)."""
    db = db_path(exp_dir)
    rows, = _query(db, "SELECT params, id, execDuration, startTime, endTime FROM ExperimentProfile "
                       "ORDER BY revision DESC LIMIT 1")
    if not rows:
        raise UserError(f"{str(db)!r} holds no experiment profile")
    row = rows[0]
    params = _loads_deep(row[0])
    return Profile(experiment_id=str(row[1]), params=params if isinstance(params, dict) else {},
                   exec_seconds=row[2], start_ms=row[3], end_ms=row[4])


def load_experiment(source: str | os.PathLike, *, experiments_dir: str | os.PathLike | None = None,
                    param_keys: Sequence[str] = ()) -> list[Trial]:
    """All trials of an experiment: ``source`` is an id, a folder, an ``nni.sqlite`` or an export
    file; ``param_keys`` as in :func:`trials_from_db`."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() in (".json", ".csv"):
            return trials_from_export(path, param_keys)
        return trials_from_db(path, param_keys)
    if path.is_dir():
        if not is_experiment_dir(path):
            raise not_an_experiment(path)
        return trials_from_db(db_path(path), param_keys)
    if not is_experiment_id(source):
        raise not_found(source)
    return trials_from_db(db_path(experiment_dir(str(source), experiments_dir)), param_keys)


def accuracy_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid accuracy, or None when it is: a finite number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{value!r} is not a number"
    if not math.isfinite(value):
        return "not a finite number"
    if not 0 <= value <= 1:
        return "an accuracy lies in [0, 1]"
    return None


def rank_problem(trial: Trial) -> str | None:
    """Why ``trial`` may not be ranked, or None when it may: the one rule every reader ranks by
    (``hpo/results.py``, the exports, ``--top K`` retrains, ``--from-hpo``, the report). A trial
    is ranked only with a final result (its ``default``, a validation accuracy) that is a finite
    number in [0, 1], and only when it did not diverge (``diverged`` in its final result)."""
    if trial.final is None:
        return "no final result"
    if trial.final_metrics.get("diverged"):
        return "diverged"
    why = accuracy_problem(trial.final)
    return None if why is None else f"final result {trial.final!r} is invalid ({why})"


def ranked(trials: Sequence[Trial], mode: str = "maximize") -> list[Trial]:
    """The trials that may be ranked (:func:`rank_problem`), best first; ties go to the earlier trial."""
    if mode not in ("maximize", "minimize"):
        raise UserError(f"mode: unknown value {mode!r}; allowed: maximize, minimize")
    scored = [t for t in trials if rank_problem(t) is None]
    sign = -1 if mode == "maximize" else 1
    return sorted(scored, key=lambda t: (sign * t.final, t.sequence_id or 0))


def best_trial(trials: Sequence[Trial], mode: str = "maximize") -> Trial:
    """The first of :func:`ranked`; an error naming the count when no trial has a result yet."""
    good = ranked(trials, mode)
    if not good:
        raise UserError(f"none of the {len(trials)} trials has a final result (that did not diverge) yet")
    return good[0]
