"""One folder per run or trial: resolved config, log, per-epoch metrics (JSON lines), checkpoint."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from core.config import to_dict, write_yaml

CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"


class Run:
    """A run folder. Create it only once the inputs are known to be good, so that a mistake in
    the command line leaves nothing half-written behind."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def create(cls, out_dir: str | Path, name: str, config: Any) -> "Run":
        """A new folder ``out_dir/name-YYYYmmdd-HHMMSS[-k]`` holding ``config.yaml``."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(out_dir) / f"{name}-{stamp}"
        path, k = base, 1
        while path.exists():
            path, k = Path(f"{base}-{k}"), k + 1
        run = cls(path)
        run.write_config(config)
        return run

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / CHECKPOINT_FILE

    def write_config(self, config: Any) -> None:
        write_yaml(self.dir / CONFIG_FILE, to_dict(config) if not isinstance(config, dict) else config)

    def log(self, message: str) -> None:
        """Print ``message`` and append it, time-stamped, to the run's log."""
        print(message, flush=True)
        with open(self.dir / LOG_FILE, "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        with open(self.dir / METRICS_FILE, "a") as fh:
            fh.write(json.dumps(metrics) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.dir / METRICS_FILE
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, epochs_done: int) -> None:
        """Drop metric lines after epoch ``epochs_done`` (1-based), written by a run killed between
        its metrics and its checkpoint."""
        kept = [m for m in self.read_metrics() if m.get("epoch", 0) <= epochs_done]
        from core.checkpoint import atomic_write_text

        atomic_write_text(self.dir / METRICS_FILE, "".join(json.dumps(m) + "\n" for m in kept))


def format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}" if math.isfinite(value) else f"{key}={value}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)

