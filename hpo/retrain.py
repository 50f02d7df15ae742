"""Retrain the best trial of an HPO experiment with the long schedule and report its test accuracy.

    python hpo/retrain.py --experiment k3x9w2ab                 # an id, found via ~/nni-experiments
    python hpo/retrain.py --experiment ~/nni-experiments/k3x9w2ab --epochs 200
    python hpo/retrain.py --export best.json                    # `nnictl experiment export` data
    python hpo/retrain.py --experiment k3x9w2ab --top 3         # the 3 best, one run folder each
    python hpo/retrain.py --experiment k3x9w2ab --top 3 --seeds 0 1 2   # each with three seeds

The best trial (highest final validation accuracy) is read with :mod:`hpo.results`, without the
web UI; its ``model``, ``optimizer`` and ``lr`` are trained with the shared core on the whole
training split (``val_fraction`` 0: no validation split is held out) for 200 epochs by
default, and the test split is evaluated once at the end. Every other training option is the
core's default, a ``--config`` YAML, or a flag (flags win, even over the trial's parameters).
The run folder holds the resolved config, log, metrics, checkpoint, ``result.json`` and
``hpo_best.json`` (which experiment and trial the parameters came from).

``--top K`` retrains the K best trials one after the other, each in its own run folder
``<out_dir>/hpo_retrain-<experiment>-<trial>/`` with an ``origin.json`` (see
:mod:`experiments.top_k`); running the same command again skips the finished ones and continues a
killed one from its checkpoint, when the options are the same: other options are an error naming
them, or, with ``--new-folder``, a retrain in a new folder. A second ``--top`` started meanwhile
leaves each trial being retrained to the first. ``--seeds S1 S2 ...`` retrains each of the K once per
seed, each in its own folder ``...-<trial>-seed<S>/``. ``python -m report <experiment>`` then compares
the search's ranking with the retrains' (mean +- std over seeds, Kendall's tau with its p-value).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

from core.config import ModelConfig, add_config_arguments, config_from_args, field
from core.errors import ArgumentParser, UserError, cli_main
from core.output import print_result
from core.run_folder import write_record
from experiments.reader import Trial, trials_from_export
from experiments.retrain_options import TopK, add_retrain_options, all_training_images, check_retrain_options
from experiments.top_k import retrain_top_of
from core.words import count
from hpo import PARAM_KEYS
from hpo.results import best_trial, load_experiment, searched_params


@dataclasses.dataclass
class RetrainConfig(ModelConfig):
    """The long schedule: every training image, 200 epochs, test evaluated at the end."""

    epochs: int = field(200, "training epochs")
    val_fraction: float = all_training_images()


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python hpo/retrain.py", description=__doc__.splitlines()[0])
    source = add_retrain_options(parser, searched="trial")
    source.add_argument("--export", metavar="FILE", help="`nnictl experiment export` .json or .csv file")
    add_config_arguments(parser, RetrainConfig)
    return parser


def best_parameters(source: str, experiments_dir: str | None = None, *,
                    export: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """The best trial's searched parameters, and a description of where they came from."""
    trials = trials_from_export(source, PARAM_KEYS) if export else load_experiment(source,
                                                                                   experiments_dir=experiments_dir)
    best = best_trial(trials)
    params = trial_params(best)
    origin = {"source": str(source), "trial_id": best.trial_id, "params": params, "val_acc": best.final,
              "params_source": best.params_source, "trials": len(trials)}
    return params, origin


@cli_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    top = check_retrain_options(args, RetrainConfig)
    if top is not None:
        return retrain_top_trials(args, top)
    origin: dict[str, Any] | None = None
    if not args.resume:
        params, origin = best_parameters(args.experiment or args.export, args.experiments_dir,
                                         export=bool(args.export))
        cfg = config_from_args(RetrainConfig, args, base=params)   # bad flags, --print-config: before torch
    from core import distributed
    from core.run_training import config_from_checkpoint, train
    from models import create_model

    if args.resume:
        cfg, _ = config_from_checkpoint(RetrainConfig, args.resume)
    else:
        print(f"best trial {origin['trial_id']} of {origin['source']}: {json.dumps(params, sort_keys=True)} "
              f"(validation accuracy {origin['val_acc']:.4f}); retraining for {count(cfg.epochs, 'epoch')}", flush=True)
    result = train(cfg, lambda n: create_model(cfg.model, num_classes=n), name=f"hpo_retrain-{cfg.model}",
                   resume=args.resume, eval_splits=("val",) if cfg.val_fraction > 0 else (), final_test=True)
    if origin is not None and distributed.is_main():  # under torchrun rank 0 writes
        write_record(Path(result["run_dir"]) / "hpo_best.json", origin, indent=2)
    print_result(result)
    return result


def trial_params(trial: Trial) -> dict[str, Any]:
    """A trial's searched parameters, all of them (an error naming the trial otherwise)."""
    params = searched_params(trial)
    missing = [k for k in PARAM_KEYS if k not in params]
    if missing:
        raise UserError(f"trial {trial.trial_id} has no {', '.join(missing)} parameter; "
                        "is this an HPO experiment of hpo/config.yml?")
    return params


def retrain_top_trials(args: argparse.Namespace, top: TopK) -> list[dict[str, Any]]:
    """``--top K``: the K best trials, each retrained in its own resumable run folder."""
    first = config_from_args(RetrainConfig, args)   # bad flags: an error before anything is written
    from core.run_training import train
    from models import create_model

    def config_for(trial: Trial) -> RetrainConfig:
        return config_from_args(RetrainConfig, args, base=trial_params(trial))

    def train_one(cfg: RetrainConfig, trial: Trial, run_dir: Path, resume: Path | None) -> dict[str, Any]:
        return train(cfg, lambda n: create_model(cfg.model, num_classes=n), name=f"hpo_retrain-{cfg.model}",
                     run_dir=None if resume else run_dir, resume=resume,
                     eval_splits=("val",) if cfg.val_fraction > 0 else (), final_test=True)

    return retrain_top_of(args.experiment, args.experiments_dir, top.k, load=load_experiment, base=first,
                          stage="hpo_retrain", origin_extra=lambda t: {"params": trial_params(t)},
                          config_for=config_for, train_one=train_one, new_folder=top.new_folder, seeds=top.seeds)


if __name__ == "__main__":
    main()
