"""One folder per run or trial: resolved config, log, per-epoch metrics (JSON lines), checkpoint,
result; the names of its files and of a protocol folder's, and the one reader of each file.

The readers share one rule: a missing file is ``None``; a file that is there but damaged (cannot be
read, is not what its format says) is a :class:`UserError` naming the file and what is wrong. A
reader that must go on past one damaged folder (a report over many) catches that error and says
the folder was left out."""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import yaml

from core.files import atomic_write_text, open_no_follow, write_error
from core.config import loads_json, read_json, to_dict, write_yaml
from core.errors import UserError, first_line

CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
RESULT_FILE = "result.json"
#: the architecture a search exports (a DARTS search's run folder; also the protocol folder's winner)
ARCH_FILE = "final_arch.json"
#: the architecture of the fixed network a run trained (classic NAS, a DARTS retrain), as it trained it
TRAINED_ARCH_FILE = "arch.json"

# A protocol folder: a sequence of trainings (searches, retrains) resumable step by step.
#: its record of the steps done (steps, their run folders, the figures each step keeps)
PROTOCOL_FILE = "protocol.json"
#: what a protocol selected and why (a DARTS protocol: the architecture chosen by validation)
SELECTION_FILE = "selection.json"
#: the lock a folder holds while one command works in it
LOCK_FILE = ".lock"


class Run:
    """A run folder. Create it only once the inputs are known to be good, so that a mistake in
    the command line leaves nothing half-written behind."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UserError(f"run folder {str(self.dir)!r}: a file stands where the folder should be") from None

    @classmethod
    def create(cls, out_dir: str | Path, name: str, config: Any) -> "Run":
        """A new folder ``out_dir/name-YYYYmmdd-HHMMSS[-k]`` holding ``config.yaml``. Taking the
        name is atomic (``mkdir`` fails on an existing folder, and the next suffix is tried), so two
        runs started at the same instant never share a folder."""
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise UserError(f"out_dir: {str(out)!r} is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
        base = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, k = base, 1
        while True:
            try:
                path.mkdir()
                break
            except FileExistsError:
                path, k = Path(f"{base}-{k}"), k + 1
        run = cls(path)
        run.write_config(config)
        return run

    def remove_temp_files(self) -> list[Path]:
        """Delete what an atomic write killed half-way left (``.<name>.*.tmp``); returns them."""
        left = sorted(p for p in self.dir.glob(".*.*.tmp") if p.is_file() and not p.is_symlink())
        for path in left:
            path.unlink(missing_ok=True)
        return left

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / CHECKPOINT_FILE

    def write_config(self, config: Any) -> None:
        write_yaml(self.dir / CONFIG_FILE, to_dict(config) if not isinstance(config, dict) else config)

    def log(self, message: str) -> None:
        """Print ``message`` and append it, time-stamped, to the run's log."""
        print(message, flush=True)
        append_text(self.dir / LOG_FILE, f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        append_text(self.dir / METRICS_FILE, to_json(metrics) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """The metrics lines written so far (:func:`read_metrics`; none yet: an empty list)."""
        return read_metrics(self.dir) or []

    def truncate_metrics(self, epochs_done: int) -> None:
        """Drop metric lines after epoch ``epochs_done`` (1-based), written by a run killed between
        its metrics and its checkpoint."""
        kept = [m for m in self.read_metrics() if m.get("epoch", 0) <= epochs_done]
        atomic_write_text(self.dir / METRICS_FILE, "".join(to_json(m) + "\n" for m in kept))


# --- the readers ----------------------------------------------------------------------------------

def read_json_file(path: str | os.PathLike, what: str | None = None) -> Any:
    """A JSON file's content, or None when there is no such file; a file that is there but cannot be
    read, is not JSON or repeats a key is a :class:`UserError` naming it (``what``, default its name)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    return read_json(path, what or path.name)


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """A JSON object file of a run or protocol folder (its result, a protocol's record): None when
    missing; one that cannot be read, is not JSON or is not a JSON object is a :class:`UserError`."""
    data = read_json_file(path)
    if data is not None and not isinstance(data, dict):
        raise UserError(f"{str(path)!r} is not a JSON object; the folder is damaged")
    return data


def write_record(path: str | os.PathLike, record: Any, indent: int = 1) -> None:
    """Write a JSON record of a run or protocol folder (:func:`read_record` reads it back) atomically:
    a kill leaves the old record or the new one, never half of one."""
    atomic_write_text(Path(path), json.dumps(record, indent=indent) + "\n")


def read_result(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A run folder's ``result.json`` (written when the run finished): None when the run has not
    finished; a damaged one is a :class:`UserError` (:func:`read_record`)."""
    return read_record(Path(run_dir) / RESULT_FILE)


def read_config(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A run folder's resolved ``config.yaml``: None when it holds none; one that cannot be read, is
    not YAML or is not a mapping of field: value is a :class:`UserError`."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"{str(path)!r} cannot be read ({first_line(exc)}); "
                        "the run folder is damaged") from None
    if not isinstance(data, dict):
        raise UserError(f"{str(path)!r} is not a config (a mapping of field: value); the run folder is damaged")
    return data


def read_metric_lines(run_dir: str | os.PathLike) -> list[tuple[int, dict[str, Any]]] | None:
    """A run folder's ``metrics.jsonl`` as (line number, record) pairs: None when it holds none.
    A last line cut off by a kill (no line end, not JSON) is left out, and so are blank lines. A
    file that cannot be read or is not text, a line that is not a JSON object, an ``epoch`` that is
    not a whole number of 1 or more counting up: a :class:`UserError` naming the file and line."""
    path = Path(run_dir) / METRICS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"{str(path)!r} cannot be read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{str(path)!r} line {line} is not text: not a metrics file, or a damaged one") from None
    lines = text.splitlines(keepends=True)
    out: list[tuple[int, dict[str, Any]]] = []
    last_epoch = 0
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = loads_json(line, f"{str(path)!r} line {i}")
        except UserError:
            if i == len(lines) and not line.endswith("\n"):
                break                          # the line a running (or killed) run was writing
            raise
        if not isinstance(record, dict):
            raise UserError(f"{str(path)!r} line {i} is not a JSON object of one epoch's numbers")
        if "epoch" in record:
            epoch = record["epoch"]
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
                raise UserError(f"{str(path)!r} line {i}: epoch {epoch!r} is not a whole number of 1 or more")
            if epoch <= last_epoch:
                raise UserError(f"{str(path)!r} line {i}: epoch {epoch} follows epoch {last_epoch}; two runs wrote "
                                "into this folder, or it was edited")
            last_epoch = epoch
        out.append((i, record))
    return out


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]] | None:
    """A run folder's ``metrics.jsonl``, one dict per line (:func:`read_metric_lines`, its rule)."""
    lines = read_metric_lines(run_dir)
    return None if lines is None else [record for _, record in lines]


def append_text(path: Path, text: str) -> None:
    """Append ``text`` to a file of a run folder, whole or not at all, never through a symbolic link
    (a link there could point at anyone's file: it is refused with one line, nothing written). A
    write that fails (no space left, an I/O error) cuts the file back to what it held before, and
    the error names ``path`` (:func:`core.files.write_error`)."""
    fd = open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        size = os.fstat(fd).st_size
        data = memoryview(text.encode())
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)      # no half line left for the next append to continue
            raise write_error(exc, path) from None
    finally:
        os.close(fd)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(value: Any, indent: int | None = None) -> str:
    """Strict JSON: a NaN or infinite number (a diverged loss, say) is written as ``null``, never as
    the bare ``NaN`` that JSON readers reject."""
    return json.dumps(_finite(value), indent=indent, allow_nan=False)


def format_metrics(metrics: dict[str, Any]) -> str:
    """One log line of the scalar metrics (architectures and edge weights go to metrics.jsonl)."""
    parts = []
    for key, value in metrics.items():
        if isinstance(value, (dict, list)):
            continue
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}" if math.isfinite(value) else f"{key}={value}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


# --- a protocol folder: the record of its steps and what it selected ----------------------------------

#: a protocol step's run folder, by kind ("search", "select") and seed: ``search-seed0/``
SEARCH_STEP, SELECT_STEP = "search", "select"


def step_dir_name(kind: str, seed: Any) -> str:
    """The name of a protocol step's run folder: ``<kind>-seed<seed>``."""
    return f"{kind}-seed{seed}"


def read_protocol(folder: str | Path) -> dict[str, Any] | None:
    """A protocol folder's record (:data:`PROTOCOL_FILE`: ``settings``, the steps' outcomes under
    ``steps``); None when the folder holds none."""
    path = Path(folder) / PROTOCOL_FILE
    record = read_record(path)
    if record is not None and not isinstance(record.get("settings"), dict):
        raise UserError(f"{str(path)!r} is not a protocol record; the protocol folder is damaged")
    return record


def write_protocol(folder: str | Path, record: dict[str, Any]) -> None:
    """Write a protocol folder's record, atomically."""
    write_record(Path(folder) / PROTOCOL_FILE, record)


def read_selection(folder: str | Path) -> dict[str, Any] | None:
    """What a protocol selected (:data:`SELECTION_FILE`); None before it has selected."""
    return read_record(Path(folder) / SELECTION_FILE)


def write_selection(folder: str | Path, selection: dict[str, Any]) -> None:
    """Write what a protocol selected, atomically."""
    write_record(Path(folder) / SELECTION_FILE, selection)
