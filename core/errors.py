"""User-facing errors and the one place that turns them into a clean exit."""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A mistake in what the user asked for (a bad option, a missing file, a malformed config).

    Command-line entry points print it as one line, without a traceback, and exit with
    :attr:`exit_code` (2).
    """

    exit_code = 2


class Interrupted(UserError):
    """The user stopped a run (Ctrl-C); the message says where it can be resumed from."""

    exit_code = 130  # the shell's convention for SIGINT


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when the message is empty."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def cli_main(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a command's ``main``: a :class:`UserError` becomes ``error: <message>`` and its
    exit code; Ctrl-C anywhere else becomes one line and exit 130, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            raise SystemExit(Interrupted.exit_code) from None

    return wrapper
