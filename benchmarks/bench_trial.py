"""Trial speed: the project's trial against NNI's example trial and against the compute limit, per model.

Three measurements per model, interleaved in every repeat (drift on a shared machine hits all alike),
all training the same model from the same initial weights with Adam 1e-3 on the same images at the
same batch size, in this one process (same torch threads):

- **NNI example**: NNI's own CIFAR-10 trial (``examples/trials/cifar10_pytorch/main.py``) as it
  trains: ``torchvision.datasets.CIFAR10``-style uint8 images turned into PIL images one at a time,
  ``RandomCrop(32, 4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` in a shuffling
  ``DataLoader(num_workers=2)`` that keeps the last partial batch, and its loop (zero_grad, forward,
  cross-entropy, backward, step, then ``loss.item()`` and the running accuracy every step), with
  ``cudnn.benchmark`` on a GPU. Without its bugs: the optimizer is the one named (it builds Adam for
  'Adamax'), nothing is selected on the test set, and no ``DataParallel`` wraps a single GPU.
- **trial**: the project's trial path: data decoded once, ``core.loader.BatchLoader``,
  ``core.trainer.Trainer.train_epoch`` with the engine's choices for this device and model (memory
  format, precision, compile: ``core/speed.py``; ``--variant`` overrides config fields).
- **limit**: the pure-compute limit of that trial: the same ``Trainer``'s own ``train_step`` (same
  memory format, precision, compile, threads) repeated on one batch already in memory, no data path.

Prints images/s of each, the trial's time over the NNI example's for the same images (below 1: the
trial is faster) and the trial's rate as a fraction of its limit (1.00 = the trial runs at the limit).

``--ab FIELD`` instead measures FIELD's two values (``channels_last`` off/on, ``compile``, ``amp``)
interleaved, off, on, off, on, ``--repeats`` pairs per model, on the limit (or ``--ab-on trial``),
and states the decision with its spread: the median on/off speed ratio and its range over the pairs.
``--compile-cache`` measures what the shared compile cache saves: two trials of the first model, each
a fresh process (as NNI starts trials), compile seconds of the first (cold cache) and the second.

    python benchmarks/bench_trial.py                              # 8 models, 3 batches each (minutes on a CPU)
    python benchmarks/bench_trial.py --models mobilenet --max-batches 0 --repeats 3      # whole epochs
    python benchmarks/bench_trial.py --ab channels_last --repeats 5 --steps 10
    python benchmarks/bench_trial.py --models mobilenet --compile-cache
    python benchmarks/bench_trial.py --models mobilenet --concurrent 1 2 4
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from queue import Empty
from typing import Any

import torch
import yaml

from bench_loader import usual_recipe_loader
from core.config import ModelConfig, from_dict
from core.data import Splits
from core.errors import ArgumentParser, cli_main
from core.device import resolve_device
from core.run_training import load_splits
from core.trainer import Trainer, evaluate, make_loader, seed_everything
from core.words import count
from measure import default_data, load_average, sync
from models import MODELS, create_model

#: The trial recipe every side trains with (NNI's example trial with Adam 1e-3).
RECIPE = {"optimizer": "Adam", "lr": 1e-3, "weight_decay": 0.0, "scheduler": "none"}
TRIAL_EPOCH_IMAGES = 45_000  # one epoch of an HPO trial (CIFAR-10's training split less 10% validation)
#: The two config values ``--ab FIELD`` compares, "off" then "on".
AB_VALUES: dict[str, tuple[Any, Any]] = {"channels_last": ("off", "on"), "compile": ("off", "on"),
                                         "amp": (False, True)}
#: Fewer interleaved pairs than this state no decision (a single pair cannot tell a 1.3x gain from noise).
AB_MIN_PAIRS = 3


def parse_variant(text: str) -> dict[str, Any]:
    """'channels_last=off,compile=on' -> {'channels_last': 'off', 'compile': 'on'}; '' -> {}."""
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


def make_trainer(cfg: ModelConfig, splits: Splits) -> Trainer:
    seed_everything(cfg.seed)
    return Trainer(create_model(cfg.model, num_classes=splits.num_classes), cfg, splits, eval_splits=())


def describe(trainer: Trainer) -> str:
    """The engine's choices for this device and model, in short."""
    layout = "channels_last" if trainer.channels_last else "contiguous"
    return f"{layout}, {trainer.precision.name}, compile {'on' if trainer.net is not trainer.model else 'off'}"


def run_trial(cfg: ModelConfig, splits: Splits, warmup: int, accuracy: bool, barrier=None) -> dict[str, Any]:
    """The project's trial path: a :class:`Trainer` and its ``train_epoch``."""
    trainer = make_trainer(cfg, splits)
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
    out = {"images": images, "seconds": time.perf_counter() - start, "warmup_s": warm_s, "format": describe(trainer),
           "start": wall_start, "end": time.time(), "train_acc": metrics["train_acc"]}
    if accuracy:
        out["val_acc"] = trainer.evaluate("val")["acc"]
    return out


def run_limit(cfg: ModelConfig, splits: Splits, warmup: int, steps: int) -> dict[str, Any]:
    """The trial's pure-compute limit: its own ``train_step`` on one resident batch, ``steps`` times
    after ``warmup`` steps (and compilation)."""
    trainer = make_trainer(cfg, splits)
    trainer.model.train()
    batch = next(iter(trainer.train_loader))
    start = time.perf_counter()
    for _ in range(max(warmup, 1)):
        trainer.train_step(batch)
    sync(trainer.device)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batch)
    sync(trainer.device)
    return {"images": steps * len(batch[1]), "seconds": time.perf_counter() - start, "warmup_s": first_s,
            "format": describe(trainer)}


def run_nni_example(cfg: ModelConfig, splits: Splits, warmup: int, workers: int, accuracy: bool) -> dict[str, Any]:
    """NNI's example trial's training (see the module docstring), timed per epoch."""
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.seed)
    model = create_model(cfg.model, num_classes=splits.num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    criterion = torch.nn.CrossEntropyLoss()
    loader = usual_recipe_loader(splits.train, splits.mean, splits.std, cfg.batch_size, workers, drop_last=False)

    def epoch(limit: int) -> tuple[int, int]:
        model.train()
        train_loss = 0.0
        total = correct = 0
        for i, (inputs, targets) in enumerate(loader):
            if limit and i >= limit:
                break
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, targets)
            loss.backward()
            optimizer.step()
            train_loss += loss.item()
            _, predicted = outputs.max(1)
            total += targets.size(0)
            correct += predicted.eq(targets).sum().item()
        return total, correct

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
    if accuracy:  # on the validation split, never the test split
        out["val_acc"] = evaluate(model, make_loader(splits.val, cfg, device, splits, train=False,
                                                     channels_last=False))["acc"]
    return out


def rate(result: dict[str, Any]) -> float:
    return result["images"] / result["seconds"]


def median_rate(runs: list[dict[str, Any]]) -> float:
    return statistics.median(rate(r) for r in runs)


def compare_models(args: argparse.Namespace, splits: Splits, variants: list[dict[str, Any]], names: list[str]) -> None:
    """Per model and variant: NNI example, trial and limit, interleaved ``--repeats`` times."""
    print(f"{'model':<13}{'variant':<22}{'NNI ex. img/s':>14}{'trial img/s':>12}{'limit img/s':>12}"
          f"{'trial/NNI time':>15}{'trial/limit':>12}   trial's choices")
    for model in args.models:
        base_runs: list[dict[str, Any]] = []
        trial_runs: list[list[dict[str, Any]]] = [[] for _ in variants]
        limit_runs: list[list[dict[str, Any]]] = [[] for _ in variants]
        for _ in range(args.repeats):
            base_runs.append(run_nni_example(trial_config(args, model), splits, args.warmup, args.workers,
                                             args.accuracy))
            for trials, limits, overrides in zip(trial_runs, limit_runs, variants):
                cfg = trial_config(args, model, overrides)
                trials.append(run_trial(cfg, splits, args.warmup, args.accuracy))
                limits.append(run_limit(cfg, splits, args.warmup, args.steps))
        base = median_rate(base_runs)
        for name, trials, limits in zip(names, trial_runs, limit_runs):
            ours, limit = median_rate(trials), median_rate(limits)
            spread = ""
            if args.repeats > 1:
                fractions = [rate(t) / rate(lim) for t, lim in zip(trials, limits)]
                spread = f" [{min(fractions):.2f}-{max(fractions):.2f}]"
            print(f"{model:<13}{name:<22}{base:>14,.1f}{ours:>12,.1f}{limit:>12,.1f}{base / ours:>14.2f}x"
                  f"{ours / limit:>12.2f}{spread}   {trials[0]['format']}", flush=True)
        for name, trials, overrides in zip(names, trial_runs, variants):
            if trial_config(args, model, overrides).compile == "on" and not args.accuracy:
                report_compile(model, name, trials, trial_runs[0], variants[0])
        if args.accuracy:
            report_accuracy(model, splits, base_runs, trial_runs, names)


def compare_ab(args: argparse.Namespace, splits: Splits, field: str, base: dict[str, Any]) -> None:
    """``field`` off and on, interleaved (off, on, off, on, ...), ``--repeats`` pairs per model: the
    median on/off speed ratio, its range over the pairs, and the decision it supports."""
    off, on = AB_VALUES[field]
    measure = run_limit if args.ab_on == "limit" else None
    print(f"A/B of {field} (off = {off}, on = {on}) on the {args.ab_on}, {args.repeats} interleaved pair(s) per "
          "model; ratio = on speed / off speed (above 1: on is faster)")
    print(f"{'model':<13}{'off img/s':>12}{'on img/s':>12}{'ratio':>8}  {'range over pairs':<18}decision")
    for model in args.models:
        pairs: list[tuple[dict, dict]] = []
        for _ in range(args.repeats):
            pair = []
            for value in (off, on):
                cfg = trial_config(args, model, {**base, field: value})
                pair.append(measure(cfg, splits, args.warmup, args.steps) if measure
                            else run_trial(cfg, splits, args.warmup, False))
            pairs.append((pair[0], pair[1]))
        ratios = [rate(b) / rate(a) for a, b in pairs]
        low, high, mid = min(ratios), max(ratios), statistics.median(ratios)
        if pairs[0][0]["format"] == pairs[0][1]["format"]:
            decision = f"no difference to decide: both run {pairs[0][0]['format']} here"
        elif len(pairs) < AB_MIN_PAIRS:
            decision = f"none: fewer than {AB_MIN_PAIRS} pairs (--repeats)"
        elif low > 1:
            decision = "on: faster in every pair"
        elif high < 1:
            decision = "off: on was slower in every pair"
        else:
            decision = "within the noise: no pair-consistent difference"
        print(f"{model:<13}{median_rate([a for a, _ in pairs]):>12,.1f}{median_rate([b for _, b in pairs]):>12,.1f}"
              f"{mid:>7.2f}x  {low:.2f}-{high:.2f}x{'':<8}{decision}", flush=True)


def report_compile(model: str, name: str, compiled: list[dict], eager: list[dict], eager_variant: dict) -> None:
    """What compiling costs once (its warm-up less the first variant's) against what it saves per
    trial epoch, from the figures of this run."""
    if eager_variant.get("compile") == "on":
        return
    cost = statistics.median(r["warmup_s"] for r in compiled) - statistics.median(r["warmup_s"] for r in eager)
    saved_per_image = 1 / median_rate(eager) - 1 / median_rate(compiled)
    payoff = f"break-even at {cost / saved_per_image:,.0f} training images" if saved_per_image > 0 \
        else "never pays off"
    print(f"  {model} {name}: compiling costs {cost:.1f} s once; saves {saved_per_image * TRIAL_EPOCH_IMAGES:.1f} s "
          f"per {TRIAL_EPOCH_IMAGES:,}-image epoch: {payoff} (core.speed.COMPILE_BREAK_EVEN_IMAGES)")


def report_accuracy(model: str, splits: Splits, base_runs: list[dict], trial_runs: list[list[dict]],
                    names: list[str]) -> None:
    """Final train and validation accuracies; the noise is the binomial standard error of a
    validation accuracy on this many images."""
    n_val = len(splits.val)
    for name, runs in [("NNI example", base_runs), *zip(names, trial_runs)]:
        val = [r["val_acc"] for r in runs]
        train = [r["train_acc"] for r in runs]
        p = statistics.mean(val)
        print(f"  {model} {name}: train acc {', '.join(f'{a:.3f}' for a in train)}; val acc "
              f"{', '.join(f'{a:.3f}' for a in val)} (+- {math.sqrt(p * (1 - p) / n_val):.3f}, {n_val:,} images)")


def _compile_worker(args: argparse.Namespace, model: str, overrides: dict, cache: str, queue) -> None:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    splits = load_data(args)
    cfg = trial_config(args, model, {**overrides, "compile": "on"})
    trainer = make_trainer(cfg, splits)
    batch = next(iter(trainer.train_loader))
    start = time.perf_counter()
    trainer.train_step(batch)  # compiles the training graph
    sync(trainer.device)
    first = time.perf_counter() - start
    steady = []
    for _ in range(3):
        start = time.perf_counter()
        trainer.train_step(batch)
        sync(trainer.device)
        steady.append(time.perf_counter() - start)
    queue.put({"first_step_s": first, "step_s": statistics.median(steady)})


def compare_compile_cache(args: argparse.Namespace, variant: dict[str, Any]) -> None:
    """Two trials of the first model, one after the other, each a fresh process sharing one compile
    cache (``--cache-dir``, else a new empty folder): each one's compile seconds (its first step less
    a compiled step)."""
    model = args.models[0]
    own = args.cache_dir is None
    cache = args.cache_dir or tempfile.mkdtemp(prefix="compile-cache-")
    ctx = mp.get_context("spawn")
    print(f"compile cache {cache} ({'new, empty' if own else 'given'}); {model}, batch {args.batch_size}")
    try:
        for n in (1, 2):
            queue = ctx.Queue()
            proc = ctx.Process(target=_compile_worker, args=(args, model, variant, cache, queue))
            proc.start()
            proc.join()
            if proc.exitcode != 0:
                raise SystemExit(f"error: trial {n} of the compile-cache run failed (its traceback is above)")
            r = queue.get()
            size = sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file())
            print(f"trial {n}: compile {r['first_step_s'] - r['step_s']:.1f} s (first step {r['first_step_s']:.1f} s, "
                  f"then {r['step_s']:.2f} s a step); cache {size / 2**20:.0f} MiB", flush=True)
    finally:
        if own:
            shutil.rmtree(cache, ignore_errors=True)


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


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=default_data(),
                   help="as every command's --data (default: the JPEG CIFAR-10 copy in ../shared, else fake)")
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[1] / "data"))
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--images", type=int, default=5000, help="training images (default: 5,000)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1, help="timed epochs")
    p.add_argument("--max-batches", type=int, default=3, help="batches per timed epoch; 0 = whole epochs")
    p.add_argument("--steps", type=int, default=5, help="timed steps of the pure-compute limit (and of --ab)")
    p.add_argument("--warmup", type=int, default=1, help="batches trained first, not timed")
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats; the median is shown")
    p.add_argument("--workers", type=int, default=2, help="the NNI example's DataLoader worker processes")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", action="append", metavar="FIELD=VALUE,...",
                   help="a trial column with these config fields changed (repeatable; '' = the defaults), "
                        "e.g. channels_last=off, compile=on, amp=false")
    p.add_argument("--ab", choices=list(AB_VALUES), help="A/B this field instead: off, on, off, on, ... "
                   "(--repeats pairs per model), with the first --variant's other fields")
    p.add_argument("--ab-on", choices=("limit", "trial"), default="limit",
                   help="what --ab times: the pure-compute limit (default) or the trial epoch")
    p.add_argument("--accuracy", action="store_true",
                   help="also report final train and validation accuracy of both (use with --max-batches 0)")
    p.add_argument("--compile-cache", action="store_true",
                   help="then measure the compile seconds of two trials of the first model sharing one cache")
    p.add_argument("--cache-dir", help="the compile cache --compile-cache uses (default: a new empty folder)")
    p.add_argument("--concurrent", type=int, nargs="*", default=[], metavar="N",
                   help="then run N trials of the first model at once, for each N (e.g. 1 2 4)")
    args = p.parse_args(argv)
    names = args.variant or [""]
    variants = [parse_variant(v) for v in names]
    for v in variants:
        trial_config(args, args.models[0], v)  # a bad field or value: one error before any work
    splits = load_data(args)
    device = resolve_device(args.device)
    batches = count(args.max_batches, "batch", "batches") if args.max_batches else "whole epochs"
    print(f"device {device.type}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f"; data {args.data}: {len(splits.train):,} training images; batch {args.batch_size}, Adam 1e-3; "
          f"{batches} x {count(args.epochs, 'epoch')} timed after {count(args.warmup, 'warm-up batch', 'warm-up batches')}; "
          f"limit: {count(args.steps, 'step')}; {count(args.repeats, 'repeat')}; torch threads {torch.get_num_threads()}; load average {load_average()}")
    if args.ab:
        compare_ab(args, splits, args.ab, variants[0])
    elif not args.compile_cache or args.concurrent:
        print("trial/NNI time = the trial's time over the NNI example's for the same images (below 1: the trial is "
              "faster); trial/limit = the trial's rate over its pure-compute limit (1.00: at the limit)")
        compare_models(args, splits, variants, [v.replace(",", " ") or "defaults" for v in names])
    if args.compile_cache:
        compare_compile_cache(args, variants[0])
    print(f"load average at the end {load_average()}")
    if args.concurrent:
        compare_concurrency(args, variants[0])


if __name__ == "__main__":
    main()
