"""How a command prints its result: one JSON line on stdout, flushed at once.

Scripts, NNI's trial logs and the tests read it (the line of a training command is its last:
``json.loads(stdout.splitlines()[-1])``). Under ``torchrun`` rank 0 alone prints it
(:mod:`core.launch` quiets the other ranks' ``print``).
"""
from __future__ import annotations

import json
from typing import Any


def print_result(result: Any) -> None:
    """Print ``result`` (what :func:`json.dumps` takes) as one JSON line on stdout."""
    print(json.dumps(result), flush=True)
