"""DARTS search (first order): ``python oneshot_darts/search.py [--config configs/darts_search.yaml]``.

NNI 3.0's ``strategy.DARTS`` turns :class:`~oneshot_darts.space.DartsSpace` into its differentiable
supernet (``mutate_model``: every cell becomes NNI's ``DifferentiableMixedCell``, a softmax over the
seven operations and 'none' on every edge). The bilevel step is the strategy's own first-order one
(``DartsLightningModule.training_step``): an Adam step of the architecture weights on a batch of the
second half of the training split, then an SGD step of the network weights on a batch of the first
half. It runs as the step of the project's one training engine (:class:`DartsSearch`, a
:class:`~core.train.Trainer`) rather than in Lightning, so that it checkpoints and resumes exactly
like every other command (optimizers, schedule, loaders' random state, every epoch). The test split
is never read.

The run folder gets ``final_arch.json`` (this project's architecture format; ``retrain.py --arc``
reads it), ``arch_weights.json`` (the softmax weights of every edge, rewritten every epoch),
``metrics.jsonl`` (per epoch: losses, validation accuracy on the second half, the derived
architecture and the softmax weight of every operation on every edge), ``train.log``, ``config.yaml``, ``checkpoint.pt`` and ``result.json``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from core.checkpoint import atomic_write_text
from core.config import TrainConfig, check_resume_only, config_from_args, field
from core.data import Splits
from core.errors import UserError, cli_main
from core.nni_trial import NniTrial, final_metrics, quiet_nni_imports
from core.run import Run
from core.runner import config_from_checkpoint, train
from core.train import Trainer, autocast, check_trains, make_loader
from oneshot_darts.arch import CELLS, FIRST_NODE, Genotype, canonical_node
from oneshot_darts.common import START_HINT, build_parser, check_network_shape
from oneshot_darts.ops import OP_NAMES

FINAL_ARCH_FILE = "final_arch.json"
WEIGHTS_FILE = "arch_weights.json"
NONE_OP = "none"


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
    arch_lr: float = field(3e-4, "Adam learning rate of the architecture weights")
    arch_beta1: float = field(0.5, "Adam beta1 of the architecture weights")
    arch_beta2: float = field(0.999, "Adam beta2 of the architecture weights")
    arch_weight_decay: float = field(1e-3, "weight decay of the architecture weights")

    def validate(self) -> None:
        super().validate()
        if not self.val_fraction > 0:
            raise UserError("val_fraction: 0 is not allowed for the search; it needs a second half of the training "
                            "split for the architecture weights (the paper's 0.5)")
        check_network_shape(self.layers, channels=self.channels, n_nodes=self.n_nodes,
                            stem_multiplier=self.stem_multiplier)
        if self.compile == "on":
            raise UserError("compile: not supported by the search, whose own step runs the supernet (NNI's mixed "
                            "operations over every candidate) for two optimizers; compile the retrain instead")
        if not self.arch_lr > 0 or self.arch_weight_decay < 0:
            raise UserError("arch_lr must be positive and arch_weight_decay 0 or more")
        for name in ("arch_beta1", "arch_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"{name}: {getattr(self, name)} is not in [0, 1)")


# --- deriving the architecture -------------------------------------------------------------------

def edge_weights(alphas: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, float]]:
    """Softmax weights of every edge: ``{'normal/3_1': {'max_pool_3x3': w, ..., 'none': w}}``
    (keys as NNI's ``export_probs`` names the cell's edges)."""
    names = (*OP_NAMES, NONE_OP)
    return {f"{cell}/{edge}": dict(zip(names, torch.softmax(alpha.float(), -1).tolist()))
            for cell in CELLS for edge, alpha in alphas[cell].items()}


def derive_genotype(weights: dict[str, dict[str, float]], n_nodes: int) -> Genotype:
    """The paper's rule: for every node keep the two incoming edges whose strongest operation
    ('none' excluded) has the largest softmax weight, each with that operation.

    (NNI's ``DifferentiableMixedCell.export`` ranks the raw logits instead of the softmax weights;
    the two differ when edges' softmax normalisers differ, and the paper's is used here.)
    """
    cells = {}
    for cell in CELLS:
        nodes = []
        for n in range(FIRST_NODE, FIRST_NODE + n_nodes):
            best = []
            for j in range(n):
                w = weights[f"{cell}/{n}_{j}"]
                op = max(OP_NAMES, key=lambda name: w[name])  # first of equal maxima: table order
                best.append((w[op], j, op))
            best.sort(key=lambda t: -t[0])  # stable: equal strengths keep the lower input first
            nodes.append(canonical_node([(op, j) for _, j, op in best[:2]]))
        cells[cell] = tuple(nodes)
    return Genotype(**cells)


# --- the search ----------------------------------------------------------------------------------

class DartsSearch(Trainer):
    """The core engine with DARTS's bilevel step: the supernet's network weights are what the
    core's optimizer and schedule train; the architecture weights get their own Adam optimizer and
    a second loader over the other half of the training split. Everything else (loop, metrics,
    checkpoints, exact resume, divergence check) is :class:`~core.train.Trainer`'s."""

    def __init__(self, model: nn.Module, cfg: SearchConfig, splits: Splits, run: Run | None = None, **kwargs: Any):
        from oneshot_darts.space import arch_parameters

        if splits.val is None:
            raise UserError("val_fraction: the search needs the second half of the training split")
        self.alphas = arch_parameters(model)
        super().__init__(model, cfg, splits, run, **kwargs)
        # the DARTS strategy's architecture optimizer (DartsLightningModule.configure_architecture_optimizers)
        self.a_optimizer = torch.optim.Adam(self.alphas, lr=cfg.arch_lr, betas=(cfg.arch_beta1, cfg.arch_beta2),
                                            weight_decay=cfg.arch_weight_decay)
        self.arch_loader = make_loader(splits.val, cfg, self.device, splits, train=True, seed=cfg.seed + 1)
        check_trains(self.arch_loader, "architecture-half")

    def parameters(self) -> list[nn.Parameter]:
        alpha_ids = {id(p) for p in self.alphas}
        return [p for p in self.model.parameters() if id(p) not in alpha_ids]

    def batches(self) -> Iterable[Any]:
        return _Zip(self.train_loader, self.arch_loader)

    def train_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One DARTS step: the architecture weights descend the loss of a batch of the second half
        (first order: the network weights are taken as they are), then the network weights descend
        the loss of a batch of the first half."""
        (x, y), (xa, ya) = batch
        model, device, amp = self.model, self.device, self.cfg.amp
        with autocast(device, amp):
            arch_loss = nn.functional.cross_entropy(model(xa), ya)
        self.a_optimizer.zero_grad(set_to_none=True)
        arch_loss.backward(inputs=self.alphas)  # no gradients of the network weights are computed
        self.a_optimizer.step()
        weights = self.optimizer.param_groups[0]["params"]
        with autocast(device, amp):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=weights)
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(weights, self.cfg.grad_clip)
        self.optimizer.step()
        return {"loss": loss.detach(), "logits": logits.detach(), "target": y, "arch_loss": arch_loss.detach()}

    def extra_state(self) -> dict[str, Any]:
        return {"a_optimizer": self.a_optimizer.state_dict(), "arch_loader": self.arch_loader.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.a_optimizer.load_state_dict(state["a_optimizer"])
        self.arch_loader.load_state_dict(state["arch_loader"])

    # --- architecture read-outs ---
    def edge_weights(self) -> dict[str, dict[str, float]]:
        from oneshot_darts.space import edge_alphas

        return edge_weights(edge_alphas(self.model))

    def genotype(self) -> Genotype:
        return derive_genotype(self.edge_weights(), self.cfg.n_nodes)

    def epoch_end(self, metrics: dict[str, Any]) -> None:
        """The architecture so far, and the softmax weight of every operation on every edge."""
        weights = self.edge_weights()
        genotype = derive_genotype(weights, self.cfg.n_nodes)
        metrics["arch"], metrics["edge_weights"] = genotype.to_json(), weights
        if self.run is not None:
            self.run.log(f"architecture after epoch {metrics['epoch']}: {genotype.describe()}")
            atomic_write_text(self.run.dir / WEIGHTS_FILE, json.dumps(weights, indent=1) + "\n")

    def finish(self) -> dict[str, Any]:
        genotype = self.genotype()
        result = {"arch": genotype.to_json()}
        if self.run is not None:
            path = self.run.dir / FINAL_ARCH_FILE
            atomic_write_text(path, genotype.dumps())
            result["final_arch"] = str(path)
            self.run.log(f"final architecture: {genotype.describe()}")
            self.run.log(f"wrote {path}; retrain it with: python oneshot_darts/retrain.py --arch {path}")
        return result


class _Zip:
    """Both halves' batches side by side, with a length (for the progress bar)."""

    def __init__(self, *loaders: Any):
        self.loaders = loaders

    def __len__(self) -> int:
        return min(len(loader) for loader in self.loaders)

    def __iter__(self):
        return zip(*self.loaders)


def run_search(cfg: SearchConfig, *, resume: str | Path | None = None, run_dir: str | Path | None = None,
               on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Search with ``cfg`` (or continue the checkpoint ``resume``) through the core's
    :func:`~core.runner.train` and write the run folder (see the module docstring)."""
    quiet_nni_imports()
    from oneshot_darts.space import build_supernet

    def build(num_classes: int) -> nn.Module:
        return build_supernet(channels=cfg.channels, layers=cfg.layers, n_nodes=cfg.n_nodes,
                              stem_multiplier=cfg.stem_multiplier, num_classes=num_classes)

    def describe(search: Trainer) -> str:
        assert isinstance(search, DartsSearch)
        return (f"darts search: supernet of {cfg.layers} cells x {cfg.n_nodes} nodes, C={cfg.channels}, "
                f"{sum(p.numel() for p in search.parameters()):,} weights + "
                f"{sum(p.numel() for p in search.alphas)} architecture weights; {len(search.splits.train):,} "
                f"images for the weights, {len(search.splits.val):,} for the architecture; device "
                f"{search.device.type}")

    return train(cfg, build, name=cfg.run_name or "darts-search", run_dir=run_dir, resume=resume,
                 eval_splits=("val",), final_test=False, on_epoch=on_epoch, trainer_cls=DartsSearch,
                 describe=describe)


@cli_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser(SearchConfig, "python oneshot_darts/search.py", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    if args.resume:
        check_resume_only(SearchConfig, args, extra=("nni",))
        cfg, _ = config_from_checkpoint(SearchConfig, args.resume)
        return _finish(run_search(cfg, resume=args.resume))
    cfg = config_from_args(SearchConfig, args)
    if args.nni:
        trial = NniTrial.required(START_HINT)
        cfg = config_from_args(SearchConfig, args, overrides=trial.params)
        result = run_search(cfg, run_dir=trial.run_dir, on_epoch=trial.epoch_reporter("val_acc"))
        trial.send_final(final_metrics(result, "val_acc"))
        return _finish(result)
    return _finish(run_search(cfg))


def _finish(result: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
