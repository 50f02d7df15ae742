"""Check an nnictl experiment config before ``nnictl create`` starts it, with one clear line per mistake.

    python -m experiments.nni_config hpo/config.yml [more configs ...]

``nnictl create`` validates a config with NNI's own ``ExperimentConfig``, whose numeric checks are
bare ``assert`` statements: ``trialConcurrency: 0`` ends in a traceback with an empty
``AssertionError`` (see docs/nni.md). This module runs the same validation first and says what is
wrong: the fields NNI asserts on are checked here by name (:data:`POSITIVE`), a key repeated in the
YAML is refused (NNI would keep the last silently), so is a search space with ``#`` or ``//`` in a
name or value (:data:`COMMENT_MARKS`: NNI would start the experiment, then hang), and whatever else
NNI's schema rejects is passed on as one line. Where the project starts ``nnictl create`` itself
(the test harness, the Colab notebook) it calls :func:`check_experiment_config` first.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

import yaml

from core.config import UniqueKeyLoader, read_text
from core.errors import ArgumentParser, UserError, cli_main, first_line

#: Fields NNI 3.0 asserts are positive (``ExperimentConfig._validate_canonical``): integers here...
POSITIVE_INTS = ("trialConcurrency", "maxTrialNumber")
#: ... and durations ("10m", "2h", or seconds).
POSITIVE_DURATIONS = ("maxExperimentDuration", "maxTrialDuration")


def _duration_seconds(value: Any) -> float | None:
    """NNI's duration (``"30s"``, ``"10m"``, ``"2h"``, ``"1d"`` or a number of seconds), or None
    when it is not one."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value[-1:].lower() in units:
        try:
            return float(value[:-1]) * units[value[-1:].lower()]
        except ValueError:
            return None
    return None


#: What NNI 3.0's JSON reader (json_tricks, ``ignore_comments=True``, in
#: ``nni/runtime/command_channel/websocket/connection.py``) takes for the start of a comment, even
#: inside a string: a message that carries such a string (a trial's parameters, when the trial ends)
#: is cut there and cannot be read, the dispatcher cannot go on, and the experiment stays RUNNING.
COMMENT_MARKS = ("//", "#")


def _comment_mark(value: Any, where: str) -> tuple[str, str, str] | None:
    """The first string of a search space (a key or a value, at any depth) holding a
    :data:`COMMENT_MARKS`: (where, the string, the mark); None when there is none."""
    if isinstance(value, str):
        mark = next((m for m in COMMENT_MARKS if m in value), None)
        return (where, value, mark) if mark else None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            found = _comment_mark(str(key), inner) or _comment_mark(item, inner)
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _comment_mark(item, f"{where}[{i}]")
            if found:
                return found
    return None


def check_search_space(space: Any, where: str) -> None:
    """Refuse a search space that NNI would accept but could not run (:data:`COMMENT_MARKS`)."""
    found = _comment_mark(space, "")
    if found:
        at, text, mark = found
        raise UserError(f"{where}: search space {at}: {text!r} contains {mark!r}, which NNI's message reader strips "
                        "as a comment even inside a string: its dispatcher could not read a trial's parameters and "
                        "the experiment would stay RUNNING; use names and values without '#' and '//'")


def check_experiment_config(path: str | os.PathLike) -> dict[str, Any]:
    """Validate the nnictl config at ``path`` as ``nnictl create`` will (and a little more: named
    fields, repeated keys, a search-space string NNI could not pass on); returns the YAML mapping.
    Any mistake is a :class:`UserError` naming the file and the field."""
    p = Path(path)
    where = f"nnictl config {str(p)!r}"
    try:
        config = yaml.load(read_text(p, "nnictl config"), Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise UserError(f"{where} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(config, dict):
        raise UserError(f"{where} must hold a mapping of field: value")
    for name in POSITIVE_INTS:
        value = config.get(name)
        if name in config and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"{where}: {name}: {value!r} is not allowed; it must be a whole number of 1 or more "
                            "(NNI would stop with a bare AssertionError)")
    for name in POSITIVE_DURATIONS:
        if name in config:
            seconds = _duration_seconds(config[name])
            if seconds is None or not seconds > 0:
                raise UserError(f"{where}: {name}: {config[name]!r} is not allowed; it must be a positive duration "
                                "such as 30m, 2h or 1d")
    from nni.experiment.config import ExperimentConfig

    try:
        canonical = ExperimentConfig.load(str(p)).canonical_copy()
    except (AssertionError, ValueError, TypeError, KeyError, AttributeError) as exc:
        text = first_line(exc) if str(exc).strip() else f"{type(exc).__name__} in NNI's ExperimentConfig"
        raise UserError(f"{where}: NNI rejects it: {text}") from None
    check_search_space(canonical.search_space, where)
    return config


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m experiments.nni_config", description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", metavar="CONFIG", help="nnictl experiment config (YAML)")
    return parser


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for config in args.configs:
        check_experiment_config(config)
        print(f"{config}: ok")
    return 0


if __name__ == "__main__":
    main()
