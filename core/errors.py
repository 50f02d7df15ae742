"""User-facing errors and the one place that turns them into a clean exit."""
from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Callable, TypeVar

from core.launch import quiet_other_ranks, succeeded

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


class ArgumentParser(argparse.ArgumentParser):
    """The argument parser of every command: a bad flag or value is a :class:`UserError`, so that
    :func:`cli_main` prints it as the one ``error:`` line of any other mistake (exit 2), not
    argparse's usage block followed by its message. ``--help`` still prints the usage."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


class StoppedByNni(Interrupted):
    """NNI stopped this trial (its assessor's early stop, or the experiment's stop or a cancel: NNI 3.0
    sends the trial SIGINT). Not a mistake and not for the user to continue (NNI runs the trials):
    one plain line, without ``error:`` and without a ``--resume`` to run."""


def under_nni() -> bool:
    """Whether NNI started this process (it sets ``NNI_PLATFORM`` for its trials)."""
    return bool(os.environ.get("NNI_PLATFORM"))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when the message is empty."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's out-of-memory error (read without importing torch: a command that
    never imported it cannot have raised it)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.OutOfMemoryError)


#: What gloo says when a collective loses a peer that exited (NCCL raises ``DistError``s).
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def _peer_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another torchrun rank is gone (read without
    importing torch, as :func:`_out_of_memory`)."""
    dist = sys.modules.get("torch.distributed")
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    return any(words in str(exc) for words in PEER_GONE)


def cli_main(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate a command's ``main``: a :class:`UserError` becomes ``error: <message>`` and its
    exit code; so does an ``OSError`` about a file (``error: Permission denied: '/x'``, exit 2), and
    torch's out-of-memory error wherever it is raised (exit 2, with what to try);
    Ctrl-C becomes one line (where to resume, when a run was interrupted), not a traceback.

    A process stopped by a real SIGINT (Ctrl-C, or NNI's remote training service cancelling a
    trial) then dies by SIGINT, as Python itself would, so that whoever started it sees an
    interrupted process rather than a failed one; an interruption raised in-process exits 130.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        signalled = []

        def on_sigint(signum, frame):
            signalled.append(signum)
            raise KeyboardInterrupt

        previous = _set_sigint(on_sigint)
        several = os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1")   # one of several torchrun processes
        if several:
            quiet_other_ranks()
        try:
            result = fn(*args, **kwargs)
            if several:
                succeeded()   # leaves the process group, where the command joined one
                _exit_after_leaving()
            return result
        except UserError as exc:
            print(str(exc) if isinstance(exc, StoppedByNni) else f"error: {exc}", file=sys.stderr, flush=True)
            if isinstance(exc, Interrupted) and signalled:
                _die_by_sigint()
            raise SystemExit(exc.exit_code) from None
        except OSError as exc:
            if exc.filename is None:   # not about a file the command was given or writes: a bug, shown whole
                raise
            # a place that cannot be read or written (no permission, a full disk, a name too long, a
            # link loop): what and where, in one line
            where = f"{exc.filename!r}" + (f" -> {exc.filename2!r}" if exc.filename2 else "")
            print(f"error: {exc.strerror or type(exc).__name__}: {where}", file=sys.stderr, flush=True)
            raise SystemExit(UserError.exit_code) from None
        except KeyboardInterrupt:
            print("stopped by NNI" if under_nni() else "error: interrupted", file=sys.stderr, flush=True)
            if signalled:
                _die_by_sigint()
            raise SystemExit(Interrupted.exit_code) from None
        except RuntimeError as exc:
            if several and _peer_gone(exc):
                # another rank stopped and this one's collective lost its peer. Rank 0 alone writes
                # the run folder (a full disk, say, stops it alone) and says why; another rank leaves
                # without a traceback of its own. Rank 0 says that another rank stopped it.
                if os.environ.get("RANK", "0") == "0":
                    print(f"error: another torchrun process of this command stopped ({first_line(exc)[:200]})",
                          file=sys.stderr, flush=True)
                raise SystemExit(1) from None
            if not _out_of_memory(exc):   # a bug, shown whole
                raise
            # the engine says more where it knows the model (core.trainer.Trainer.out_of_memory)
            said = ". ".join(first_line(exc).split(". ")[:2]).rstrip(".")   # torch's what and how much
            print(f"error: out of memory ({said}); try a smaller --batch-size or --eval-batch-size, --amp on a GPU, "
                  "or fewer trials per GPU (maxTrialNumberPerGpu in the nnictl config)", file=sys.stderr, flush=True)
            raise SystemExit(UserError.exit_code) from None
        finally:
            if previous is not None:
                _set_sigint(previous)

    return wrapper


def _exit_after_leaving() -> None:
    """End a torchrun rank whose command succeeded and left the process group, without the
    interpreter's teardown: gloo's background threads can still abort a finished rank while Python
    finalises ('terminate called without an active exception', exit -6, even after the ranks left
    together), which torchrun reports as a failed command. The
    command has written and closed its files; what is buffered is flushed here."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


def _set_sigint(handler):
    """Install a SIGINT handler where that is possible (the main thread); returns the old one."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, handler)


def _die_by_sigint() -> None:
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
