"""Small pieces both report kinds share: Markdown tables, number formats, reading a run folder, and
the check that every number a report shows is a valid one (:func:`number_problem`)."""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

import yaml

from core.config import loads_json
from core.errors import UserError
from experiments.reader import accuracy_problem
from experiments.top_k import read_json_file
from core.run_folder import CONFIG_FILE, METRICS_FILE

def is_run_folder(path: Path) -> bool:
    """A run folder (a retrain, a DARTS search, ``python -m core.train_model``), not an experiment's."""
    return path.is_dir() and not (path / "db" / "nni.sqlite").is_file() and \
        any((path / name).exists() for name in (METRICS_FILE, CONFIG_FILE, "result.json", "checkpoint.pt"))


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


#: What a file name made from data may hold (:func:`file_part`), and the longest such part.
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_HASHED = re.compile(r"-[0-9a-f]{10}$")
MAX_NAME_PART = 60


def file_part(value: Any) -> str:
    """``value`` (data: a parameter name, an experiment id) as a part of a file name the report
    writes (``effect_<part>.png``, ``<part>_trials.csv``, the study's folder). A value of letters,
    digits, ``.``, ``_`` and ``-`` only (at most :data:`MAX_NAME_PART` of them, no dot first or
    last, not ending as a hash below) is itself; any other is cut down to that (each run of other
    characters one ``_``, dots off its ends: never ``.`` or ``..``) and followed by ``-`` and 10 hex
    digits of the value's SHA-256, so two values never share a name: ``a/b`` is ``a_b-<hash>``,
    ``a_b`` stays ``a_b``. The one function every file name built from data goes through."""
    text = str(value)
    safe = _UNSAFE_NAME.sub("_", text).strip(".")[:MAX_NAME_PART]
    if safe and safe == text and not _HASHED.search(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{safe}-{digest}" if safe else digest


class Md(str):
    """Markdown: text the report wrote itself, or data :func:`md` escaped; :func:`md`,
    :func:`fmt` and :func:`table` pass it on as it is."""


#: What data could carry into Markdown: backslash escapes, code spans, emphasis, raw HTML and
#: entities, table cells, math, strikethrough; ``](`` (every link and image has it: no other link
#: can form, as the report defines no link references and data never starts a line; ``[0, 1]``
#: stays as it is); ``_`` only where it can start or end emphasis (not inside a word such as
#: ``hpo_retrain``); line breaks (a table row, a list item, a heading ends at one).
_MD_SPECIAL = re.compile(r"[\\`*<>&|~$]|\](?=\()|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])|\r\n|\r|\n")
_MD_REPLACE = {"<": "&lt;", ">": "&gt;", "&": "&amp;", "\r\n": "↵", "\r": "↵", "\n": "↵"}
_CODE_BREAKERS = re.compile(r"[`|\r\n]")


def md(value: Any, code: bool = False) -> Md:
    """``value`` (anything that comes from data: a parameter, a name, a path, a message) as Markdown
    that shows it as it is, on one line, in a table cell, a heading, a list or a sentence: every
    character with a meaning in Markdown escaped (``<``, ``>``, ``&`` as entities, ``](`` as
    ``\\](``: no HTML, no link, no image), a line break shown as ↵. ``code``: as a code span
    (`` `value` ``) where that shows it as it is (no backtick, ``|`` or line break in it), else
    escaped text. :class:`Md` (the report's own Markdown) is returned as it is."""
    if isinstance(value, Md):
        return value
    text = value if isinstance(value, str) else str(value)
    if code and text.strip() and not _CODE_BREAKERS.search(text):
        return Md(f"`{text}`")
    return Md(_MD_SPECIAL.sub(lambda m: _MD_REPLACE.get(m[0], "\\" + m[0]), text))


def fmt(value: Any, digits: int = 4) -> Md:
    """A value as a table cell or in text shows it (data escaped with :func:`md`)."""
    if value is None:
        return Md("-")
    if isinstance(value, Md):
        return value
    if isinstance(value, Invalid):
        return Md(f"**{md(str(value))}**")
    if isinstance(value, bool):
        return Md("yes" if value else "no")
    if isinstance(value, float):
        if not math.isfinite(value):
            return Md(str(value))
        return Md(f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2e}")
    return md(value)


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    value = float(value)
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; every cell, the header's too, through :func:`fmt` (data is escaped,
    :class:`Md` kept)."""
    lines = ["| " + " | ".join(fmt(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def figure(name: str, caption: str) -> str:
    """A figure file ``name`` (a link its characters cannot break) with its ``caption`` (escaped)."""
    caption = md(caption)
    return f"![{caption}]({quote(name)})\n\n*{caption}*"


def read_config(run_dir: Path) -> dict[str, Any]:
    """A run folder's resolved ``config.yaml`` ({} when missing or unreadable)."""
    try:
        data = yaml.safe_load((Path(run_dir) / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def read_metrics(run_dir: Path, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """``metrics.jsonl``, one dict per epoch (a missing file: none yet); a half-written last line (a
    run writing it) is skipped, and lines without an ``epoch`` are not per-epoch metrics. Invalid
    numbers become :class:`Invalid` (said where, into ``problems``). A file that is not text, a line
    that is not a JSON object, an epoch that is not a whole number counting up: a
    :class:`UserError` naming the file and line."""
    path = Path(run_dir) / METRICS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UserError(f"{str(path)!r} cannot be read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{str(path)!r} line {line} is not text: not a metrics file, or a damaged one") from None
    lines = text.splitlines(keepends=True)
    out: list[dict[str, Any]] = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{METRICS_FILE} line {i}"
        try:
            record = loads_json(line, f"{str(path)!r} line {i}")
        except UserError:
            if i == len(lines) and not line.endswith("\n"):
                break                          # the line a running (or killed) run was writing
            raise
        if not isinstance(record, dict):
            raise UserError(f"{str(path)!r} line {i} is not a JSON object of one epoch's numbers")
        if "epoch" not in record:
            continue
        epoch = record["epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise UserError(f"{str(path)!r} line {i}: epoch {epoch!r} is not a whole number of 1 or more")
        if out and epoch <= out[-1]["epoch"]:
            raise UserError(f"{str(path)!r} line {i}: epoch {epoch} follows epoch {out[-1]['epoch']}; two runs wrote "
                            "into this folder, or it was edited")
        out.append(checked(record, where, problems))
    return out


def read_dict(path: Path, problems: list[str] | None = None) -> dict[str, Any] | None:
    """A JSON object file of a run folder (None when missing or not an object), its invalid numbers
    marked as :func:`read_metrics` marks them."""
    data = read_json_file(path)
    return checked(data, Path(path).name, problems) if isinstance(data, dict) else None
