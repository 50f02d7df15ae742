"""DARTS search: ``python oneshot_darts/search.py [--config configs/darts_search.yml]``.

NNI 3.0's ``strategy.DARTS`` turns :class:`~oneshot_darts.space.DartsSpace` into its differentiable
supernet (``mutate_model``: every cell becomes NNI's ``DifferentiableMixedCell``, a softmax over the
seven operations and 'none' on every edge; with ``--partial-channels K`` > 1 PC-DARTS's
:class:`~oneshot_darts.space.PartialChannelCell`). One search step (:meth:`DartsSearch.train_step`)
is the bilevel step: an Adam step of the architecture weights on a batch of the second half of the
training split, with the gradient rule ``--order`` picks (:mod:`oneshot_darts.architect`: 1 = first
order, NNI's own; 2 = the paper's unrolled second order), then an SGD step of the network weights on
a batch of the first half. It runs as the step of the project's one training engine
(:class:`DartsSearch`, a :class:`~core.trainer.Trainer`) rather than in Lightning, so that it
checkpoints and resumes exactly like every other command (optimizers, schedule, loaders' random
state, every epoch). The test split is never read. An epoch is one pass of the longer half with the
shorter one cycled (reshuffled on each pass), so every image of both halves trains every epoch; the
first log line says what one epoch draws, and every epoch's metrics count it (``train_images`` for
the weights, ``arch_images`` for the architecture).

The run folder gets ``final_arch.json`` (this project's architecture format; ``retrain.py --arc``
reads it), ``arch_weights.json`` (the softmax weights of every edge, and for PC-DARTS under
``inputs`` those of every node's inputs, rewritten every epoch),
``metrics.jsonl`` (per epoch: losses, validation accuracy on the second half, the derived
architecture, the collapse counts of its normal cell, the softmax weight of every operation on
every edge, and ``arch_uniform``: whether those weights are still uniform, so that the derived cell
is arbitrary, :func:`~oneshot_darts.derive.still_uniform`), ``train.log`` (which says so when they
are), ``config.yaml``, ``checkpoint.pt`` and ``result.json`` (the last epoch's metrics, ``arch_uniform``
included: the record beside ``final_arch.json``).

Under nnictl (``--nni``, ``config.yml``) every epoch's intermediate result is ``{"default": validation
accuracy, "normal_param_free": n, "normal_skip_connect": n}``, so the web UI shows the collapse counts.

``--seeds S1 S2 ... --select-epochs E`` runs the paper's protocol instead (:mod:`oneshot_darts.protocol`).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from core.files import atomic_write_text
from core.config import Range, TrainConfig, check_resume_only, config_from_args, field, read_yaml
from core.data import Splits
from core.errors import UserError, cli_main
from core.output import print_result
from experiments.nni_trial import NniTrial, final_metrics, quiet_nni_imports
from core.run_folder import Run
from core.run_training import config_from_checkpoint, train
from core.trainer import Trainer, autocast, check_trains
from core.words import count
from oneshot_darts import architect
from oneshot_darts.arch import Genotype
from oneshot_darts.common import START_HINT, build_parser, check_network_shape
from oneshot_darts.derive import (NO_GUARD, UNIFORM_TOLERANCE, collapse_counts, derive_genotype, edge_weights,
                                  input_weights, still_uniform, weight_range)

FINAL_ARCH_FILE = "final_arch.json"
WEIGHTS_FILE = "arch_weights.json"
#: The per-epoch numbers that show a collapse (oneshot_darts.derive.collapse_counts), also sent to NNI.
COLLAPSE_KEYS = ("normal_param_free", "normal_skip_connect")


@dataclasses.dataclass
class SearchConfig(TrainConfig):
    """The DARTS paper's search recipe by default (Liu et al. 2019, section 3.1)."""

    # --- TrainConfig fields with the paper's values ---
    val_fraction: float = field(0.5, "fraction of the training split that trains the architecture weights and "
                                     "measures validation accuracy (the other part trains the network weights)")
    batch_size: int = field(64, "batch size of both halves (images)")
    lr: float = field(0.025, "initial learning rate of the network weights (SGD, cosine to --lr-min)")
    weight_decay: float = field(3e-4, "weight decay of the network weights")
    epochs: int = field(50, "search epochs")
    grad_clip: float = field(5.0, "clip the network weights' gradient norm to this; 0 = off")
    # --- the supernet ---
    channels: int = field(16, "initial channels C (the stem has stem_multiplier x C)")
    layers: int = field(8, "cells; those at one and two thirds of the depth are reduction cells")
    n_nodes: int = field(4, "intermediate nodes per cell")
    stem_multiplier: int = field(3, "stem output channels / C")
    # --- optimisers ---
    lr_min: float = field(0.001, "final learning rate of the cosine schedule of the network weights")
    arch_lr: float = field(3e-4, "Adam learning rate of the architecture weights", allowed=Range(0, low_open=True))
    arch_beta1: float = field(0.5, "Adam beta1 of the architecture weights", allowed=Range(0, 1, high_open=True))
    arch_beta2: float = field(0.999, "Adam beta2 of the architecture weights", allowed=Range(0, 1, high_open=True))
    arch_weight_decay: float = field(1e-3, "weight decay of the architecture weights", allowed=Range(0))
    # --- the variants of the step ---
    order: int = field(1, "architecture gradient: 1 = first order (the weights as they are), 2 = second order "
                          "(the paper's unrolled objective: one virtual SGD step, a finite-difference Hessian-vector "
                          "product; several times the step's time, float32)",
                       allowed=Range(1, 2, note="(1 = first order, 2 = second order)"))
    partial_channels: int = field(1, "PC-DARTS's K: 1/K of each edge's channels go through its operations, the rest "
                                     "bypass them (channel shuffle), and edge-normalisation weights choose each "
                                     "node's inputs; 1 = plain DARTS", allowed=Range(1))
    arch_warmup_epochs: int = field(0, "the first N epochs train the network weights only (the architecture frozen; "
                                       "PC-DARTS: 15)", allowed=Range(0, note="(and less than epochs)"))
    max_skip_connect: int = field(NO_GUARD, "collapse guard (P-DARTS): the derived normal cell keeps at most this "
                                            "many skip_connects, the weakest replaced by their edges' next-best "
                                            "choice (P-DARTS: 2); -1 = off", allowed=Range(NO_GUARD, note="(-1 = off)"))

    def validate(self) -> None:
        super().validate()
        if not self.val_fraction > 0:
            raise UserError("val_fraction: 0 is not allowed for the search; it needs a second half of the training "
                            "split for the architecture weights (the paper's 0.5)")
        check_network_shape(self.layers, channels=self.channels, n_nodes=self.n_nodes,
                            stem_multiplier=self.stem_multiplier, partial_channels=self.partial_channels)
        if self.compile == "on":
            raise UserError("compile: not supported by the search, whose own step runs the supernet (NNI's mixed "
                            "operations over every candidate) for two optimizers; compile the retrain instead")
        if self.order == 2 and self.optimizer != "SGD":
            raise UserError(f"order: 2 needs optimizer SGD (its virtual step is the weights' next SGD step, as in the "
                            f"paper); the optimizer is {self.optimizer}")
        if self.arch_warmup_epochs >= self.epochs:
            raise UserError(f"arch_warmup_epochs: {self.arch_warmup_epochs} is not allowed with epochs {self.epochs}; "
                            "it must be less, or the architecture would never train")


# --- the search ----------------------------------------------------------------------------------

class DartsSearch(Trainer):
    """The core engine with DARTS's bilevel step: the supernet's network weights are what the
    core's optimizer and schedule train; the architecture weights get their own Adam optimizer and
    a second loader over the other half of the training split. Everything else (loop, metrics,
    checkpoints, exact resume, divergence check) is :class:`~core.trainer.Trainer`'s."""

    uses_grad_scaler = True  # both steps scale their losses with the engine's scaler (fp16 GPUs)

    def __init__(self, model: nn.Module, cfg: SearchConfig, splits: Splits, run: Run | None = None, **kwargs: Any):
        from oneshot_darts.space import arch_parameters

        if splits.val is None:
            raise UserError("val_fraction: the search needs the second half of the training split")
        self.alphas = arch_parameters(model)
        super().__init__(model, cfg, splits, run, **kwargs)
        # the DARTS strategy's architecture optimizer (DartsLightningModule.configure_architecture_optimizers)
        self.a_optimizer = torch.optim.Adam(self.alphas, lr=cfg.arch_lr, betas=(cfg.arch_beta1, cfg.arch_beta2),
                                            weight_decay=cfg.arch_weight_decay)
        self.arch_loader = self.make_loader(splits.val, train=True, seed=cfg.seed + 1)
        check_trains(self.arch_loader, "architecture-half")
        self.epoch = 0
        self.arch_images = 0   # images the architecture step trained on in this epoch

    def parameters(self) -> list[nn.Parameter]:
        alpha_ids = {id(p) for p in self.alphas}
        return [p for p in self.model.parameters() if id(p) not in alpha_ids]

    def batches(self) -> Iterable[Any]:
        return _Zip(self.train_loader, self.arch_loader)

    def activation_precision(self):
        """The second-order architecture step computes in float32 whatever the engine chose
        (:mod:`oneshot_darts.architect`), so its memory is float32's."""
        from core.speed import FP32, Precision

        if self.cfg.order == 2:
            return Precision(FP32, None, False, "the second-order architecture step computes in float32")
        return self.precision

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        self.epoch = epoch  # the architecture warm-up asks for it
        self.arch_images = 0
        metrics = super().train_epoch(epoch)
        metrics["arch_images"] = self.arch_images   # beside train_images, the weights' count
        return metrics

    def train_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One DARTS step: the architecture weights descend the validation loss of a batch of the
        second half, by the gradient rule of ``--order`` (skipped in the first ``arch_warmup_epochs``),
        then the network weights descend the loss of a batch of the first half. Mixed precision as
        the engine chose it (:attr:`precision`; fp16 with :attr:`scaler` on GPUs without bf16); the
        second-order rule computes in float32 (:mod:`oneshot_darts.architect`)."""
        (x, y), (xa, ya) = batch
        model, cfg, scaler = self.model, self.cfg, self.scaler
        weights = self.optimizer.param_groups[0]["params"]
        out: dict[str, torch.Tensor] = {}
        if self.epoch >= cfg.arch_warmup_epochs:
            self.arch_images += len(ya)
            self.a_optimizer.zero_grad(set_to_none=True)
            if cfg.order == 2:  # float32, unscaled gradients
                out["arch_loss"] = architect.second_order(model, self.alphas, weights, (x, y), (xa, ya), self.optimizer)
                self.a_optimizer.step()
            else:  # no gradient of the network weights is computed
                out["arch_loss"] = architect.first_order(model, self.alphas, (xa, ya),
                                                         autocast(self.device, self.precision), scaler.scale)
                scaler.step(self.a_optimizer)
        with autocast(self.device, self.precision):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward(inputs=weights)
        if cfg.grad_clip:
            scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(weights, cfg.grad_clip)
        scaler.step(self.optimizer)
        scaler.update()
        return {"loss": loss.detach(), "logits": logits.detach(), "target": y, **out}

    def extra_state(self) -> dict[str, Any]:
        return {"a_optimizer": self.a_optimizer.state_dict(), "arch_loader": self.arch_loader.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.a_optimizer.load_state_dict(state["a_optimizer"])
        self.arch_loader.load_state_dict(state["arch_loader"])

    # --- architecture read-outs ---
    def edge_weights(self) -> dict[str, dict[str, float]]:
        from oneshot_darts.space import edge_alphas

        return edge_weights(edge_alphas(self.model))

    def input_weights(self) -> dict[str, list[float]]:
        """PC-DARTS's edge-normalisation weights (empty for plain DARTS)."""
        from oneshot_darts.space import node_betas

        return input_weights(node_betas(self.model))

    def genotype(self, guarded: bool = True) -> Genotype:
        """The derived cell; ``guarded``: with the collapse guard (``max_skip_connect``) applied."""
        return derive_genotype(self.edge_weights(), self.cfg.n_nodes, self.input_weights(),
                               self.cfg.max_skip_connect if guarded else NO_GUARD)

    def epoch_end(self, metrics: dict[str, Any]) -> None:
        """The architecture so far, the collapse counts of its normal cell as the search's weights
        have it (before any guard), and the softmax weight of every operation on every edge (and,
        for PC-DARTS, of every input of every node)."""
        weights, inputs = self.edge_weights(), self.input_weights()
        searched = derive_genotype(weights, self.cfg.n_nodes, inputs)
        genotype = derive_genotype(weights, self.cfg.n_nodes, inputs, self.cfg.max_skip_connect)
        metrics["arch"], metrics["edge_weights"] = genotype.to_json(), weights
        if inputs:
            metrics["input_weights"] = inputs
        metrics.update(collapse_counts(searched))
        if self.cfg.max_skip_connect != NO_GUARD:
            metrics["guard_replaced"] = metrics["normal_skip_connect"] - collapse_counts(genotype)["normal_skip_connect"]
        metrics.update(uniform_record(weights))
        if self.run is not None:
            self.run.log(f"architecture after epoch {metrics['epoch']}: {genotype.describe()}")
            if metrics["arch_uniform"]["uniform"]:
                self.run.log(uniform_warning(metrics["arch_uniform"]["weight_range"]))
            guard = (f"; the guard replaced {metrics['guard_replaced']} (max_skip_connect "
                     f"{self.cfg.max_skip_connect})") if metrics.get("guard_replaced") else ""
            self.run.log(f"normal cell: {metrics['normal_skip_connect']} skip_connect, {metrics['normal_param_free']} "
                         f"parameter-free operations of {2 * self.cfg.n_nodes}{guard}")
            atomic_write_text(self.run.dir / WEIGHTS_FILE, json.dumps(
                {**weights, **({"inputs": inputs} if inputs else {})}, indent=1) + "\n")

    def finish(self) -> dict[str, Any]:
        genotype = self.genotype()
        result = {"arch": genotype.to_json()}
        if self.run is not None:
            path = self.run.dir / FINAL_ARCH_FILE
            atomic_write_text(path, genotype.dumps())
            result["final_arch"] = str(path)
            self.run.log(f"final architecture: {genotype.describe()}")
            uniform = self.history[-1].get("arch_uniform") if self.history else None
            if uniform and uniform["uniform"]:
                self.run.log(f"{FINAL_ARCH_FILE}: " + uniform_warning(uniform["weight_range"]))
            self.run.log(f"wrote {path}; retrain it with: python oneshot_darts/retrain.py --arch {path}")
        return result


class _Zip:
    """Both halves' batches side by side, with a length (for the progress bar): one pass of the
    longer loader, the shorter one cycled (each new pass reshuffled by its own generator), so every
    image of both halves trains every epoch."""

    def __init__(self, *loaders: Any):
        self.loaders = loaders

    def __len__(self) -> int:
        return max(len(loader) for loader in self.loaders)

    def __iter__(self):
        passes = [iter(loader) for loader in self.loaders]
        for _ in range(len(self)):
            batch = []
            for i, loader in enumerate(self.loaders):
                try:
                    batch.append(next(passes[i]))
                except StopIteration:       # the shorter half: its next pass
                    passes[i] = iter(loader)
                    batch.append(next(passes[i]))
            yield tuple(batch)


def epoch_coverage(search: "DartsSearch") -> str:
    """What one search epoch trains on, in words: its steps, and for each half how many of its
    images it draws (whole batches; the shorter half cycled)."""
    steps, batch = len(search.batches()), search.cfg.batch_size

    def half(loader: Any, images: int) -> str:
        one_pass = len(loader) * batch      # whole batches only; --max-batches may cut a pass short
        if len(loader) == steps:
            return f"all {images:,}" if one_pass >= images else f"{one_pass:,} of its {images:,}"
        return f"{steps * batch:,} draws from its {images:,} (cycled, {steps / len(loader):.1f} passes)"

    return (f"each epoch {count(steps, 'step')} of {batch} images: the weights train on "
            f"{half(search.train_loader, len(search.splits.train))}, the architecture on "
            f"{half(search.arch_loader, len(search.splits.val))}")


def uniform_record(weights: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The per-epoch (and final) record ``arch_uniform``: whether the architecture weights are still
    uniform (:func:`~oneshot_darts.derive.still_uniform`; then the derived cell is arbitrary), their
    smallest and largest value, and the tolerance."""
    low, high = weight_range(weights)
    return {"arch_uniform": {"uniform": still_uniform(weights), "weight_range": [round(low, 6), round(high, 6)],
                             "tolerance": UNIFORM_TOLERANCE}}


def uniform_warning(weight_range: Sequence[float]) -> str:
    """The log line of architecture weights still uniform."""
    return (f"the architecture weights are still uniform (every operation weight {weight_range[0]:.4f}-"
            f"{weight_range[1]:.4f}, within {UNIFORM_TOLERANCE:.0%} of 1/8): the derived cell is arbitrary, not "
            "chosen by the search; search longer (more epochs or images) before retraining it")


def run_search(cfg: SearchConfig, *, resume: str | Path | None = None, run_dir: str | Path | None = None,
               on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Search with ``cfg`` (or continue the checkpoint ``resume``) through the core's
    :func:`~core.run_training.train` and write the run folder (see the module docstring)."""
    quiet_nni_imports()
    from oneshot_darts.space import build_supernet

    def build(num_classes: int) -> nn.Module:
        return build_supernet(channels=cfg.channels, layers=cfg.layers, n_nodes=cfg.n_nodes,
                              stem_multiplier=cfg.stem_multiplier, num_classes=num_classes,
                              partial_channels=cfg.partial_channels)

    def describe(search: Trainer) -> str:
        assert isinstance(search, DartsSearch)
        variant = (f"order {cfg.order}" + (f", PC-DARTS K={cfg.partial_channels}" if cfg.partial_channels > 1 else "")
                   + (f", architecture frozen for {count(cfg.arch_warmup_epochs, 'epoch')}"
                      if cfg.arch_warmup_epochs else "")
                   + (f", at most {cfg.max_skip_connect} skip_connect (P-DARTS guard)"
                      if cfg.max_skip_connect != NO_GUARD else ""))
        return (f"darts search ({variant}): supernet of {cfg.layers} cells x {cfg.n_nodes} nodes, C={cfg.channels}, "
                f"{sum(p.numel() for p in search.parameters()):,} weights + "
                f"{sum(p.numel() for p in search.alphas)} architecture weights; {len(search.splits.train):,} "
                f"images for the weights, {len(search.splits.val):,} for the architecture; {epoch_coverage(search)}; "
                f"device {search.device.type}")

    return train(cfg, build, name=cfg.run_name or "darts-search", run_dir=run_dir, resume=resume,
                 eval_splits=("val",), final_test=False, on_epoch=on_epoch, trainer_cls=DartsSearch,
                 describe=describe)


@cli_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from oneshot_darts import protocol

    parser = build_parser(SearchConfig, "python oneshot_darts/search.py", __doc__.splitlines()[0])
    group = parser.add_argument_group("the paper's protocol (oneshot_darts/protocol.py)")
    group.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                       help="run one search per seed, retrain each derived cell for --select-epochs on a validation "
                            "split and keep the best (the DARTS paper: --seeds 0 1 2 3); run the same command again to "
                            "continue it")
    group.add_argument("--select-epochs", type=int, metavar="E",
                       help=f"epochs of each short retrain (default: the paper's {protocol.PAPER_SELECT_EPOCHS})")
    group.add_argument("--select-config", metavar="YAML",
                       help="retrain fields for the short retrains (default: the paper's retrain recipe on the "
                            "search's data, its C 36 x 20 cells shrunk as far as the search's supernet is from C 16 x 8, "
                            f"val_fraction {protocol.SELECT_VAL_FRACTION}; --print-config shows it)")
    args = parser.parse_args(argv)
    if args.resume:
        check_resume_only(SearchConfig, args, extra=("nni", "seeds", "select_epochs", "select_config"))
        cfg, _ = config_from_checkpoint(SearchConfig, args.resume)
        return _finish(run_search(cfg, resume=args.resume))
    if args.seeds is None:
        for name in ("select_epochs", "select_config"):
            if getattr(args, name) is not None:
                raise UserError(f"--{name.replace('_', '-')}: only with --seeds (the paper's protocol)")
    else:
        if args.nni:
            raise UserError("--nni: not allowed with --seeds; the protocol runs its searches and retrains itself "
                            "(run it as a plain command)")
        if "seed" in vars(args):
            raise UserError("--seed: not allowed with --seeds, which gives each search its seed")
    print_protocol = args.seeds is not None and args.print_config
    if print_protocol:
        args.print_config = False        # the protocol prints its searches' and short retrains' configs below
    cfg = config_from_args(SearchConfig, args)
    if args.seeds is not None:
        values = read_yaml(args.select_config) if args.select_config else {}
        epochs = protocol.PAPER_SELECT_EPOCHS if args.select_epochs is None else args.select_epochs
        if print_protocol:
            print(protocol.settings_yaml(cfg, args.seeds, epochs, values, f"--select-config {args.select_config!r}"),
                  end="")
            raise SystemExit(0)
        return _finish(protocol.run_protocol(cfg, args.seeds, epochs, values,
                                             f"--select-config {args.select_config!r}"))
    if args.nni:
        trial = NniTrial.required(START_HINT)
        cfg = config_from_args(SearchConfig, args, overrides=trial.params)
        result = run_search(cfg, run_dir=trial.run_dir, on_epoch=trial.epoch_reporter("val_acc", COLLAPSE_KEYS))
        trial.send_final(final_metrics(result, "val_acc"))
        return _finish(result)
    return _finish(run_search(cfg))


def _finish(result: dict[str, Any]) -> dict[str, Any]:
    print_result(result)
    return result


if __name__ == "__main__":
    main()
