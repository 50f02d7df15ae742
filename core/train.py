"""The one training loop: optimizer factory, cosine schedule, mixed precision on CUDA, per-epoch
metrics and callback, atomic checkpoints every epoch and exact resume."""
from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from core.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from core.config import OPTIMIZER_NAMES, TrainConfig, check_choice, to_dict
from core.data import ImageSet, Splits
from core.errors import UserError
from core.loader import BatchLoader
from core.run import Run, format_metrics

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]
EpochCallback = Callable[[dict[str, Any]], None]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "SGD": torch.optim.SGD,
    "Adadelta": torch.optim.Adadelta,
    "Adagrad": torch.optim.Adagrad,
    "Adam": torch.optim.Adam,
    "Adamax": torch.optim.Adamax,
}
assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is a :class:`UserError`."""
    check_choice("device", name, ("auto", "cpu", "cuda"))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: 'cuda' was asked for but no CUDA GPU is available; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (weights are initialised from them)."""
    random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(name: str, params: Iterable[nn.Parameter], lr: float, momentum: float = 0.9,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The torch optimizer class of that name; only SGD takes ``momentum``."""
    check_choice("optimizer", name, OPTIMIZER_NAMES)
    if name == "SGD":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay)


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, epochs: int,
                    eta_min: float = 0.0) -> torch.optim.lr_scheduler.LRScheduler:
    """'cosine': from the initial rate to ``eta_min`` over ``epochs`` (stepped once per epoch);
    'none': constant."""
    check_choice("scheduler", name, ("cosine", "none"))
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=eta_min)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def logits_of(output: Any) -> torch.Tensor:
    """Networks with auxiliary heads return (logits, aux_logits) in training mode."""
    return output[0] if isinstance(output, (tuple, list)) else output


def cross_entropy(output: Any, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits_of(output), target)


def make_loader(data: ImageSet, cfg: TrainConfig, device: torch.device, splits: Splits, *, train: bool,
                seed: int | None = None) -> BatchLoader:
    """A :class:`BatchLoader` configured from ``cfg`` (augmentation only when ``train``)."""
    return BatchLoader(
        data, batch_size=cfg.batch_size if train else cfg.eval_batch_size, device=device,
        mean=splits.mean, std=splits.std, train=train, crop_padding=cfg.crop_padding, flip=cfg.flip,
        cutout=cfg.cutout, max_batches=cfg.max_batches,
        channels_last=cfg.channels_last and device.type == "cuda", seed=cfg.seed if seed is None else seed)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled``; a no-op on CPU (float32 there)."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, amp: bool = True) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` over ``loader``."""
    model.eval()
    loss = torch.zeros((), device=loader.device)
    correct = torch.zeros((), device=loader.device, dtype=torch.int64)
    seen = 0
    for x, y in loader:
        with autocast(loader.device, amp):
            logits = logits_of(model(x)).float()
        loss += nn.functional.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return {"acc": correct.item() / max(seen, 1), "loss": loss.item() / max(seen, 1)}


class Trainer:
    """Trains ``model`` on ``splits.train`` and evaluates the named splits after every epoch.

    ``eval_splits`` names attributes of ``splits`` ('val', 'test'); the search stages pass only
    'val'. ``loss_fn`` replaces plain cross-entropy (an auxiliary head, say) and ``epoch_start``
    is called with the 0-based epoch index before each epoch (a drop-path schedule, say). With a ``run``,
    every epoch appends to its metrics and log and rewrites its checkpoint atomically; ``arch``
    (an architecture dict) is stored in the checkpoint beside the config.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, splits: Splits, run: Run | None = None, *,
                 eval_splits: Sequence[str] = ("val",), arch: dict[str, Any] | None = None,
                 loss_fn: LossFn = cross_entropy, epoch_start: Callable[[int], None] | None = None):
        self.cfg, self.splits, self.run, self.arch = cfg, splits, run, arch
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed 32x32 shapes: let cuDNN pick its fastest kernels
        self.amp = cfg.amp
        memory_format = torch.channels_last if cfg.channels_last and self.device.type == "cuda" \
            else torch.contiguous_format
        self.model = model.to(self.device, memory_format=memory_format)
        self.loss_fn, self.epoch_start = loss_fn, epoch_start
        self.optimizer = build_optimizer(cfg.optimizer, self.model.parameters(), cfg.lr, cfg.momentum,
                                         cfg.weight_decay)
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer, cfg.epochs)
        self.train_loader = make_loader(splits.train, cfg, self.device, splits, train=True)
        self.eval_loaders: dict[str, BatchLoader] = {}
        for name in eval_splits:
            data = getattr(splits, name)
            if data is None:
                raise UserError(f"cannot evaluate on the {name!r} split: it is empty (val_fraction is 0)")
            self.eval_loaders[name] = make_loader(data, cfg, self.device, splits, train=False)
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []

    # --- checkpoints ---------------------------------------------------------------------------
    def state_dict(self, epoch: int) -> dict[str, Any]:
        """Everything needed to continue after ``epoch`` completed epochs."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,  # epochs completed
            "config": to_dict(self.cfg),
            "arch": self.arch,
            "rng": rng_state(),
            "loader": self.train_loader.state_dict(),
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint: the next :meth:`fit` starts at the epoch after it."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.train_loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        self.history = list(state.get("history", []))
        self.start_epoch = state["epoch"]
        if self.run is not None:
            self.run.truncate_metrics(state["epoch"])

    def resume(self, path) -> None:
        self.load_state_dict(load_checkpoint(path))

    # --- the loop ------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        from tqdm import tqdm

        model, device = self.model, self.device
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        lr = self.optimizer.param_groups[0]["lr"]
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="batch", leave=False,
                   disable=not (self.cfg.progress and sys.stderr.isatty()), file=sys.stderr)
        start = time.perf_counter()
        for step, (x, y) in enumerate(bar):
            with autocast(device, self.amp):
                output = model(x)
                loss = self.loss_fn(output, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            loss_sum += loss.detach().float() * len(y)
            correct += (logits_of(output).detach().argmax(1) == y).sum()
            seen += len(y)
            if step % 20 == 19 and not torch.isfinite(loss_sum):
                raise TrainingDiverged(f"training loss became {loss.item()} at epoch {epoch + 1}, batch {step + 1}")
        train_loss = loss_sum.item() / max(seen, 1)
        seconds = time.perf_counter() - start
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"training loss became {train_loss} in epoch {epoch + 1}")
        self.scheduler.step()
        return {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_acc": correct.item() / max(seen, 1),
                "train_seconds": round(seconds, 3), "images_per_s": round(seen / max(seconds, 1e-9), 1)}

    def evaluate(self, name: str) -> dict[str, float]:
        """Accuracy and loss on a split: a loader of ``eval_splits`` or, on demand, 'val'/'test'."""
        loader = self.eval_loaders.get(name)
        if loader is None:
            data = getattr(self.splits, name)
            if data is None:
                raise UserError(f"cannot evaluate on the {name!r} split: it is empty")
            loader = make_loader(data, self.cfg, self.device, self.splits, train=False)
        return evaluate(self.model, loader, self.amp)

    def fit(self, on_epoch: EpochCallback | None = None) -> list[dict[str, Any]]:
        """Train from :attr:`start_epoch` to ``cfg.epochs``; returns every epoch's metrics."""
        for epoch in range(self.start_epoch, self.cfg.epochs):
            if self.epoch_start is not None:
                self.epoch_start(epoch)
            metrics = self.train_epoch(epoch)
            for name in self.eval_loaders:
                result = self.evaluate(name)
                metrics[f"{name}_acc"], metrics[f"{name}_loss"] = result["acc"], result["loss"]
            self.history.append(metrics)
            if self.run is not None:
                self.run.log_metrics(metrics)
                self.run.log(format_metrics(metrics))
                save_checkpoint(self.run.checkpoint_path, self.state_dict(epoch + 1))
            self.start_epoch = epoch + 1
            if on_epoch is not None:
                on_epoch(metrics)
        return self.history
