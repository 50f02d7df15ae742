"""Train one registry model with the core: ``python -m core.train_model --model resnet18 --data fake``.

The plain, stage-free entry point: a :class:`~core.config.ModelConfig` is a
:class:`~core.config.TrainConfig` plus the registry name of the model.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from core.config import ModelConfig, add_config_arguments, add_resume_argument, check_resume_only, config_from_args
from core.errors import ArgumentParser, cli_main
from core.output import print_result


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m core.train_model", description=__doc__.splitlines()[0])
    add_resume_argument(parser)
    add_config_arguments(parser, ModelConfig)
    return parser


@cli_main
def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.resume:
        check_resume_only(ModelConfig, args)
    else:
        cfg = config_from_args(ModelConfig, args)   # bad flags and --print-config end here, before torch loads
    from core.run_training import config_from_checkpoint, train
    from models import create_model

    if args.resume:
        cfg, _ = config_from_checkpoint(ModelConfig, args.resume)
    result = train(cfg, lambda n: create_model(cfg.model, num_classes=n), name=cfg.model, resume=args.resume)
    print_result(result)
    return result


if __name__ == "__main__":
    main()
