"""Numbers in words that users read: ``count(1, "epoch")`` is '1 epoch', ``count(3, "epoch")`` '3 epochs'."""
from __future__ import annotations

from typing import Any, Callable


def count(n: int | float, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, in the plural unless ``n`` is 1 (``plural`` for an irregular one);
    thousands separated by commas."""
    number = f"{n:,}" if isinstance(n, int) and not isinstance(n, bool) else f"{n:g}"
    return f"{number} {noun if n == 1 else plural or noun + 's'}"


def count_of(value: Any, noun: str, show: Callable[[Any], str] = str) -> str:
    """:func:`count` of a value read from a record, which may not be a number (missing, damaged):
    then ``show(value)`` and the plural noun."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return count(value, noun)
    return f"{show(value)} {noun}s"
