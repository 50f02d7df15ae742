"""Retrain one architecture of the classic-NAS space from its JSON file, with the shared training core.

    python classic_nas/retrain.py --arc best_arch.json --config configs/classic_nas_retrain.yml
    python classic_nas/retrain.py --resume runs/classic_nas_retrain-.../checkpoint.pt

The architecture file is ``{"skip1": 0 or 1, ..., "skip6": 0 or 1}`` (what
``python -m classic_nas.export`` writes). Training, the run folder (config.yaml, train.log,
metrics.jsonl, checkpoint.pt, arch.json, result.json) and the final test accuracy come from
:func:`core.runner.train`, the retrain path every stage shares; the checkpoint holds the
architecture and the config, so ``--resume`` needs nothing else. By default it trains on the
whole training split and logs the test accuracy after every epoch; the result is the last epoch's
(no epoch is picked on test).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any, Sequence

from core.config import TrainConfig, add_config_arguments, check_resume_only, config_from_args, field
from core.errors import cli_main
from core.runner import config_from_checkpoint, train

STAGE = "classic_nas_retrain"


@dataclasses.dataclass
class RetrainConfig(TrainConfig):
    """Training options of a retrain: the core's defaults, a longer schedule, all training images."""

    val_fraction: float = field(0.0, "fraction of the training split held out for validation; 0 = train on all of it")
    epochs: int = field(100, "training epochs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python classic_nas/retrain.py", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--arc", "--arch", dest="arc", metavar="JSON",
                        help="architecture file, e.g. best_arch.json from python -m classic_nas.export")
    source.add_argument("--resume", metavar="CHECKPOINT",
                        help="continue a retrain from its checkpoint.pt (its own config and architecture)")
    add_config_arguments(parser, RetrainConfig)
    return parser


@cli_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    from classic_nas.space import arch_name, build_model, read_arch, validate_arch
    if args.resume:
        check_resume_only(RetrainConfig, args)
        cfg, state = config_from_checkpoint(RetrainConfig, args.resume)
        arch = validate_arch(state.get("arch"), source=f"checkpoint {args.resume!r} architecture")
    else:
        arch = read_arch(args.arc)
        cfg = config_from_args(RetrainConfig, args)
    # Nothing is selected here, so with no validation split the test split is logged every epoch
    # (monitoring only; the result is the last epoch's).
    eval_splits = ("val", "test") if cfg.val_fraction > 0 else ("test",)
    print(f"architecture {arch_name(arch)}: {json.dumps(arch)}", flush=True)
    result = train(cfg, lambda num_classes: build_model(arch, num_classes), name=STAGE, resume=args.resume,
                   arch=arch, eval_splits=eval_splits, final_test=False)
    print(json.dumps({"arch": arch, **result}), flush=True)
    return result


if __name__ == "__main__":
    main()
