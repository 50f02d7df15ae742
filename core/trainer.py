"""The one training loop: optimizer factory, cosine schedule, mixed precision per GPU, per-epoch
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
from core import speed
from core.checkpoint import load_checkpoint, rng_of_rank, rng_state, rng_states, save_checkpoint, set_rng_state
from core.config import OPTIMIZER_NAMES, TrainConfig, to_dict
from core.data import ImageSet, Splits
from core.device import GiB, cpu_reason, data_fits, free_memory, out_of_memory_message, resolve_device
from core.errors import UserError
from core.loader import BatchLoader
from core.run_folder import Run, format_metrics
from core.speed import Precision, choose_precision


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


#: How a divergence message names an evaluated split.
SPLIT_NAMES = {"val": "validation", "test": "test"}


class TrainingDiverged(UserError):
    """The network stopped computing numbers: the training loss became NaN or infinite (``step``:
    by which batch), or an evaluation of a split (``split``) gave a non-finite loss or non-finite
    outputs (``nonfinite`` of ``images`` images). One line for the user (epoch, where, what to try);
    every stage treats both alike (:func:`experiments.nni_trial.run_search_trial`: a diverged trial)."""

    def __init__(self, epoch: int, step: int | None, loss: float, cfg: TrainConfig, *, split: str | None = None,
                 nonfinite: int = 0, images: int = 0):
        self.epoch, self.step, self.loss, self.split = epoch + 1, step, loss, split
        if split is None:
            where = f"the loss became {loss} in epoch {epoch + 1} by batch {step}"
        else:
            where = (f"the network no longer computes on the {SPLIT_NAMES.get(split, split)} split in epoch {epoch + 1} "
                     f"(loss {loss}; {nonfinite} of {images} images with a non-finite output)")
        super().__init__(f"training diverged: {where}; try a lower --lr (it is {cfg.lr:g})"
                         + ("" if cfg.grad_clip else " or --grad-clip 5"))


def check_trains(loader: BatchLoader, what: str) -> None:
    """An epoch that trains on no image would report an untrained network as a result: refuse."""
    if len(loader) == 0:
        raise UserError(f"batch_size: {loader.batch_size} is more than the {len(loader.labels)} {what} images, so "
                        "an epoch would train on nothing; lower --batch-size or use more images")


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
                seed: int | None = None, channels_last: bool | None = None, resident: bool = True) -> BatchLoader:
    """A :class:`BatchLoader` configured from ``cfg`` (augmentation only when ``train``), in the
    memory format ``channels_last`` (``None``: the device's rule for ``cfg.channels_last``), with the
    data on ``device`` or, ``resident=False``, in host memory. A :class:`Trainer` makes its loaders
    with :meth:`Trainer.make_loader`, which passes its own decisions."""
    if channels_last is None:
        channels_last = speed.use_channels_last(cfg.channels_last, device, None,
                                                choose_precision(device, cfg.amp, can_scale=False))
    return BatchLoader(
        data, batch_size=cfg.batch_size if train else cfg.eval_batch_size, device=device,
        mean=splits.mean, std=splits.std, train=train, crop_padding=cfg.crop_padding, flip=cfg.flip,
        cutout=cfg.cutout, max_batches=cfg.max_batches, channels_last=channels_last,
        seed=cfg.seed if seed is None else seed, rank=distributed.rank(), world_size=distributed.world_size(),
        resident=resident)


def autocast(device: torch.device, precision: Precision | bool) -> contextlib.AbstractContextManager:
    """Autocast to ``precision``'s 16-bit dtype (nothing for float32). A bare ``True`` / ``False``
    (``cfg.amp``) is resolved by :func:`core.speed.choose_precision` for a step without a gradient
    scaler (bf16 where the GPU has it, else float32)."""
    if not isinstance(precision, Precision):
        precision = choose_precision(device, precision, can_scale=False)
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=precision.dtype)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: BatchLoader, precision: Precision | bool = False) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` over ``loader`` in ``precision``, how many
    images they were measured on (``images``: what a reader needs for the accuracy's standard error;
    data-parallel: this rank's share of every batch, the sums over all ranks) and how many of them
    got an output that is not a finite number (``nonfinite``: the network no longer computes)."""
    model.eval()
    loss = torch.zeros((), device=loader.device)
    correct = torch.zeros((), device=loader.device, dtype=torch.int64)
    nonfinite = torch.zeros((), device=loader.device, dtype=torch.int64)
    seen = 0
    for x, y in loader:
        if not len(y):  # a rank's share of a short last batch can be empty
            continue
        with autocast(loader.device, precision):
            logits = logits_of(model(x)).float()
        loss += nn.functional.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        nonfinite += (~torch.isfinite(logits)).any(1).sum()
        seen += len(y)
    loss, correct, nonfinite, seen_t = distributed.all_sum(loss, correct, nonfinite, seen)
    seen = int(seen_t.item())
    return {"acc": correct.item() / max(seen, 1), "loss": loss.item() / max(seen, 1), "images": seen,
            "nonfinite": int(nonfinite.item())}


class OutOfMemory(UserError):
    """The device ran out of memory: one line naming model, batch size and what to try."""


class Trainer:
    """The one training engine: trains ``model`` on ``splits.train`` and evaluates the named splits
    after every epoch.

    ``eval_splits`` names attributes of ``splits`` ('val', 'test'); the search stages pass only
    'val'. ``loss_fn`` replaces plain cross-entropy (an auxiliary head, say) and ``epoch_start``
    is called with the 0-based epoch index before each epoch (a drop-path schedule, say); ``notes``
    is what the stage knows of its network for the speed choices (:class:`core.speed.ModelNotes`).
    With a :attr:`run`, every epoch appends to its metrics and log and rewrites its checkpoint
    atomically; ``arch`` (an architecture dict) is stored in the checkpoint beside the config.

    A stage that trains differently specialises the hooks, and keeps everything else (memory
    format, mixed precision, the progress bar, the divergence check, metrics, checkpoints, exact
    resume): :meth:`parameters` (what :attr:`optimizer` steps), :meth:`batches` (what one epoch
    iterates), :meth:`train_step` (one step on one batch), :meth:`extra_state` /
    :meth:`load_extra_state` (more checkpoint entries), :meth:`epoch_end` (more per-epoch metrics
    and files) and :meth:`finish` (more of the final result). The DARTS search is one. A specialised
    step computes under ``autocast(self.device, self.precision)`` and, to be allowed fp16 on GPUs
    without bf16, scales its losses with :attr:`scaler` and sets :attr:`uses_grad_scaler`; it makes
    more loaders with :meth:`make_loader` (the trainer's memory format and data placement).
    """

    #: Whether a specialised :meth:`train_step` scales its loss with :attr:`scaler` (as the engine's
    #: own step does); only then may the engine choose fp16, which needs it (``core.speed``).
    uses_grad_scaler: bool = False

    def __init__(self, model: nn.Module, cfg: TrainConfig, splits: Splits, run: Run | None = None, *,
                 eval_splits: Sequence[str] = ("val",), arch: dict[str, Any] | None = None,
                 loss_fn: LossFn = cross_entropy, epoch_start: Callable[[int], None] | None = None,
                 notes: speed.ModelNotes | None = None):
        self.cfg, self.splits, self.run, self.arch = cfg, splits, run, arch
        self.device = distributed.setup(resolve_device(cfg.device))  # torchrun: this rank's device
        if distributed.world_size() > 1 and type(self).train_step is not Trainer.train_step:
            raise UserError(f"{type(self).__name__} trains in one process only (its step is not data-parallel); "
                            "run it without torchrun")
        distributed.check_batch(cfg.batch_size)
        #: What was chosen for this device and model, and why: logged when training starts.
        self.choices: list[str] = [f"device: {self.device}" + (
            f" ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else
            f" ({cpu_reason(cfg.device)})" if cpu_reason(cfg.device) else "")]
        if self.device.type == "cuda":
            # fixed shapes: cuDNN benchmarks its kernels once and keeps the fastest, some of which are not
            # deterministic, so on a GPU a resumed or repeated run is close to, not bit for bit, the original
            torch.backends.cudnn.benchmark = True
        self.key = speed.model_key(model, cfg, notes)
        can_scale = type(self).train_step is Trainer.train_step or self.uses_grad_scaler
        self.precision = choose_precision(self.device, cfg.amp, can_scale=can_scale)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaled)
        layout = speed.choose_channels_last(cfg.channels_last, self.device, self.key, self.precision, notes)
        self.channels_last = layout.value
        planned = speed.planned_images(cfg, len(splits.train))
        compiled = speed.choose_compile(cfg.compile, self.device, self.key, planned,
                                        no_compile=notes.no_compile if notes is not None else None)
        self.choices += [f"precision: {self.precision.reason}",
                         f"memory format: {'channels_last' if layout.value else 'contiguous'} ({layout.reason})",
                         f"compile: {'on' if compiled.value else 'off'} ({compiled.reason})"]
        #: Estimated device memory training needs (0 on the CPU): what the data sets leave free.
        self.memory_need = self._check_memory(model)
        with self.out_of_memory("setup (the model and data on the device)"):
            memory_format = torch.channels_last if layout.value else torch.contiguous_format
            self.model = distributed.prepare_model(model, self.device).to(self.device, memory_format=memory_format)
            # what runs: DistributedDataParallel under torchrun, compiled around DDP (PyTorch's recommendation:
            # the compiled graph then overlaps the gradient all-reduce with the backward pass); self.model is saved
            cache = speed.compile_cache_dir(cfg.data_root) if compiled.value else None
            if cache is not None:
                self.choices[-1] += f"; compile cache {cache}"
            self.net = speed.compile_model(distributed.data_parallel(self.model, self.device), compiled.value, cache)
            self.loss_fn, self.epoch_start = loss_fn, epoch_start
            self.optimizer = build_optimizer(cfg.optimizer, self.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
            self.scheduler = build_scheduler(cfg.scheduler, self.optimizer, cfg.epochs, eta_min=cfg.lr_min)
            self.train_loader = self.make_loader(splits.train, train=True)
            check_trains(self.train_loader, "training")
            self.eval_loaders: dict[str, BatchLoader] = {}
            for name in eval_splits:
                data = getattr(splits, name)
                if data is None:
                    raise UserError(f"cannot evaluate on the {name!r} split: it is empty (val_fraction is 0)")
                self.eval_loaders[name] = self.make_loader(data, train=False)
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []

    def _check_memory(self, model: nn.Module) -> int:
        """On a GPU: estimate what training ``model`` needs (``core.speed.training_bytes``), say it, and
        warn when the GPU has less free (other trials sharing it, say). Returns the estimate."""
        if self.device.type != "cuda":
            return 0
        per_rank = self.cfg.batch_size // distributed.world_size()
        precision = self.activation_precision()
        try:
            need = speed.training_bytes(model, per_rank, self.cfg.image_size, precision)
        except Exception as exc:  # a network the meta device cannot run: train without the estimate
            self.choices.append(f"memory: no estimate ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
            return 0
        free, total = free_memory(self.device)
        line = (f"memory: training needs about {need / GiB:.1f} GiB (batch {per_rank}, {precision.name}); "
                f"{free / GiB:.1f} of {total / GiB:.1f} GiB free; {speed.trials_that_fit(need, total)} such trial(s) "
                f"fit on this GPU ({speed.GPU_PLANNED_FRACTION:.0%} of its memory)")
        if need > free:
            line += ("; WARNING: more than is free, it may run out of memory: fewer trials per GPU "
                     "(maxTrialNumberPerGpu), a smaller --batch-size" + (", or --amp" if not precision.half else ""))
        self.choices.append(line)
        return need

    def make_loader(self, data: ImageSet, *, train: bool, seed: int | None = None) -> BatchLoader:
        """A loader of ``data`` with this trainer's memory format, on the device when it fits beside
        training (``core.device.data_fits``), else in host memory; the choice is logged."""
        nbytes = data.images.numel() * data.images.element_size() + data.labels.numel() * data.labels.element_size()
        resident, where = data_fits(nbytes, self.device, self.memory_need)
        if not resident or self.device.type == "cuda":
            self.choices.append(f"data: {len(data):,} {'training' if train else 'evaluation'} images {where}")
        return make_loader(data, self.cfg, self.device, self.splits, train=train, seed=seed,
                           channels_last=self.channels_last, resident=resident)

    # --- hooks a specialisation may replace ------------------------------------------------------
    def activation_precision(self) -> Precision:
        """The precision of the step's largest activations, which the memory estimate counts:
        :attr:`precision`; a step that computes in float32 whatever was chosen says so here."""
        return self.precision

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
        with autocast(self.device, self.precision):
            output = self.net(x)
            loss = self.loss_fn(output, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # fp16: the loss scaled against gradient underflow; else as it is
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)  # fp16: skipped when a gradient overflowed
        self.scaler.update()
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
    def state_dict(self, epoch: int, rng: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Everything needed to continue after ``epoch`` completed epochs; ``rng``: every rank's
        generator states (:meth:`fit` gathers them), else this process's."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,  # epochs completed
            "config": to_dict(self.cfg),
            "arch": self.arch,
            "rng": rng_states(rng if rng is not None else [rng_state(self.device)]),
            "scaler": self.scaler.state_dict(),  # fp16's loss scale (empty for bf16 and float32)
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
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.load_extra_state(state)
        rng, own = rng_of_rank(state["rng"], distributed.rank())
        set_rng_state(rng, self.device)
        saved_ranks = len(state["rng"].get("ranks", [None]))
        if saved_ranks != distributed.world_size() and distributed.world_size() > 1:
            self.choices.append(f"resume: the checkpoint holds the random state of {saved_ranks} process(es), this run "
                                f"has {distributed.world_size()}: ranks draw other random numbers than the original run")
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
        seen_t, correct, *totals = distributed.all_sum(seen, correct, *sums.values())
        seen, sums = int(seen_t.item()), dict(zip(sums, totals))
        means = {key: total.item() / max(seen, 1) for key, total in sums.items()}
        if not math.isfinite(means.get("loss", 0.0)):
            raise TrainingDiverged(epoch, steps, means["loss"], self.cfg)
        self.scheduler.step()
        metrics = {"epoch": epoch + 1, "lr": lr, "train_loss": means.pop("loss", 0.0),
                   "train_acc": correct.item() / max(seen, 1)}
        metrics.update(means)  # what a specialised step adds, under the names it gave
        metrics.update({"train_seconds": round(seconds, 3), "step_seconds": round(seconds / max(steps, 1), 4),
                        "images_per_s": round(seen / max(seconds, 1e-9), 1), "train_images": seen})
        return metrics

    def evaluate(self, name: str, epoch: int | None = None) -> dict[str, float]:
        """Accuracy and loss on a split: a loader of ``eval_splits`` or, on demand, 'val'/'test'.
        A non-finite loss or output is :class:`TrainingDiverged` in ``epoch`` (0-based; default:
        the last completed one, as for the final test), as a non-finite training loss is."""
        loader = self.eval_loaders.get(name)
        if loader is None:
            data = getattr(self.splits, name)
            if data is None:
                raise UserError(f"cannot evaluate on the {name!r} split: it is empty")
            loader = self.make_loader(data, train=False)
        distributed.sync_buffers(self.model)  # every rank evaluates rank 0's network
        result = evaluate(distributed.unwrap(self.net), loader, self.precision)
        if result["nonfinite"] or not math.isfinite(result["loss"]):   # every rank has the same sums
            raise TrainingDiverged(max(self.start_epoch - 1, 0) if epoch is None else epoch, None, result["loss"],
                                   self.cfg, split=name, nonfinite=result["nonfinite"], images=result["images"])
        return result

    def fit(self, on_epoch: EpochCallback | None = None) -> list[dict[str, Any]]:
        """Train from :attr:`start_epoch` to ``cfg.epochs``; returns every epoch's metrics."""
        if self.run is not None:
            for line in self.choices:
                self.run.log(line)
        for epoch in range(self.start_epoch, self.cfg.epochs):
            if self.epoch_start is not None:
                self.epoch_start(epoch)
            with self.out_of_memory("training"):
                metrics = self.train_epoch(epoch)
            with self.out_of_memory("evaluation"):
                for name in self.eval_loaders:
                    result = self.evaluate(name, epoch)
                    metrics[f"{name}_acc"], metrics[f"{name}_loss"] = result["acc"], result["loss"]
                    metrics[f"{name}_images"] = result["images"]
            self.epoch_end(metrics)
            self.history.append(metrics)
            rngs = distributed.gather(rng_state(self.device))  # every rank's generators, on rank 0
            if self.run is not None:
                self.run.log_metrics(metrics)
                self.run.log(format_metrics(metrics))
                save_checkpoint(self.run.checkpoint_path, self.state_dict(epoch + 1, rng=rngs))
            self.start_epoch = epoch + 1
            if on_epoch is not None and distributed.is_main():  # one report per epoch (rank 0's)
                on_epoch(metrics)
        return self.history

    @contextlib.contextmanager
    def out_of_memory(self, during: str):
        """An out-of-memory error ``during`` what the block does as one line naming this trainer's
        model, batch size, precision and device (:class:`OutOfMemory`), not a traceback. One
        raised where no trainer knows these is still one line (``core.errors.cli_main``)."""
        try:
            yield
        except torch.OutOfMemoryError:
            raise OutOfMemory(out_of_memory_message(
                model=self.key, batch_size=self.cfg.batch_size, precision=self.precision.name, device=self.device,
                during=during, eval_batch_size=self.cfg.eval_batch_size)) from None
