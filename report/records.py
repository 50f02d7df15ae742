"""A run's records as a report reads them: which folder is a run folder, its config, metrics and
result read through :mod:`core.run_folder`'s readers (a damaged file is a :class:`UserError`), a
run folder as one :class:`RunData`, and the check that every number a report shows is a valid one
(:func:`number_problem`, :class:`Invalid`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.run_folder import (CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, RESULT_FILE, TRAINED_ARCH_FILE, read_config,
                             read_json_file, read_metric_lines, read_result)
from experiments.folder import is_experiment_dir
from experiments.reader import accuracy_problem
from experiments.top_k import ORIGIN_FILE


def is_run_folder(path: Path) -> bool:
    """A run folder (a retrain, a DARTS search, ``python -m core.train_model``), not an experiment's."""
    return path.is_dir() and not is_experiment_dir(path) and \
        any((path / name).exists() for name in (METRICS_FILE, CONFIG_FILE, RESULT_FILE, CHECKPOINT_FILE))


#: The longest an epoch can plausibly take (seconds): 100 days.
MAX_SECONDS = 100 * 24 * 3600.0


@dataclass(frozen=True)
class Invalid:
    """A number a run recorded that is not valid for what it measures (NaN, infinite, an accuracy of
    1e300...): shown as ``invalid (value)``, never drawn, never compared."""

    raw: Any

    def __str__(self) -> str:
        return f"invalid ({self.raw})"


def number_problem(key: str, value: Any) -> str | None:
    """Why ``value`` is not a valid ``key`` (``test_acc``, ``val_loss``, ``train_seconds``, ...), or
    None when it is: every number must be finite; accuracies lie in [0, 1] (the rule that decides
    which trials may be ranked: :func:`experiments.reader.accuracy_problem`), losses, times and counts
    are 0 or more (an epoch's time at most :data:`MAX_SECONDS`)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{value!r} is not a number"
    if not math.isfinite(value):
        return "not a finite number"
    if key.endswith("_acc") or key in ("default", "search_metric"):
        return accuracy_problem(value)
    if (key.endswith("_loss") or key in ("params", "epoch")) and value < 0:
        return "it cannot be negative"
    if key.endswith("seconds") and not 0 <= value <= MAX_SECONDS:
        return f"an epoch's time lies in [0, {MAX_SECONDS:g}] s"
    return None


#: The endings of the keys whose values are numbers in a run's records (``metrics.jsonl``,
#: ``result.json``, ``origin.json``, a protocol's selection): accuracies, losses, times, image
#: counts, a DARTS search's collapse counts; and :data:`NUMBER_KEYS`, whole keys.
NUMBER_ENDINGS = ("_acc", "_loss", "seconds", "_images", "_skip_connect", "_param_free")
NUMBER_KEYS = ("epoch", "default", "search_metric", "classes")


def is_number_key(key: str) -> bool:
    """Whether the value of ``key`` in a run's records is a number (so a string, a list or an
    object there is as invalid as NaN; under other keys only numbers are checked)."""
    return key.endswith(NUMBER_ENDINGS) or key in NUMBER_KEYS


def checked(record: dict[str, Any], where: str, problems: list[str] | None) -> dict[str, Any]:
    """``record`` with each invalid top-level number replaced by :class:`Invalid` (and said where,
    into ``problems``): a number that is not valid for its key, and anything but a number under a
    key that holds one (:func:`is_number_key`; ``"0.9"`` is not an accuracy)."""
    out = dict(record)
    for key, value in record.items():
        if value is None or (isinstance(value, (dict, list, str)) and not is_number_key(key)):
            continue
        why = number_problem(key, value)
        if why is not None:
            out[key] = Invalid(value)
            if problems is not None:
                problems.append(f"{where}: {key} = {value!r} is invalid ({why})")
    return out


def valid(value: Any) -> float | None:
    """A number to draw or compare: None for a missing or :class:`Invalid` one."""
    return None if value is None or isinstance(value, Invalid) else value


def trial_config(log_dir: str | Path | None) -> dict[str, Any]:
    """The resolved config of one of an experiment's trial folders, for a report over all of them:
    {} when there is no folder or no ``config.yaml``, and when that file is damaged (the report
    goes on without it: :func:`core.run_folder.read_config` says what is wrong when read alone)."""
    if not log_dir:
        return {}
    try:
        return read_config(log_dir) or {}
    except UserError:
        return {}


def run_metrics(run_dir: Path, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """A run folder's per-epoch metrics (:func:`core.run_folder.read_metric_lines`; none yet: an
    empty list), the lines without an ``epoch`` left out (not per-epoch metrics), invalid numbers
    marked as :class:`Invalid` (said where, into ``problems``)."""
    return [checked(record, f"{METRICS_FILE} line {i}", problems)
            for i, record in read_metric_lines(run_dir) or [] if "epoch" in record]


def run_result(run_dir: Path, problems: list[str] | None = None) -> dict[str, Any] | None:
    """A run folder's result (:func:`core.run_folder.read_result`), its invalid numbers marked."""
    result = read_result(run_dir)
    return None if result is None else checked(result, RESULT_FILE, problems)


def read_dict(path: Path, problems: list[str] | None = None) -> dict[str, Any] | None:
    """A JSON object file of a run or protocol folder (None when missing or not an object), its
    invalid numbers marked as :func:`run_metrics` marks them."""
    data = read_json_file(path)
    return checked(data, Path(path).name, problems) if isinstance(data, dict) else None


#: the cells of a DARTS architecture
CELLS = ("normal", "reduce")


@dataclass
class RunData:
    run_dir: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    result: dict[str, Any] | None
    origin: dict[str, Any] | None
    arch: dict[str, Any] | None = None          # arch.json (classic NAS), or the DARTS search's last derived arch
    extra: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)   # invalid numbers, and where they are

    @property
    def is_darts_search(self) -> bool:
        return any("edge_weights" in m for m in self.metrics)

    @property
    def kind(self) -> str:
        return "DARTS search" if self.is_darts_search else "training run (retrain)"


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder; an error when it holds no per-epoch metrics yet."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {str(run_dir)!r} does not exist")
    problems: list[str] = []
    metrics = run_metrics(run_dir, problems)
    if not metrics:
        raise UserError(f"{str(run_dir)!r}: no per-epoch metrics ({METRICS_FILE} is missing or empty): "
                        "not a run folder, or no epoch finished yet")
    origin = read_dict(run_dir / ORIGIN_FILE, problems) or read_dict(run_dir / "hpo_best.json", problems)
    arch = read_dict(run_dir / TRAINED_ARCH_FILE)
    data = RunData(run_dir, read_config(run_dir) or {}, metrics, run_result(run_dir, problems), origin, arch,
                   problems=problems)
    for m in metrics:
        weights = m.get("edge_weights")
        if weights is not None and not (isinstance(weights, dict) and all(
                isinstance(ops, dict) and all(number_problem("edge_weight", w) is None and 0 <= w <= 1
                                              for w in ops.values()) for ops in weights.values())):
            raise UserError(f"{str(run_dir / METRICS_FILE)!r}, epoch {m['epoch']}: edge_weights is not a mapping of "
                            "edge -> operation -> weight in [0, 1]")
    if data.is_darts_search:
        found = next(((i, m["arch"]) for i, m in reversed(list(enumerate(metrics))) if isinstance(m.get("arch"), dict)),
                     None)
        if found is not None:
            ops = {op for m in metrics if isinstance(m.get("edge_weights"), dict)
                   for edge in m["edge_weights"].values() if isinstance(edge, dict) for op in edge}
            data.arch = check_cells(found[1], ops - {"none"}, f"{str(run_dir / METRICS_FILE)!r}, epoch "
                                                              f"{metrics[found[0]]['epoch']}")
    return data


def check_cells(arch: dict[str, Any], ops: set[str], where: str) -> dict[str, Any]:
    """A DARTS search's derived cells as its metrics record them (``{cell: [[[op, input], [op, input]],
    ...]}``), checked: each node's inputs exist (the cell's two inputs and the nodes before it) and
    each operation is one the search weighed (``ops``; any name when none are recorded)."""
    for cell in CELLS:
        nodes = arch.get(cell)
        if nodes is None:
            continue
        if not isinstance(nodes, list):
            raise UserError(f"{where}: the derived {cell} cell is not a list of nodes")
        for i, node in enumerate(nodes):
            if not isinstance(node, list) or not all(isinstance(e, list) and len(e) == 2 for e in node):
                raise UserError(f"{where}: node {i} of the derived {cell} cell is not a list of [operation, input] pairs")
            for op, src in node:
                if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < i + 2:
                    raise UserError(f"{where}: node {i} of the derived {cell} cell takes input {src!r}, which does "
                                    f"not exist (its inputs are 0 to {i + 1}: the cell's two inputs and the nodes "
                                    "before it)")
                if not isinstance(op, str) or (ops and op not in ops):
                    raise UserError(f"{where}: node {i} of the derived {cell} cell uses the operation {op!r}, which the "
                                    f"search does not have (its operations: {', '.join(sorted(ops)) or 'not recorded'})")
    return arch
