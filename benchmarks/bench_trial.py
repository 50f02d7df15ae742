"""Trial speed: the project's trial path against the usual CIFAR-10 recipe, on every model.

The baseline is the usual recipe (NNI's own CIFAR-10 example trial): the uint8 images as
``torchvision.datasets.CIFAR10`` holds them, turned into PIL images one at a time and put through
``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor`` and ``Normalize`` by a
``DataLoader`` with two workers, and a plain float32 loop (zero_grad, forward, cross-entropy,
backward, step, running accuracy). The trial path is the project's: data decoded once,
``core.loader.BatchLoader`` and ``core.train.Trainer.train_epoch``, with the engine's memory
format, precision and compile choices for the device (``--variant`` overrides config fields).
Both train the same model from the same initial weights with Adam 1e-3 on the same images at the
same batch size, in this one process; the first ``--warmup`` batches of each (and compilation)
are timed apart and excluded. Prints images/s and the time ratio (trial / baseline) per model;
``--accuracy`` also trains both to the end and compares their accuracies; ``--concurrent 1 2 4``
runs that many trials at once as separate processes and prints their total images/s.

    python benchmarks/bench_trial.py                              # 8 models, 3 batches each (minutes on a CPU)
    python benchmarks/bench_trial.py --models mobilenet --max-batches 0 --epochs 2 --accuracy   # full trial epochs
    python benchmarks/bench_trial.py --models mobilenet --variant "" --variant channels_last=off --variant compile=true
    python benchmarks/bench_trial.py --models mobilenet --concurrent 1 2 4
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path
from queue import Empty
from typing import Any

import torch
import yaml

from bench_loader import SHARED, usual_recipe_loader
from core.config import ModelConfig, from_dict
from core.data import Splits
from core.runner import load_splits
from core.speed import use_channels_last
from core.train import Trainer, evaluate, make_loader, resolve_device, seed_everything
from models import MODELS, create_model

#: The trial recipe both sides train with (the issue's: NNI's example trial with Adam 1e-3).
RECIPE = {"optimizer": "Adam", "lr": 1e-3, "weight_decay": 0.0, "scheduler": "none"}
TRIAL_EPOCH_IMAGES = 45_000  # one epoch of an HPO trial (CIFAR-10's training split less 10% validation)


def parse_variant(text: str) -> dict[str, Any]:
    """'channels_last=off,compile=true' -> {'channels_last': 'off', 'compile': True}; '' -> {}."""
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --variant {text!r}: expected FIELD=VALUE items separated by commas")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def trial_config(args: argparse.Namespace, model: str, overrides: dict[str, Any] | None = None) -> ModelConfig:
    values = {"model": model, "data": args.data, "data_root": args.data_root, "batch_size": args.batch_size,
              "epochs": args.epochs, "max_batches": args.max_batches, "device": args.device,
              "seed": args.seed, "progress": False, "val_fraction": 0.1, **RECIPE, **(overrides or {})}
    return from_dict(ModelConfig, values, source="bench_trial")


def load_data(args: argparse.Namespace) -> Splits:
    """The splits, training part cut to the first ``--images`` (splits come in a fixed random order)."""
    splits = load_splits(trial_config(args, "mobilenet"))
    splits.train = splits.train.take(torch.arange(min(args.images, len(splits.train))))
    return splits


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_trial(cfg: ModelConfig, splits: Splits, warmup: int, accuracy: bool, barrier=None) -> dict[str, Any]:
    """The project's trial path: a :class:`Trainer` and its ``train_epoch``."""
    seed_everything(cfg.seed)
    trainer = Trainer(create_model(cfg.model, num_classes=splits.num_classes), cfg, splits, eval_splits=())
    loader = trainer.train_loader
    full, loader.max_batches = loader.max_batches, warmup
    start = time.perf_counter()
    trainer.train_epoch(0)  # warm-up (and compilation): not counted
    warm_s = time.perf_counter() - start
    loader.max_batches = full
    if barrier is not None:
        barrier.wait()
    images, start, wall_start = 0, time.perf_counter(), time.time()
    for epoch in range(cfg.epochs):
        metrics = trainer.train_epoch(epoch)
        images += len(loader) * loader.batch_size
    sync(trainer.device)
    out = {"images": images, "seconds": time.perf_counter() - start, "warmup_s": warm_s,
           "start": wall_start, "end": time.time(), "train_acc": metrics["train_acc"]}
    if accuracy:
        out["val_acc"] = trainer.evaluate("val")["acc"]
    return out


def run_baseline(cfg: ModelConfig, splits: Splits, warmup: int, workers: int, accuracy: bool) -> dict[str, Any]:
    """The usual recipe: per-image torchvision transforms, a two-worker DataLoader, a float32 loop."""
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    model = create_model(cfg.model, num_classes=splits.num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loader = usual_recipe_loader(splits.train, splits.mean, splits.std, cfg.batch_size, workers)

    def epoch(limit: int) -> tuple[int, int]:
        model.train()
        seen = correct = 0
        for i, (x, y) in enumerate(loader):
            if limit and i >= limit:
                break
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            out = model(x)
            loss = torch.nn.functional.cross_entropy(out, y)
            loss.backward()
            optimizer.step()
            seen += len(y)
            correct += out.argmax(1).eq(y).sum().item()
        return seen, correct

    start = time.perf_counter()
    epoch(warmup)
    warm_s = time.perf_counter() - start
    images, start = 0, time.perf_counter()
    for _ in range(cfg.epochs):
        seen, correct = epoch(cfg.max_batches)
        images += seen
    sync(device)
    out = {"images": images, "seconds": time.perf_counter() - start, "warmup_s": warm_s,
           "train_acc": correct / max(seen, 1)}
    if accuracy:
        out["val_acc"] = evaluate(model, make_loader(splits.val, cfg, device, splits, train=False))["acc"]
    return out


def rate(result: dict[str, Any]) -> float:
    return result["images"] / result["seconds"]


def load_average() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def compare_models(args: argparse.Namespace, splits: Splits, variants: list[dict[str, Any]], names: list[str]) -> None:
    header = f"{'model':<13}{'baseline img/s':>15}" + "".join(f"{n + ' img/s':>{max(16, len(n) + 7)}}"
                                                            f"{'time ratio':>11}" for n in names)
    print(header)
    for model in args.models:
        base_runs: list[dict[str, Any]] = []
        trial_runs: list[list[dict[str, Any]]] = [[] for _ in variants]
        for _ in range(args.repeats):  # interleaved: drift on a shared machine hits both sides alike
            base_runs.append(run_baseline(trial_config(args, model), splits, args.warmup, args.workers, args.accuracy))
            for runs, overrides in zip(trial_runs, variants):
                runs.append(run_trial(trial_config(args, model, overrides), splits, args.warmup, args.accuracy))
        base = statistics.median(rate(r) for r in base_runs)
        line = f"{model:<13}{base:>15,.1f}"
        for n, runs in zip(names, trial_runs):
            ours = statistics.median(rate(r) for r in runs)
            line += f"{ours:>{max(16, len(n) + 7)},.1f}{base / ours:>10.2f}x"
        print(line, flush=True)
        for n, runs, overrides in zip(names, trial_runs, variants):
            if trial_config(args, model, overrides).compile and not args.accuracy:
                report_compile(model, n, runs, trial_runs[0], variants[0])
        if args.accuracy:
            report_accuracy(model, splits, base_runs, trial_runs, names)


def report_compile(model: str, name: str, compiled: list[dict], eager: list[dict], eager_variant: dict) -> None:
    """What compiling costs once (its warm-up less the first variant's) against what it saves per
    trial epoch, from the figures of this run."""
    if eager_variant.get("compile"):
        return
    cost = statistics.median(r["warmup_s"] for r in compiled) - statistics.median(r["warmup_s"] for r in eager)
    saved = TRIAL_EPOCH_IMAGES / statistics.median(rate(r) for r in eager) \
        - TRIAL_EPOCH_IMAGES / statistics.median(rate(r) for r in compiled)
    payoff = f"pays off after {cost / saved:.2f} trial epochs" if saved > 0 else "never pays off"
    print(f"  {model} {name}: compiling costs {cost:.1f} s once; saves {saved:.1f} s per "
          f"{TRIAL_EPOCH_IMAGES:,}-image epoch: {payoff}")


def report_accuracy(model: str, splits: Splits, base_runs: list[dict], trial_runs: list[list[dict]],
                    names: list[str]) -> None:
    """Final train and validation accuracies; the noise is the binomial standard error of a
    validation accuracy on this many images."""
    n_val = len(splits.val)
    for name, runs in [("baseline", base_runs), *zip(names, trial_runs)]:
        val = [r["val_acc"] for r in runs]
        train = [r["train_acc"] for r in runs]
        p = statistics.mean(val)
        print(f"  {model} {name}: train acc {', '.join(f'{a:.3f}' for a in train)}; val acc "
              f"{', '.join(f'{a:.3f}' for a in val)} (+- {math.sqrt(p * (1 - p) / n_val):.3f}, {n_val:,} images)")


def _concurrent_worker(args: argparse.Namespace, model: str, overrides: dict, barrier, queue) -> None:
    splits = load_data(args)
    queue.put(run_trial(trial_config(args, model, overrides), splits, args.warmup, False, barrier))


def compare_concurrency(args: argparse.Namespace, variant: dict[str, Any]) -> None:
    """N copies of one trial as separate processes (as NNI runs concurrent trials), started
    together after their warm-up: total images/s from the first start to the last end."""
    model = args.models[0]
    ctx = mp.get_context("spawn")
    print(f"{'trials at once':<16}{'total img/s':>12}{'per trial':>11}{'vs 1':>7}   ({model}, load average "
          f"{load_average()})")
    one = None
    for n in args.concurrent:
        barrier, queue = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_concurrent_worker, args=(args, model, variant, barrier, queue)) for _ in range(n)]
        for p in procs:
            p.start()
        results = []
        while len(results) < n:
            try:
                results.append(queue.get(timeout=5))
            except Empty:  # a trial that died would leave the others waiting at the barrier forever
                if any(p.exitcode not in (None, 0) for p in procs):
                    for p in procs:
                        p.terminate()
                    raise SystemExit(f"error: a trial process of the N = {n} run failed (its traceback is above)")
        for p in procs:
            p.join()
        total = sum(r["images"] for r in results) / (max(r["end"] for r in results) - min(r["start"] for r in results))
        if n == 1:
            one = total
        print(f"{n:<16}{total:>12,.1f}{total / n:>11,.1f}{(f'{total / one:.2f}x' if one else '-'):>7}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED) if SHARED.exists() else "fake",
                   help="as every command's --data (default: the JPEG CIFAR-10 copy in ../shared, else fake)")
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[1] / "data"))
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--images", type=int, default=5000, help="training images (default: the issue's 5,000)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1, help="timed epochs")
    p.add_argument("--max-batches", type=int, default=3, help="batches per timed epoch; 0 = whole epochs")
    p.add_argument("--warmup", type=int, default=1, help="batches trained first, not timed")
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats; the median is shown")
    p.add_argument("--workers", type=int, default=2, help="the baseline DataLoader's worker processes")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", action="append", metavar="FIELD=VALUE,...",
                   help="a trial-path column with these config fields changed (repeatable; '' = the defaults), "
                        "e.g. channels_last=off, compile=true, amp=false")
    p.add_argument("--accuracy", action="store_true",
                   help="also report final train and validation accuracy of both (use with --max-batches 0)")
    p.add_argument("--concurrent", type=int, nargs="*", default=[], metavar="N",
                   help="then run N trials of the first model at once, for each N (e.g. 1 2 4)")
    args = p.parse_args(argv)
    names = args.variant or [""]
    variants = [parse_variant(v) for v in names]
    for v in variants:
        trial_config(args, args.models[0], v)  # a bad field or value: one error before any work
    splits = load_data(args)
    device = resolve_device(args.device)
    cfg = trial_config(args, args.models[0])
    memory = "channels_last" if use_channels_last(cfg.channels_last, device) else "contiguous"
    batches = f"{args.max_batches} batches" if args.max_batches else "whole epochs"
    print(f"device {device.type}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f"; data {args.data}: {len(splits.train):,} training images; batch {args.batch_size}, Adam 1e-3; "
          f"{batches} x {args.epochs} epoch(s) timed after {args.warmup} warm-up batch(es); {args.repeats} "
          f"repeat(s); torch threads {torch.get_num_threads()}; trial defaults here: {memory} "
          f"(channels_last {cfg.channels_last}), amp {cfg.amp}, compile {cfg.compile}; load average {load_average()}")
    print("time ratio = trial time / baseline time for the same images (below 1: the trial is faster)")
    compare_models(args, splits, variants, [v.replace(",", " ") or "trial" for v in names])
    print(f"load average at the end {load_average()}")
    if args.concurrent:
        compare_concurrency(args, variants[0])


if __name__ == "__main__":
    main()
