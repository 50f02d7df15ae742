"""What search.py and retrain.py share: their command line (``--resume``, ``--nni`` and the config
fields) and the quieting of NNI's import warnings."""
from __future__ import annotations

import argparse
import dataclasses
import warnings
from typing import Any

from core.config import add_config_arguments, add_resume_argument
from core.errors import UserError


def field(default: Any, help: str) -> Any:  # noqa: A002 - the name argparse uses
    """A dataclass field with a default and a help text (shown by ``--help``)."""
    return dataclasses.field(default=default, metadata={"help": help})


def check_network_shape(cfg: Any, positive: tuple[str, ...] = ("channels", "stem_multiplier")) -> None:
    """The checks the search and the retrain share: at least 3 cells, and ``positive`` fields >= 1."""
    if cfg.layers < 3:
        raise UserError(f"layers: {cfg.layers} is not allowed; at least 3 (reduction cells sit at one and "
                        "two thirds of the depth)")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise UserError(f"{name}: {getattr(cfg, name)} is not allowed; it must be at least 1")


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_resume_argument(parser)
    parser.add_argument("--nni", action="store_true",
                        help="run as an NNI trial: take the trial's parameters as config overrides, write into "
                             "the trial's folder and report every epoch's accuracy (see config*.yml)")
    add_config_arguments(parser, cls)
    return parser


# --- NNI -----------------------------------------------------------------------------------------

def quiet_nni_imports() -> None:
    """NNI 3.0 warns at import about torch classes newer than it knows; not the user's concern."""
    warnings.filterwarnings("ignore", message=r".*is found to be not a nn\.Module.*", category=RuntimeWarning)


START_HINT = "start it with `nnictl create --config oneshot_darts/config.yml` (or config_retrain.yml)"
