"""The one training loop: optimizer factory, cosine schedule, mixed precision on CUDA, per-epoch
metrics and callback, atomic checkpoints every epoch and exact resume."""
from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from core import distributed
from core.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from core.config import OPTIMIZER_NAMES, TrainConfig, to_dict
from core.data import ImageSet, Splits
from core.errors import UserError
from core.loader import BatchLoader
from core.run import Run, format_metrics
from core.speed import compile_model, use_channels_last


def config_id(cfg: Any) -> str:
    """Which command a config (and so a checkpoint) belongs to: its config class, named by its
    module's import name also when the script runs as ``__main__``."""
    cls = cfg if isinstance(cfg, type) else type(cfg)
    module = cls.__module__
    if module == "__main__":
        main = sys.modules["__main__"]
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name:
            module = spec.name
        else:
            from core.paths import REPO_ROOT

            script = Path(main.__file__).resolve()
            # a stage script outside this checkout (NNI's remote service runs an uploaded copy):
            # named by its folder, as from the checkout (hpo/trial.py -> hpo.trial)
            parts = script.relative_to(REPO_ROOT).parts if script.is_relative_to(REPO_ROOT) \
                else (script.parent.name, script.name)
            module = ".".join(Path(*parts).with_suffix("").parts)
    return f"{module}.{cls.__qualname__}"

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]
EpochCallback = Callable[[dict[str, Any]], None]

#: The torch class of every optimizer name the config allows (core.config.Optimizer).
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {name: getattr(torch.optim, name) for name in OPTIMIZER_NAMES}


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite: one line for the user (epoch, batch, what to try)."""

    def __init__(self, epoch: int, step: int, loss: float, cfg: TrainConfig):
        self.epoch, self.step, self.loss = epoch + 1, step, loss
        super().__init__(f"training diverged: the loss became {loss} in epoch {epoch + 1} by batch {step}; "
                         f"try a lower --lr (it is {cfg.lr:g})" + ("" if cfg.grad_clip else " or --grad-clip 5"))


def check_trains(loader: BatchLoader, what: str) -> None:
    """An epoch that trains on no image would report an untrained network as a result: refuse."""
    if len(loader) == 0:
        raise UserError(f"batch_size: {loader.batch_size} is more than the {len(loader.labels)} {what} images, so "
                        "an epoch would train on nothing; lower --batch-size or use more images")


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is a :class:`UserError`."""
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
    if name == "SGD":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay)


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, epochs: int,
                    eta_min: float = 0.0) -> torch.optim.lr_scheduler.LRScheduler:
    """'cosine': from the initial rate to ``eta_min`` over ``epochs`` (stepped once per epoch);
    'none': constant."""
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
        channels_last=use_channels_last(cfg.channels_last, device), seed=cfg.seed if seed is None else seed,
        rank=distributed.rank(), world_size=distributed.world_size())


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled``; a no-op on CPU (float32 there)."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, amp: bool = True) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` over ``loader`` (data-parallel: this rank's
    share of every batch, the sums over all ranks)."""
    model.eval()
    loss = torch.zeros((), device=loader.device)
    correct = torch.zeros((), device=loader.device, dtype=torch.int64)
    seen = 0
    for x, y in loader:
        if not len(y):  # a rank's share of a short last batch can be empty
            continue
        with autocast(loader.device, amp):
            logits = logits_of(model(x)).float()
        loss += nn.functional.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    loss, correct, seen = distributed.all_sum(loss, correct, torch.tensor(seen))
    seen = int(seen.item())
    return {"acc": correct.item() / max(seen, 1), "loss": loss.item() / max(seen, 1)}


class Trainer:
    """The one training engine: trains ``model`` on ``splits.train`` and evaluates the named splits
    after every epoch.

    ``eval_splits`` names attributes of ``splits`` ('val', 'test'); the search stages pass only
    'val'. ``loss_fn`` replaces plain cross-entropy (an auxiliary head, say) and ``epoch_start``
    is called with the 0-based epoch index before each epoch (a drop-path schedule, say). With a
    :attr:`run`, every epoch appends to its metrics and log and rewrites its checkpoint atomically;
    ``arch`` (an architecture dict) is stored in the checkpoint beside the config.

    A stage that trains differently specialises the hooks, and keeps everything else (memory
    format, mixed precision, the progress bar, the divergence check, metrics, checkpoints, exact
    resume): :meth:`parameters` (what :attr:`optimizer` steps), :meth:`batches` (what one epoch
    iterates), :meth:`train_step` (one step on one batch), :meth:`extra_state` /
    :meth:`load_extra_state` (more checkpoint entries), :meth:`epoch_end` (more per-epoch metrics
    and files) and :meth:`finish` (more of the final result). The DARTS search is one.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, splits: Splits, run: Run | None = None, *,
                 eval_splits: Sequence[str] = ("val",), arch: dict[str, Any] | None = None,
                 loss_fn: LossFn = cross_entropy, epoch_start: Callable[[int], None] | None = None):
        self.cfg, self.splits, self.run, self.arch = cfg, splits, run, arch
        self.device = distributed.setup(resolve_device(cfg.device))  # torchrun: this rank's device
        if distributed.world_size() > 1 and type(self).train_step is not Trainer.train_step:
            raise UserError(f"{type(self).__name__} trains in one process only (its step is not data-parallel); "
                            "run it without torchrun")
        distributed.check_batch(cfg.batch_size)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed 32x32 shapes: let cuDNN pick its fastest kernels
        self.amp = cfg.amp
        memory_format = torch.channels_last if use_channels_last(cfg.channels_last, self.device) \
            else torch.contiguous_format
        self.model = distributed.prepare_model(model, self.device).to(self.device, memory_format=memory_format)
        # what runs (compiled, and DistributedDataParallel under torchrun); self.model is what is saved
        self.net = distributed.data_parallel(compile_model(self.model, cfg.compile), self.device)
        self.loss_fn, self.epoch_start = loss_fn, epoch_start
        self.optimizer = build_optimizer(cfg.optimizer, self.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer, cfg.epochs, eta_min=cfg.lr_min)
        self.train_loader = make_loader(splits.train, cfg, self.device, splits, train=True)
        check_trains(self.train_loader, "training")
        self.eval_loaders: dict[str, BatchLoader] = {}
        for name in eval_splits:
            data = getattr(splits, name)
            if data is None:
                raise UserError(f"cannot evaluate on the {name!r} split: it is empty (val_fraction is 0)")
            self.eval_loaders[name] = make_loader(data, cfg, self.device, splits, train=False)
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []

    # --- hooks a specialisation may replace ------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        """The parameters :attr:`optimizer` trains."""
        return list(self.model.parameters())

    def batches(self) -> Iterable[Any]:
        """What one epoch iterates; each item goes to :meth:`train_step`."""
        return self.train_loader

    def train_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One optimisation step on ``batch``; returns the detached ``loss``, ``logits`` and
        ``target`` (and any other scalar tensors, averaged over the epoch into the metrics)."""
        x, y = batch
        with autocast(self.device, self.amp):
            output = self.net(x)
            loss = self.loss_fn(output, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return {"loss": loss.detach(), "logits": logits_of(output).detach(), "target": y}

    def extra_state(self) -> dict[str, Any]:
        """Checkpoint entries beyond the engine's own."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    def epoch_end(self, metrics: dict[str, Any]) -> None:
        """Called after an epoch's evaluation, before its metrics and checkpoint are written."""

    def finish(self) -> dict[str, Any]:
        """Entries added to the final result once every epoch ran."""
        return {}

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
            "writer": config_id(self.cfg),  # which command's checkpoint this is (checked on resume)
            **self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint: the next :meth:`fit` starts at the epoch after it."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.train_loader.load_state_dict(state["loader"])
        self.load_extra_state(state)
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

        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = steps = 0
        lr = self.optimizer.param_groups[0]["lr"]
        batches = self.batches()
        bar = tqdm(batches, total=len(batches) if hasattr(batches, "__len__") else None,
                   desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="step", leave=False,
                   disable=not (self.cfg.progress and sys.stderr.isatty()), file=sys.stderr)
        start = time.perf_counter()
        for batch in bar:
            out = self.train_step(batch)
            target = out.pop("target")
            correct += (out.pop("logits").argmax(1) == target).sum()
            n = len(target)
            for key, value in out.items():
                total = sums.get(key)
                sums[key] = value.float() * n if total is None else total + value.float() * n
            seen += n
            steps += 1
            if steps % 20 == 0 and not torch.isfinite(distributed.all_sum(sums["loss"])[0]):
                raise TrainingDiverged(epoch, steps, out["loss"].item(), self.cfg)
        seconds = time.perf_counter() - start
        # data-parallel: the epoch's figures over every rank's share (images_per_s is the total)
        seen_t, correct, *totals = distributed.all_sum(torch.tensor(seen), correct, *sums.values())
        seen, sums = int(seen_t.item()), dict(zip(sums, totals))
        means = {key: total.item() / max(seen, 1) for key, total in sums.items()}
        if not math.isfinite(means.get("loss", 0.0)):
            raise TrainingDiverged(epoch, steps, means["loss"], self.cfg)
        self.scheduler.step()
        metrics = {"epoch": epoch + 1, "lr": lr, "train_loss": means.pop("loss", 0.0),
                   "train_acc": correct.item() / max(seen, 1)}
        metrics.update(means)  # what a specialised step adds, under the names it gave
        metrics.update({"train_seconds": round(seconds, 3), "step_seconds": round(seconds / max(steps, 1), 4),
                        "images_per_s": round(seen / max(seconds, 1e-9), 1)})
        return metrics

    def evaluate(self, name: str) -> dict[str, float]:
        """Accuracy and loss on a split: a loader of ``eval_splits`` or, on demand, 'val'/'test'."""
        loader = self.eval_loaders.get(name)
        if loader is None:
            data = getattr(self.splits, name)
            if data is None:
                raise UserError(f"cannot evaluate on the {name!r} split: it is empty")
            loader = make_loader(data, self.cfg, self.device, self.splits, train=False)
        distributed.sync_buffers(self.model)  # every rank evaluates rank 0's network
        return evaluate(distributed.unwrap(self.net), loader, self.amp)

    def fit(self, on_epoch: EpochCallback | None = None) -> list[dict[str, Any]]:
        """Train from :attr:`start_epoch` to ``cfg.epochs``; returns every epoch's metrics."""
        for epoch in range(self.start_epoch, self.cfg.epochs):
            if self.epoch_start is not None:
                self.epoch_start(epoch)
            metrics = self.train_epoch(epoch)
            for name in self.eval_loaders:
                result = self.evaluate(name)
                metrics[f"{name}_acc"], metrics[f"{name}_loss"] = result["acc"], result["loss"]
            self.epoch_end(metrics)
            self.history.append(metrics)
            if self.run is not None:
                self.run.log_metrics(metrics)
                self.run.log(format_metrics(metrics))
                save_checkpoint(self.run.checkpoint_path, self.state_dict(epoch + 1))
            self.start_epoch = epoch + 1
            if on_epoch is not None and distributed.is_main():  # one report per epoch (rank 0's)
                on_epoch(metrics)
        return self.history
