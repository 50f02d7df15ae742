"""Chance: the accuracy of a classifier that learned nothing, and the rule that calls an accuracy
"at chance". Shared by the reports (:mod:`report.stats`) and ``hpo/results.py``, which may not
import each other; nothing here imports torch.

A network that predicts one class for every image, or guesses, scores about 1 / (number of
classes) on a balanced split: 0.1 on CIFAR-10. An accuracy measured on ``n`` images is **at
chance** when it lies no more than :data:`CHANCE_SE` standard errors above that level, the
standard error being the one a guess would have (``sqrt(p0 (1 - p0) / n)``, ``p0`` = 1 / classes);
an accuracy below chance learned nothing either. At 1,000 validation images and 10 classes that is
every accuracy up to 0.119.

How many classes a run had: runs record it (``classes`` in ``result.json`` and in an NNI trial's
final result, :func:`classes_of`); runs written before they did are read by their config's
``data``: CIFAR-10 and the synthetic ``fake`` data have 10 classes; an image folder's count is
then unknown, and so is its chance level.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

#: The key under which runs record their number of classes (result.json, NNI's final result).
CLASSES_KEY = "classes"
CIFAR10_CLASSES = 10
#: The synthetic data set's classes (``--data fake``; core.data draws them).
FAKE_CLASSES = 10
#: An accuracy at most this many standard errors above chance is "at chance".
CHANCE_SE = 2.0


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 2 else None


def classes_of(config: Mapping[str, Any] | None, *records: Mapping[str, Any] | None) -> int | None:
    """How many classes a run's data had: the first of ``records`` (its result, its final result)
    that says so, else what its ``config``'s ``data`` implies; None when unknown."""
    for record in records:
        if isinstance(record, Mapping):
            n = _count(record.get(CLASSES_KEY))
            if n is not None:
                return n
    data = (config or {}).get("data")
    return {"cifar10": CIFAR10_CLASSES, "fake": FAKE_CLASSES}.get(data) if isinstance(data, str) else None


def chance_level(classes: int | None) -> float | None:
    """1 / classes (None when the number of classes is unknown)."""
    return 1.0 / classes if _count(classes) else None


def chance_se(classes: int | None, n: int | None) -> float | None:
    """The standard error of a guess's accuracy on ``n`` images."""
    p0 = chance_level(classes)
    if p0 is None or not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return None
    return math.sqrt(p0 * (1 - p0) / n)


def chance_limit(classes: int | None, n: int | None) -> float | None:
    """The highest accuracy that is still at chance on ``n`` images (None: unknown)."""
    se = chance_se(classes, n)
    return None if se is None else chance_level(classes) + CHANCE_SE * se


def at_chance(acc: float | None, n: int | None, classes: int | None) -> bool | None:
    """Whether ``acc`` (measured on ``n`` images of a ``classes``-class problem) is at chance: no
    more than :data:`CHANCE_SE` standard errors above 1 / classes. None when the accuracy, the image
    count or the number of classes is unknown."""
    limit = chance_limit(classes, n)
    if acc is None or limit is None or isinstance(acc, bool) or not math.isfinite(acc):
        return None
    return acc <= limit + 1e-12


def chance_text(classes: int | None) -> str:
    """``chance 0.1000 (1 / 10 classes)``, or that it is unknown."""
    p0 = chance_level(classes)
    return f"chance {p0:.4f} (1 / {classes} classes)" if p0 is not None else "chance unknown (number of classes " \
        "not recorded)"
