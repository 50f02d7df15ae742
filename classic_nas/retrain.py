"""Retrain one architecture of the classic-NAS space from its JSON file, with the shared training core.

    python classic_nas/retrain.py --arc best_arch.json --config configs/classic_nas_retrain.yml
    python classic_nas/retrain.py --resume runs/classic_nas_retrain-.../checkpoint.pt
    python classic_nas/retrain.py --experiment ID --top 3      # the 3 best architectures of a search
    python classic_nas/retrain.py --experiment ID --top 3 --seeds 0 1 2   # each with three seeds

The architecture file is ``{"skip1": 0 or 1, ..., "skip6": 0 or 1}`` (what
``python -m classic_nas.export`` writes). Training, the run folder (config.yaml, train.log,
metrics.jsonl, checkpoint.pt, arch.json, result.json) and the final test accuracy come from
:func:`core.run_training.train`, the retrain path every stage shares; the checkpoint holds the
architecture and the config, so ``--resume`` needs nothing else. By default it trains on the
whole training split and logs the test accuracy after every epoch; the result is the last epoch's
(no epoch is picked on test).

``--experiment ID --top K`` retrains the K best architectures of a search one after the other,
each in its own run folder ``<out_dir>/classic_nas_retrain-<experiment>-<trial>/`` with an
``origin.json`` (see :mod:`experiments.top_k`); the same command again skips finished ones and
continues a killed one from its checkpoint, when the options are the same (other options: an error
naming them, or a new folder with ``--new-folder``); ``--seeds S1 S2 ...`` retrains each once per seed,
each in its own folder ``...-<trial>-seed<S>/``; ``python -m report ID`` compares the rankings (mean
+- std over seeds, Kendall's tau with its p-value).

``--from-hpo EXPERIMENT`` trains with the optimizer and learning rate of that HPO experiment's best
trial (:mod:`experiments.from_hpo`), as a search started with it did.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

from core.config import TrainConfig, add_config_arguments, config_from_args, field
from core.errors import ArgumentParser, cli_main
from core.output import print_result
from experiments.reader import Trial
from experiments.from_hpo import add_from_hpo_argument, winner_from_args
from experiments.retrain_options import TopK, add_retrain_options, all_training_images, check_retrain_options
from experiments.top_k import retrain_top_of

STAGE = "classic_nas_retrain"
#: How many of the best architectures ``--experiment`` alone retrains.
TOP_DEFAULT = 1


@dataclasses.dataclass
class RetrainConfig(TrainConfig):
    """Training options of a retrain: the core's defaults, a longer schedule, all training images."""

    val_fraction: float = all_training_images()
    epochs: int = field(100, "training epochs")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python classic_nas/retrain.py", description=__doc__.splitlines()[0])
    source = add_retrain_options(parser, searched="architecture", top_default=TOP_DEFAULT)
    source.add_argument("--arc", "--arch", dest="arc", metavar="JSON",
                        help="architecture file, e.g. best_arch.json from python -m classic_nas.export")
    add_from_hpo_argument(parser)
    add_config_arguments(parser, RetrainConfig)
    return parser


@cli_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    top = check_retrain_options(args, RetrainConfig, top_default=TOP_DEFAULT, resume_extra=("from_hpo",))
    if top is not None:
        return retrain_top_archs(args, top)
    if args.resume:
        from classic_nas.space import validate_arch
        from core.run_training import config_from_checkpoint

        cfg, state = config_from_checkpoint(RetrainConfig, args.resume)
        arch = validate_arch(state.get("arch"), source=f"checkpoint {args.resume!r} architecture")
    else:
        cfg = _config(args)   # bad flags and --print-config end here, before torch and NNI load (seconds)
        from classic_nas.space import read_arch

        arch = read_arch(args.arc)
    result = _train_arch(cfg, arch, resume=args.resume)
    print_result({"arch": arch, **result})
    return result


def _config(args: argparse.Namespace) -> RetrainConfig:
    """The flags' config; under ``--from-hpo`` with the HPO winner's optimizer and lr."""
    winner = winner_from_args(args)
    if winner is not None:
        print(f"training with {winner.describe()}", flush=True)
    return config_from_args(RetrainConfig, args, overrides=winner and winner.fields(), overrides_source="--from-hpo")


def _train_arch(cfg: RetrainConfig, arch: dict[str, int], **kwargs: Any) -> dict[str, Any]:
    from classic_nas.space import arch_name, build_model
    from core.run_training import train

    # Nothing is selected here, so with no validation split the test split is logged every epoch
    # (monitoring only; the result is the last epoch's).
    eval_splits = ("val", "test") if cfg.val_fraction > 0 else ("test",)
    print(f"architecture {arch_name(arch)}: {json.dumps(arch)}", flush=True)
    return train(cfg, lambda num_classes: build_model(arch, num_classes), name=STAGE, arch=arch,
                 eval_splits=eval_splits, final_test=False, **kwargs)


def retrain_top_archs(args: argparse.Namespace, top: TopK) -> list[dict[str, Any]]:
    """``--experiment ID --top K``: the K best architectures, each in its own resumable run folder."""
    from classic_nas.export import load_experiment, trial_arch

    first = _config(args)   # bad flags: an error before anything is written

    def train_one(cfg: RetrainConfig, trial: Trial, run_dir: Path, resume: Path | None) -> dict[str, Any]:
        return _train_arch(cfg, trial_arch(trial), run_dir=None if resume else run_dir, resume=resume)

    return retrain_top_of(args.experiment, args.experiments_dir, top.k, load=load_experiment, base=first,
                          stage=STAGE, origin_extra=lambda t: {"params": trial_arch(t)}, config_for=lambda t: first,
                          train_one=train_one, new_folder=top.new_folder, seeds=top.seeds)


if __name__ == "__main__":
    main()
