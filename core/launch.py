"""What ``torchrun`` tells a command through its environment, read without importing torch.

Whether this process is one of several (``WORLD_SIZE``) and rank 0 (``RANK``); quieting the other
ranks' ``print``; and what a command that succeeded does before it ends (leave the process group:
:mod:`core.distributed` registers that when it joins one, :func:`core.errors.cli_main` runs it).
"""
from __future__ import annotations

import builtins
import os
from typing import Any, Callable


def launched() -> bool:
    """Whether ``torchrun`` (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def env_rank() -> int:
    """This process's rank as ``torchrun`` announced it (0 without ``torchrun``)."""
    return int(os.environ.get("RANK", "0"))


def silence_print() -> None:
    """Only rank 0 talks: the other ranks' ``print`` goes nowhere unless called with ``force=True``
    (the DeiT / MAE ``setup_for_distributed`` convention). Once per process."""
    original = builtins.print
    if getattr(original, "silenced", False):
        return

    def print_(*args: Any, force: bool = False, **kwargs: Any) -> None:
        if force:
            original(*args, **kwargs)

    print_.silenced = True  # type: ignore[attr-defined]
    builtins.print = print_


def quiet_other_ranks() -> None:
    """Under ``torchrun``, rank 0 alone prints from the start of a command (every command calls
    this through :func:`core.errors.cli_main`), not only once the process group is joined: a
    command that never joins one (``hpo/results.py``) or prints before (``--top K``) says each
    line once."""
    if launched() and env_rank() != 0:
        silence_print()


_at_success: list[Callable[[], None]] = []


def at_success(fn: Callable[[], None]) -> None:
    """Have ``fn`` run when the command succeeds (:func:`succeeded`), once."""
    _at_success.append(fn)


def succeeded() -> None:
    """Run what :func:`at_success` registered, in order (a command that joined no process group has
    nothing to leave)."""
    while _at_success:
        _at_success.pop(0)()
