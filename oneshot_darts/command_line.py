"""The command line the DARTS commands share (``search.py``, ``retrain.py``, ``protocol.py``):
``--resume``, ``--nni`` and the config fields, and the line that says how an NNI trial starts."""
from __future__ import annotations

import argparse
from core.config import add_config_arguments, add_resume_argument
from core.errors import ArgumentParser


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description=description)
    add_resume_argument(parser)
    parser.add_argument("--nni", action="store_true",
                        help="run as an NNI trial: take the trial's parameters as config overrides, write into "
                             "the trial's folder and report every epoch's accuracy (see config*.yml)")
    add_config_arguments(parser, cls)
    return parser


START_HINT = "start it with `nnictl create --config oneshot_darts/config.yml` (or config_retrain.yml)"
