"""Small pieces both report kinds share: Markdown tables, number formats, reading a run folder."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import yaml

from core.retrains import read_json_file
from core.run import CONFIG_FILE, METRICS_FILE


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2e}"
    return str(value).replace("|", "\\|")


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    value = float(value)
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def figure(name: str, caption: str) -> str:
    return f"![{caption}]({name})\n\n*{caption}*"


def read_config(run_dir: Path) -> dict[str, Any]:
    """A run folder's resolved ``config.yaml`` ({} when missing or unreadable)."""
    try:
        data = yaml.safe_load((Path(run_dir) / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl``, one dict per epoch; a half-written last line (a run writing it) is skipped."""
    try:
        text = (Path(run_dir) / METRICS_FILE).read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "epoch" in record:
            out.append(record)
    return out


def read_dict(path: Path) -> dict[str, Any] | None:
    data = read_json_file(path)
    return data if isinstance(data, dict) else None
