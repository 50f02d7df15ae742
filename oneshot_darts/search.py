"""DARTS search (first order): ``python oneshot_darts/search.py [--config configs/darts_search.yaml]``.

NNI 3.0's ``strategy.DARTS`` turns :class:`~oneshot_darts.space.DartsSpace` into its differentiable
supernet (``mutate_model``: every cell becomes NNI's ``DifferentiableMixedCell``, a softmax over the
seven operations and 'none' on every edge). The bilevel step is the strategy's own first-order one
(``DartsLightningModule.training_step``): an Adam step of the architecture weights on a batch of the
second half of the training split, then an SGD step of the network weights on a batch of the first
half. It runs here in this loop rather than in Lightning so that it checkpoints and resumes exactly
like the rest of the project (optimizers, schedule, loaders' random state, every epoch). The test
split is never read.

The run folder gets ``final_arch.json`` (this project's architecture format; ``retrain.py --arc``
reads it), ``arch_weights.json`` (the softmax weights of every edge, rewritten every epoch),
``metrics.jsonl`` (per epoch: losses, validation accuracy on the second half, the derived
architecture), ``train.log``, ``config.yaml``, ``checkpoint.pt`` and ``result.json``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from core.checkpoint import atomic_write_text, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from core.config import TrainConfig, check_resume_only, config_from_args, to_dict
from core.data import Splits
from core.errors import UserError, cli_main
from core.run import Run, format_metrics
from core.runner import RESULT_FILE, config_from_checkpoint, load_splits, open_run
from core.train import (TrainingDiverged, autocast, build_optimizer, build_scheduler, evaluate, make_loader,
                        resolve_device, seed_everything)
from core.nni_trial import NniTrial, final_metrics
from oneshot_darts.arch import CELLS, FIRST_NODE, Genotype, canonical_node
from oneshot_darts.common import START_HINT, build_parser, check_network_shape, field, quiet_nni_imports
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
        check_network_shape(self, ("channels", "n_nodes", "stem_multiplier"))
        if self.lr_min < 0 or not self.arch_lr > 0 or self.arch_weight_decay < 0:
            raise UserError("lr_min and arch_weight_decay must be 0 or more, arch_lr positive")
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

class Search:
    """The supernet, its two optimizers, the two halves' loaders, and the per-epoch loop."""

    def __init__(self, cfg: SearchConfig, splits: Splits, run: Run | None = None):
        from oneshot_darts.space import arch_parameters, build_supernet

        if splits.val is None:
            raise UserError("val_fraction: the search needs the second half of the training split")
        self.cfg, self.splits, self.run = cfg, splits, run
        self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        model = build_supernet(channels=cfg.channels, layers=cfg.layers, n_nodes=cfg.n_nodes,
                               stem_multiplier=cfg.stem_multiplier, num_classes=splits.num_classes)
        memory_format = torch.channels_last if cfg.channels_last and self.device.type == "cuda" \
            else torch.contiguous_format
        self.model = model.to(self.device, memory_format=memory_format)
        self.alphas = arch_parameters(self.model)
        alpha_ids = {id(p) for p in self.alphas}
        self.weights = [p for p in self.model.parameters() if id(p) not in alpha_ids]
        self.w_optimizer = build_optimizer(cfg.optimizer, self.weights, cfg.lr, cfg.momentum, cfg.weight_decay)
        # the DARTS strategy's architecture optimizer (DartsLightningModule.configure_architecture_optimizers)
        self.a_optimizer = torch.optim.Adam(self.alphas, lr=cfg.arch_lr, betas=(cfg.arch_beta1, cfg.arch_beta2),
                                            weight_decay=cfg.arch_weight_decay)
        self.scheduler = build_scheduler(cfg.scheduler, self.w_optimizer, cfg.epochs, eta_min=cfg.lr_min)
        self.train_loader = make_loader(splits.train, cfg, self.device, splits, train=True)
        self.arch_loader = make_loader(splits.val, cfg, self.device, splits, train=True, seed=cfg.seed + 1)
        self.val_loader = make_loader(splits.val, cfg, self.device, splits, train=False)
        self.epochs_done = 0
        self.history: list[dict[str, Any]] = []

    @property
    def n_weights(self) -> int:
        return sum(p.numel() for p in self.weights)

    # --- architecture read-outs ---
    def edge_weights(self) -> dict[str, dict[str, float]]:
        from oneshot_darts.space import edge_alphas

        return edge_weights(edge_alphas(self.model))

    def genotype(self) -> Genotype:
        return derive_genotype(self.edge_weights(), self.cfg.n_nodes)

    # --- checkpoints ---
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "w_optimizer": self.w_optimizer.state_dict(),
            "a_optimizer": self.a_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epochs_done,  # epochs completed
            "config": to_dict(self.cfg),
            "rng": rng_state(),
            "loaders": {"train": self.train_loader.state_dict(), "arch": self.arch_loader.state_dict()},
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        self.a_optimizer.load_state_dict(state["a_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.train_loader.load_state_dict(state["loaders"]["train"])
        self.arch_loader.load_state_dict(state["loaders"]["arch"])
        set_rng_state(state["rng"])
        self.history = list(state["history"])
        self.epochs_done = state["epoch"]
        if self.run is not None:
            self.run.truncate_metrics(self.epochs_done)

    # --- one step, one epoch, the loop ---
    def step(self, x: torch.Tensor, y: torch.Tensor, xa: torch.Tensor, ya: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One DARTS step: the architecture weights descend the loss of a batch of the second half
        (first order: the network weights are taken as they are), then the network weights descend
        the loss of a batch of the first half. Returns (weight loss, logits, architecture loss)."""
        model, device, amp = self.model, self.device, self.cfg.amp
        with autocast(device, amp):
            arch_loss = nn.functional.cross_entropy(model(xa), ya)
        self.a_optimizer.zero_grad(set_to_none=True)
        arch_loss.backward(inputs=self.alphas)  # no gradients of the network weights are computed
        self.a_optimizer.step()
        with autocast(device, amp):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
        self.w_optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=self.weights)
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.weights, self.cfg.grad_clip)
        self.w_optimizer.step()
        return loss.detach(), logits.detach(), arch_loss.detach()

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        from tqdm import tqdm

        self.model.train()
        device = self.device
        loss_sum = torch.zeros((), device=device)
        arch_loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = steps = 0
        lr = self.w_optimizer.param_groups[0]["lr"]
        batches = zip(self.train_loader, self.arch_loader)
        bar = tqdm(batches, total=min(len(self.train_loader), len(self.arch_loader)), unit="step", leave=False,
                   desc=f"search epoch {epoch + 1}/{self.cfg.epochs}", file=sys.stderr,
                   disable=not (self.cfg.progress and sys.stderr.isatty()))
        start = time.perf_counter()
        for (x, y), (xa, ya) in bar:
            loss, logits, arch_loss = self.step(x, y, xa, ya)
            loss_sum += loss.float() * len(y)
            arch_loss_sum += arch_loss.float() * len(ya)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            steps += 1
            if steps % 20 == 0 and not torch.isfinite(loss_sum):
                raise TrainingDiverged(f"search loss became {loss.item()} at epoch {epoch + 1}, step {steps}")
        seconds = time.perf_counter() - start
        train_loss = loss_sum.item() / max(seen, 1)
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"search loss became {train_loss} in epoch {epoch + 1}")
        self.scheduler.step()
        return {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_acc": correct.item() / max(seen, 1),
                "arch_loss": arch_loss_sum.item() / max(seen, 1), "train_seconds": round(seconds, 3),
                "step_seconds": round(seconds / max(steps, 1), 4)}

    def fit(self, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        for epoch in range(self.epochs_done, self.cfg.epochs):
            metrics = self.train_epoch(epoch)
            val = evaluate(self.model, self.val_loader, self.cfg.amp)
            metrics["val_acc"], metrics["val_loss"] = val["acc"], val["loss"]
            weights = self.edge_weights()
            genotype = derive_genotype(weights, self.cfg.n_nodes)
            metrics["arch"] = genotype.to_json()
            self.history.append(metrics)
            self.epochs_done = epoch + 1
            if self.run is not None:
                self.run.log_metrics(metrics)
                self.run.log(format_metrics({k: v for k, v in metrics.items() if k != "arch"}))
                self.run.log(f"architecture after epoch {epoch + 1}: {genotype.describe()}")
                atomic_write_text(self.run.dir / WEIGHTS_FILE, json.dumps(weights, indent=1) + "\n")
                save_checkpoint(self.run.checkpoint_path, self.state_dict())
            if on_epoch is not None:
                on_epoch(metrics)
        return self.history


def run_search(cfg: SearchConfig, *, resume: str | Path | None = None, run_dir: str | Path | None = None,
               on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Search with ``cfg`` (or continue the checkpoint ``resume``) and write the run folder.

    The folder is the checkpoint's when resuming, else ``run_dir`` (an NNI trial's) or a new
    ``cfg.out_dir/darts-search-<time>``, created only once the data loaded.
    """
    quiet_nni_imports()
    state = load_checkpoint(resume) if resume else None
    splits = load_splits(cfg)
    run = open_run(cfg, "darts-search", run_dir=run_dir, resume=resume)
    search = Search(cfg, splits, run)
    run.log(f"darts search: supernet of {cfg.layers} cells x {cfg.n_nodes} nodes, C={cfg.channels}, "
            f"{search.n_weights:,} weights + {sum(p.numel() for p in search.alphas)} architecture weights; "
            f"{len(splits.train):,} images for the weights, {len(splits.val):,} for the architecture; "
            f"device {search.device.type}; run folder {run.dir}")
    if state is not None:
        search.load_state_dict(state)
        run.log(f"resumed from {resume} after epoch {state['epoch']}")
    history = search.fit(on_epoch=on_epoch)
    genotype = search.genotype()
    atomic_write_text(run.dir / FINAL_ARCH_FILE, genotype.dumps())
    last = history[-1] if history else {}
    result = {**{k: v for k, v in last.items() if k != "arch"}, "arch": genotype.to_json(),
              "weights": search.n_weights, "run_dir": str(run.dir),
              "final_arch": str(run.dir / FINAL_ARCH_FILE)}
    atomic_write_text(run.dir / RESULT_FILE, json.dumps(result, indent=2) + "\n")
    run.log(f"final architecture: {genotype.describe()}")
    run.log(f"wrote {run.dir / FINAL_ARCH_FILE}; retrain it with: python oneshot_darts/retrain.py --arc "
            f"{run.dir / FINAL_ARCH_FILE}")
    return result


@cli_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser(SearchConfig, "python oneshot_darts/search.py", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    if args.resume:
        check_resume_only(SearchConfig, args, extra=("nni",))
        cfg, _ = config_from_checkpoint(SearchConfig, args.resume)
        return _finish(run_search(cfg, resume=args.resume))
    if args.nni:
        trial = NniTrial.required(START_HINT)
        cfg = config_from_args(SearchConfig, args, overrides=trial.params)
        result = run_search(cfg, run_dir=trial.run_dir, on_epoch=trial.epoch_reporter("val_acc"))
        trial.send_final(final_metrics(result, "val_acc"))
        return _finish(result)
    return _finish(run_search(config_from_args(SearchConfig, args)))


def _finish(result: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
