"""One HPO trial: train the model, optimizer and learning rate NNI's tuner picked; report validation accuracy.

Run by ``nnictl create --config hpo/config.yml`` (parameters ``{"lr": ..., "optimizer": ...,
"model": ...}`` from ``hpo/search_space.json``; Hyperband adds ``TRIAL_BUDGET``, the number of
epochs), or on its own with the same defaults and options::

    python hpo/trial.py --model mobilenet --optimizer Adam --lr 0.001 --data fake --epochs 1 --max-batches 2

Settings resolve as: defaults (:class:`HpoTrialConfig`) < ``--config`` YAML < command-line flags
< the tuner's parameters. Training goes through the shared core (:func:`core.run_training.train`);
each epoch reports the validation accuracy as an intermediate result, and the final result is a
dict whose ``default`` is the last epoch's validation accuracy (the test accuracy is recorded
beside it, never used by the search). The final dict also repeats the parameters the trial
really trained with, because NNI 3.0 can show another trial's parameters for a trial when several
start at once (see ``hpo/results.py``).

A parameter set naming an unknown model or optimizer, or a learning rate <= 0, stops the trial at
once with one ``error: ...`` line (exit 2) and NNI goes on with the next trial. A trial whose
network no longer computes (a NaN or infinite training loss, or a non-finite validation or test loss
or output: :class:`core.trainer.TrainingDiverged`) reports a minimal final result (``default`` 0.0,
``diverged`` 1) and exits cleanly; readers never rank it (:func:`experiments.reader.rank_problem`).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, Callable, Sequence

from core.config import ModelConfig, Optimizer, SearchTrialConfig, add_config_arguments, config_from_args, field
from core.errors import ArgumentParser, UserError, cli_main
from core.output import print_result
from experiments.nni_trial import NniTrial
from hpo import BUDGET_KEY, PARAM_KEYS


@dataclasses.dataclass
class HpoTrialConfig(SearchTrialConfig, ModelConfig):
    """One trial's training options: the core's plus the model name and whether to test at the end."""

    model: str = field("mobilenet", "a name from models.MODELS")
    optimizer: Optimizer = field("Adam", "the torch optimizer (hpo/search_space.json searches all but SGD; "
                                 "hpo/config_wide.yml all five)")
    lr: float = field(0.001, "initial learning rate (> 0)")
    epochs: int = field(30, "training epochs of one trial")
    final_test: bool = field(True, "evaluate the test split once at the end (recorded beside the result, never "
                             "searched on)")


def parameters_to_fields(params: dict[str, Any]) -> dict[str, Any]:
    """The tuner's parameters as config fields: ``TRIAL_BUDGET`` becomes ``epochs``.

    Any other key must be a field name; an unknown one is reported by the config check.
    """
    fields = dict(params)
    if BUDGET_KEY in fields:
        budget = fields.pop(BUDGET_KEY)
        if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not budget >= 1:
            raise UserError(f"{BUDGET_KEY}: {budget!r} is not allowed; the budget is a number of epochs >= 1")
        fields["epochs"] = int(math.floor(budget + 1e-6))
    return fields


def resolve_config(args: argparse.Namespace, params: dict[str, Any]) -> HpoTrialConfig:
    """Defaults < ``--config`` YAML < flags < tuner parameters, validated."""
    return config_from_args(HpoTrialConfig, args, overrides=parameters_to_fields(params),
                            overrides_source="NNI parameter")


def run_trial(cfg: HpoTrialConfig, trial: NniTrial,
              build_model: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Train one configuration and report it; returns the final dict that was reported."""
    from experiments.nni_trial import run_search_trial
    from models import create_model

    final, _ = run_search_trial(cfg, build_model or (lambda n: create_model(cfg.model, num_classes=n)), trial,
                                name=f"hpo-{cfg.model}", final_test=cfg.final_test,
                                keep_checkpoint=cfg.keep_checkpoint,
                                extra={key: getattr(cfg, key) for key in PARAM_KEYS})
    return final


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python hpo/trial.py", description=__doc__.splitlines()[0])
    add_config_arguments(parser, HpoTrialConfig)
    return parser


@cli_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    trial = NniTrial.from_environment()
    cfg = resolve_config(args, trial.params)
    final = run_trial(cfg, trial)
    print_result(final)
    return final


if __name__ == "__main__":
    main()
