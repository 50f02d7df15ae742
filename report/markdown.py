"""The text and the file names a report writes: Markdown that shows data as it is (:func:`md`),
table cells and numbers (:func:`fmt`, :func:`table`, :func:`seconds`), figures (:func:`figure`) and
parts of file names made from data (:func:`file_part`)."""
from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Sequence
from urllib.parse import quote

from report.records import Invalid


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
