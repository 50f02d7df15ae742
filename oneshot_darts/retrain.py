"""Retrain a DARTS architecture: ``python oneshot_darts/retrain.py --arc final_arch.json``.

Builds the fixed network of the architecture file (this project's ``final_arch.json``, NNI 3.0's
exported dict, NNI 1.x's DARTS export, or a published ``Genotype(...)`` text; see
:mod:`oneshot_darts.genotype` and ``oneshot_darts/archs/``) and trains it with the
core's loop and the paper's recipe by default (Liu et al. 2019, section 3.3): 36 channels, 20
cells, auxiliary head weighted 0.4, drop path 0.2 increased linearly from 0, cutout 16, SGD lr
0.025 cosine to 0, momentum 0.9, weight decay 3e-4, batch 96, 600 epochs, gradient clipping 5;
mixed precision on CUDA (chosen per GPU, see core/speed.py; ``--no-amp`` is the paper's fp32). It trains on the whole training split and logs the test accuracy
after every epoch; the result is the last epoch's (no epoch is picked on test).
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable, Sequence

import torch
from torch import nn

from core.config import TrainConfig, check_resume_only, config_from_args, field
from core.errors import UserError, cli_main
from core.output import print_result
from experiments.nni_trial import NniTrial, final_metrics, quiet_nni_imports
from experiments.retrain_options import all_training_images
from core.run_training import config_from_checkpoint, train
from core.speed import ModelNotes
from core.trainer import Trainer, cross_entropy
from oneshot_darts.genotype import Genotype, load_arch, parse_arch
from oneshot_darts.command_line import START_HINT, build_parser
from oneshot_darts.network_shape import check_network_shape


@dataclasses.dataclass
class RetrainConfig(TrainConfig):
    """The DARTS paper's CIFAR-10 retrain recipe by default."""

    # --- TrainConfig fields with the paper's values ---
    val_fraction: float = all_training_images()
    batch_size: int = field(96, "training batch size (images)")
    cutout: int = field(16, "cutout square side (px); 0 = off")
    lr: float = field(0.025, "initial learning rate (SGD, cosine to 0)")
    weight_decay: float = field(3e-4, "weight decay")
    epochs: int = field(600, "training epochs")
    grad_clip: float = field(5.0, "clip the gradient norm to this; 0 = off")
    # --- the network ---
    arc: str = field("", "architecture file: final_arch.json of search.py, NNI 3.0's or NNI 1.x's DARTS export, or "
                     "a Genotype(...) text as DARTS repositories publish cells (alias --arch)", aliases=("--arch",))
    channels: int = field(36, "initial channels C (the stem has stem_multiplier x C)")
    layers: int = field(20, "cells; those at one and two thirds of the depth are reduction cells")
    stem_multiplier: int = field(3, "stem output channels / C")
    auxiliary: bool = field(True, "auxiliary classifier after the second reduction cell (training only)")
    auxiliary_weight: float = field(0.4, "weight of the auxiliary loss")
    drop_path: float = field(0.2, "drop-path probability, increased linearly: epoch e (from 0) uses "
                                   "drop_path x e / epochs")

    def validate(self) -> None:
        super().validate()
        check_network_shape(self.layers, channels=self.channels, stem_multiplier=self.stem_multiplier)
        if not 0.0 <= self.drop_path < 1.0:
            raise UserError(f"drop_path: {self.drop_path} is not in [0, 1)")
        if self.compile == "on" and self.drop_path:
            raise UserError("compile: not allowed with drop_path > 0: the drop-path probability changes every epoch "
                            "and each new value would recompile the network; pass --drop-path 0 to compile")
        if self.auxiliary_weight < 0:
            raise UserError(f"auxiliary_weight: {self.auxiliary_weight} is not allowed; it must be 0 or more")


def auxiliary_loss(output: Any, target: torch.Tensor, weight: float) -> torch.Tensor:
    """Cross-entropy of the logits, plus ``weight`` times that of the auxiliary logits in training."""
    if isinstance(output, (tuple, list)):
        logits, aux = output
        return cross_entropy(logits, target) + weight * cross_entropy(aux, target)
    return cross_entropy(output, target)


#: Why ``compile: auto`` leaves a network with drop path alone (``core.speed.ModelNotes``).
DROP_PATH_NO_COMPILE = "not with drop path (its probability changes every epoch and would recompile)"


def speed_notes(cfg: RetrainConfig) -> ModelNotes | None:
    """What the retrain tells the engine of its network for the speed choices: with drop path, not
    to compile it under ``compile: auto``."""
    return ModelNotes(no_compile=DROP_PATH_NO_COMPILE) if cfg.drop_path else None


def drop_path_schedule(cfg: RetrainConfig) -> Callable[[nn.Module], Callable[[int], None]]:
    """``setup`` for the core: epoch ``e`` (0-based) trains with drop path ``drop_path * e / epochs``."""
    def setup(model: nn.Module) -> Callable[[int], None]:
        return lambda epoch: model.set_drop_path(cfg.drop_path * epoch / cfg.epochs)
    return setup


def build_network(cfg: RetrainConfig, genotype: Genotype, num_classes: int) -> nn.Module:
    from oneshot_darts.space import DartsSpace

    return DartsSpace.fixed_network(genotype, channels=cfg.channels, layers=cfg.layers,
                                    stem_multiplier=cfg.stem_multiplier, num_classes=num_classes,
                                    auxiliary=cfg.auxiliary)


class RetrainTrainer(Trainer):
    """The core engine, whose result also gives the parameters without the auxiliary head (the
    paper's count; the engine's ``params`` counts everything trained)."""

    def finish(self) -> dict[str, Any]:
        from oneshot_darts.space import count_parameters

        return {"params_without_auxiliary": count_parameters(self.model)}


def run_retrain(cfg: RetrainConfig, genotype: Genotype, *, resume: str | None = None, run_dir: str | None = None,
                on_epoch: Callable[[dict[str, Any]], None] | None = None, eval_test: bool = True) -> dict[str, Any]:
    """Train the network of ``genotype`` with ``cfg`` through the core (see the module docstring);
    ``eval_test=False`` evaluates the validation split only (a selection must never read the test split)."""
    quiet_nni_imports()
    eval_splits = (("val",) if cfg.val_fraction > 0 else ()) + (("test",) if eval_test else ())
    if not eval_splits:
        raise UserError("val_fraction: a retrain that does not read the test split needs a validation split")
    return train(cfg, partial(build_network, cfg, genotype), name=cfg.run_name or "darts-retrain", run_dir=run_dir,
                 resume=resume, arch=genotype.to_json(), eval_splits=eval_splits, final_test=False,
                 loss_fn=partial(auxiliary_loss, weight=cfg.auxiliary_weight), setup=drop_path_schedule(cfg),
                 on_epoch=on_epoch, trainer_cls=RetrainTrainer, notes=speed_notes(cfg))


@cli_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser(RetrainConfig, "python oneshot_darts/retrain.py", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    if args.resume:
        check_resume_only(RetrainConfig, args, extra=("nni",))
        cfg, state = config_from_checkpoint(RetrainConfig, args.resume)
        genotype = parse_arch(state.get("arch"), source=f"checkpoint {args.resume!r}")
        return _finish(run_retrain(cfg, genotype, resume=args.resume))
    cfg = config_from_args(RetrainConfig, args)
    trial = NniTrial.required(START_HINT) if args.nni else None
    if trial is not None:
        cfg = config_from_args(RetrainConfig, args, overrides=trial.params)
    if not cfg.arc:
        raise UserError("--arc: required; the architecture file to retrain (final_arch.json of search.py, an "
                        "NNI 3.0 / NNI 1.x DARTS export, or a Genotype(...) text; oneshot_darts/archs/ holds the "
                        "published DARTS_V1, DARTS_V2 and PC-DARTS cells)")
    genotype = load_arch(cfg.arc)
    if trial is None:
        return _finish(run_retrain(cfg, genotype))
    result = run_retrain(cfg, genotype, run_dir=str(trial.run_dir), on_epoch=trial.epoch_reporter("test_acc"))
    trial.send_final(final_metrics(result, "test_acc"))
    return _finish(result)


def _finish(result: dict[str, Any]) -> dict[str, Any]:
    print_result(result)
    return result


if __name__ == "__main__":
    main()
