"""What search.py and retrain.py share: config resolution (with ``--resume`` and NNI parameters)
and the NNI trial glue that puts a run's per-epoch accuracy into the web UI."""
from __future__ import annotations

import argparse
import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, Callable

from core.config import add_config_arguments, add_resume_argument
from core.errors import UserError


def field(default: Any, help: str) -> Any:  # noqa: A002 - the name argparse uses
    """A dataclass field with a default and a help text (shown by ``--help``)."""
    return dataclasses.field(default=default, metadata={"help": help})


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


class NniTrial:
    """The trial's parameters, output folder and reports. Built only with ``--nni``."""

    def __init__(self) -> None:
        if not os.environ.get("NNI_PLATFORM") or not os.environ.get("NNI_OUTPUT_DIR"):
            raise UserError("--nni: this is not an NNI trial (no NNI_PLATFORM / NNI_OUTPUT_DIR in the environment); "
                            "start it with `nnictl create --config oneshot_darts/config.yml`")
        import nni

        self.nni = nni
        self.params: dict[str, Any] = dict(nni.get_next_parameter() or {})
        self.run_dir = Path(os.environ["NNI_OUTPUT_DIR"])

    def reporter(self, key: str) -> Callable[[dict[str, Any]], None]:
        """An ``on_epoch`` callback reporting ``metrics[key]`` (and the losses) as intermediate results."""
        def report(metrics: dict[str, Any]) -> None:
            self.nni.report_intermediate_result(_metric(metrics, key))
        return report

    def final(self, result: dict[str, Any], key: str) -> None:
        self.nni.report_final_result(_metric(result, key))


def _metric(metrics: dict[str, Any], key: str) -> dict[str, float]:
    """NNI's dict form: 'default' is what the web UI plots; the other numbers show beside it."""
    out = {"default": float(metrics[key])}
    for name in ("train_loss", "train_acc", "val_acc", "val_loss", "test_acc", "test_loss", "epoch"):
        if name != key and isinstance(metrics.get(name), (int, float)):
            out[name] = float(metrics[name])
    return out
