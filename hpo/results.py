"""Read an NNI experiment's trials without the web UI, and pick the best one.

>>> trials = load_experiment("k3x9w2ab")          # an experiment id, folder, nni.sqlite or export file
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
project also repeat their parameters in the final result; both are preferred over the record.
``Trial.params_source`` says which one was used.

Command line: ``python hpo/results.py ID_OR_PATH [--top 10] [--epochs N]`` prints the trials, the
best one and the trial-epochs run.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from core.errors import UserError, cli_main

#: keys of a final-result dict that repeat the parameters the trial trained with (hpo/trial.py)
PARAM_KEYS_IN_RESULT = ("model", "optimizer", "lr")
BUDGET_KEY = "TRIAL_BUDGET"
FINISHED = ("SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED")


@dataclass
class Trial:
    """One trial of an experiment."""

    trial_id: str
    status: str                                  # SUCCEEDED, FAILED, USER_CANCELED (early-stopped), RUNNING...
    params: dict[str, Any]                       # the parameters it ran with (see params_source)
    final: float | None = None                   # the final result's ``default`` (None: no final result)
    intermediates: list[float] = field(default_factory=list)  # per-epoch results, in order
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
        """How many epochs the trial completed (one intermediate result per epoch)."""
        return len(self.intermediates)

    @property
    def early_stopped(self) -> bool:
        """Stopped by the assessor (NNI 3.0 shows early-stopped trials as USER_CANCELED)."""
        return self.status in ("EARLY_STOPPED", "USER_CANCELED") and self.final is None and bool(self.intermediates)


# --- decoding NNI's values ---------------------------------------------------------------------

def _loads_deep(value: Any) -> Any:
    """NNI stores metrics as JSON strings of JSON strings ('"0.5"', '"{\\"default\\": 0.5}"')."""
    while isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return value


def _number(value: Any) -> float | None:
    value = _loads_deep(value)
    if isinstance(value, dict):
        value = value.get("default")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _result_dict(value: Any) -> dict[str, Any]:
    value = _loads_deep(value)
    if isinstance(value, dict):
        return value
    number = _number(value)
    return {"default": number} if number is not None else {}


def _params_from_result(final_metrics: dict[str, Any], params: dict[str, Any]) -> dict[str, Any] | None:
    """The parameters a trial of this project repeated in its final result, merged over ``params``."""
    if not all(k in final_metrics for k in PARAM_KEYS_IN_RESULT):
        return None
    merged = dict(params)
    merged.update({k: final_metrics[k] for k in PARAM_KEYS_IN_RESULT})
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

def _connect(db: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise UserError(f"experiment database {str(db)!r} cannot be opened ({exc})") from None


def trials_from_db(db: str | os.PathLike) -> list[Trial]:
    """Every trial recorded in an experiment's ``db/nni.sqlite``, in start order."""
    db = Path(db)
    if not db.is_file():
        raise UserError(f"experiment database {str(db)!r} does not exist")
    con = _connect(db)
    try:
        events = con.execute("SELECT timestamp, trialJobId, event, data, logPath, sequenceId "
                             "FROM TrialJobEvent ORDER BY timestamp").fetchall()
        metrics = con.execute("SELECT timestamp, trialJobId, parameterId, type, sequence, data "
                              "FROM MetricData ORDER BY timestamp").fetchall()
    except sqlite3.Error as exc:
        raise UserError(f"{str(db)!r} is not an NNI experiment database ({exc})") from None
    finally:
        con.close()
    return _assemble(events, metrics)


def _assemble(events: Iterable[Sequence[Any]], metrics: Iterable[Sequence[Any]]) -> list[Trial]:
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
    periodical: dict[str, list[tuple[int, float]]] = {}
    reported_id: dict[str, str] = {}
    for _, trial_id, parameter_id, kind, seq, data in metrics:
        trial = trials.setdefault(trial_id, Trial(trial_id=trial_id, status="UNKNOWN", params={}))
        if parameter_id is not None:
            reported_id[trial_id] = str(parameter_id)
        if kind == "PERIODICAL":
            value = _number(data)
            if value is not None:
                periodical.setdefault(trial_id, []).append((seq, value))
        elif kind == "FINAL":
            trial.final_metrics = _result_dict(data)
            trial.final = _number(data)
    claimed = set(reported_id.values())
    recorded_ok = {str(t.parameter_id) for tid, t in trials.items() if tid not in reported_id}
    # trials that reported nothing but whose recorded parameters another trial reported with
    displaced = [t for tid, t in trials.items() if tid not in reported_id and str(t.parameter_id) in claimed]
    leftover = sorted(set(params_by_id) - claimed - (recorded_ok - claimed))
    for trial_id, trial in trials.items():
        trial.intermediates = [v for _, v in sorted(periodical.get(trial_id, []), key=lambda sv: sv[0])]
        real = reported_id.get(trial_id)
        if real is not None and real in params_by_id and real != str(trial.parameter_id):
            trial.params, trial.parameter_id = dict(params_by_id[real]), _loads_deep(real)
        if real is not None:
            trial.params_source = "metrics"
    if len(displaced) == 1 and len(leftover) == 1:  # the one parameter set nobody else ran
        displaced[0].params, displaced[0].parameter_id = dict(params_by_id[leftover[0]]), _loads_deep(leftover[0])
        displaced[0].params_source = "inferred"
    for trial in trials.values():
        from_result = _params_from_result(trial.final_metrics, trial.params)
        if from_result is not None:
            trial.params, trial.params_source = from_result, "result"
        if trial.status == "FAILED":
            trial.error = _last_error_line(trial.log_dir)
    return sorted(trials.values(), key=lambda t: (t.sequence_id is None, t.sequence_id or 0, t.start_ms or 0))


# --- nnictl experiment export ------------------------------------------------------------------

def trials_from_export(path: str | os.PathLike) -> list[Trial]:
    """Trials from ``nnictl experiment export`` (``--type json`` or ``csv``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"export file {str(path)!r} does not exist")
    if path.suffix.lower() == ".csv":
        return _trials_from_csv(path)
    try:
        records = json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"export file {str(path)!r} is not JSON ({exc}); pass a .csv for --type csv") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "parameter" in r for r in records):
        raise UserError(f"export file {str(path)!r} is not an `nnictl experiment export` list of "
                        "{parameter, value, trialJobId} records")
    trials = []
    for i, record in enumerate(records):
        final_metrics = _result_dict(record.get("value"))
        params = dict(record.get("parameter") or {})
        trial = Trial(trial_id=str(record.get("trialJobId", i)), status="SUCCEEDED", params=params,
                      final=_number(record.get("value")), final_metrics=final_metrics,
                      intermediates=[v for v in (_number(x) for x in record.get("intermediate", [])) if v is not None],
                      sequence_id=i)
        from_result = _params_from_result(final_metrics, params)
        if from_result is not None:
            trial.params, trial.params_source = from_result, "result"
        trials.append(trial)
    return trials


def _csv_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _trials_from_csv(path: Path) -> list[Trial]:
    # nnictl writes {**parameters, **final-result dict, trialJobId}; our results repeat the
    # parameters, so those columns already hold the values the trial ran with.
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "trialJobId" not in rows[0]:
        raise UserError(f"export file {str(path)!r} is not an `nnictl experiment export --type csv` table")
    trials = []
    for i, row in enumerate(rows):
        values = {k: _csv_value(v) for k, v in row.items() if k not in ("trialJobId", "intermediate") and v != ""}
        final = values.pop("default", values.pop("reward", None))
        final = float(final) if isinstance(final, (int, float)) else None
        intermediates = _csv_value(row.get("intermediate") or "[]")
        trials.append(Trial(trial_id=row["trialJobId"], status="SUCCEEDED", params=values, final=final,
                            final_metrics={"default": final, **values},
                            intermediates=[float(v) for v in intermediates] if isinstance(intermediates, list) else [],
                            params_source="result", sequence_id=i))
    return trials


# --- finding an experiment ---------------------------------------------------------------------

def experiment_dir(exp_id: str, experiments_dir: str | os.PathLike | None = None) -> Path:
    """The folder of experiment ``exp_id`` (see the module docstring for the look-up)."""
    candidates: list[Path] = []
    if experiments_dir is not None:
        candidates.append(Path(experiments_dir).expanduser() / exp_id)
    else:
        home = Path.home() / "nni-experiments"
        registry = home / ".experiment"
        if registry.is_file():
            try:
                entry = json.loads(registry.read_text()).get(exp_id) or {}
            except ValueError:
                entry = {}
            if entry.get("logDir"):
                log_dir = Path(entry["logDir"])
                candidates += [log_dir / exp_id, log_dir]
        candidates.append(home / exp_id)
    for candidate in candidates:
        if (candidate / "db" / "nni.sqlite").is_file():
            return candidate
    raise UserError(f"experiment {exp_id!r}: no folder with db/nni.sqlite found (looked in "
                    f"{', '.join(str(c) for c in candidates)}); pass the experiment folder or an export file")


def load_experiment(source: str | os.PathLike, *, experiments_dir: str | os.PathLike | None = None) -> list[Trial]:
    """All trials of an experiment: ``source`` is an id, a folder, an ``nni.sqlite`` or an export file."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() in (".json", ".csv"):
            return trials_from_export(path)
        return trials_from_db(path)
    if path.is_dir():
        db = path / "db" / "nni.sqlite"
        if not db.is_file():
            raise UserError(f"{str(path)!r} is not an NNI experiment folder (no db/nni.sqlite)")
        return trials_from_db(db)
    if os.sep in str(source) or not str(source).isalnum():
        raise UserError(f"experiment {str(source)!r}: no such file or folder, and not an experiment id")
    return trials_from_db(experiment_dir(str(source), experiments_dir) / "db" / "nni.sqlite")


def best_trial(trials: Sequence[Trial], mode: str = "maximize") -> Trial:
    """The trial with the best final result (``default``); ties go to the earlier trial."""
    if mode not in ("maximize", "minimize"):
        raise UserError(f"mode: unknown value {mode!r}; allowed: maximize, minimize")
    scored = [t for t in trials if t.final is not None and math.isfinite(t.final)]
    if not scored:
        raise UserError(f"no trial of the {len(trials)} has a final result yet")
    sign = 1 if mode == "maximize" else -1
    return max(scored, key=lambda t: (sign * t.final, -(t.sequence_id or 0)))


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

def format_table(trials: Sequence[Trial], top: int = 0) -> str:
    rows = sorted(trials, key=lambda t: -(t.final if t.final is not None else -math.inf)) if top else list(trials)
    rows = rows[:top] if top else rows
    lines = [f"{'trial':8} {'status':14} {'final':>7} {'epochs':>6}  params"]
    for t in rows:
        final = f"{t.final:.4f}" if t.final is not None else "-"
        extra = f"  [{t.error}]" if t.error else ""
        lines.append(f"{t.trial_id:8} {t.status:14} {final:>7} {t.epochs_run:>6}  "
                     f"{json.dumps(t.params, sort_keys=True)}{extra}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python hpo/results.py", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="experiment id, experiment folder, nni.sqlite, or an nnictl export .json/.csv")
    parser.add_argument("--experiments-dir", help="folder holding <id>/ (default: found via ~/nni-experiments)")
    parser.add_argument("--top", type=int, default=0, help="list only the N best trials (0 = all, in start order)")
    parser.add_argument("--epochs", type=int, default=0,
                        help="epochs a trial runs when not stopped early (Hyperband: R): print trial-epochs saved")
    parser.add_argument("--mode", default="maximize", help="maximize (default) or minimize")
    parser.add_argument("--json", action="store_true", help="print the best trial as JSON only")
    return parser


@cli_main
def main(argv: Sequence[str] | None = None) -> Trial:
    args = build_parser().parse_args(argv)
    trials = load_experiment(args.source, experiments_dir=args.experiments_dir)
    best = best_trial(trials, args.mode)
    if args.json:
        print(json.dumps({"trial_id": best.trial_id, "params": best.params, "final": best.final,
                          "final_metrics": best.final_metrics, "intermediates": best.intermediates}))
        return best
    print(format_table(trials, args.top))
    print(f"\nbest: trial {best.trial_id} final {best.final:.4f} params {json.dumps(best.params, sort_keys=True)}"
          + (f" test_acc {best.final_metrics['test_acc']:.4f}" if "test_acc" in best.final_metrics else ""))
    if args.epochs:
        if args.epochs < 1:
            raise UserError(f"--epochs: {args.epochs} is not allowed; it must be at least 1")
        print("trial-epochs: " + json.dumps(epoch_budget(trials, args.epochs)))
    return best


if __name__ == "__main__":
    main()
