"""User-facing errors and the one place that turns them into a clean exit."""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A mistake in what the user asked for (a bad option, a missing file, a malformed config).

    Command-line entry points print it as one line, without a traceback, and exit with status 2.
    """


def cli_main(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a command's ``main``: a :class:`UserError` becomes ``error: <message>`` and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
