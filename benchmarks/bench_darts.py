"""DARTS speed and memory, each comparison against a baseline measured in the same run:

- ``order``: seconds per search step of the second-order step (``--order 2``) against the first-order
  one, and their peak memory;
- ``partial``: peak memory and seconds per search step of PC-DARTS (``--partial-channels K``, default
  4) against plain DARTS (K 1) at the same batch;
- ``nni``: seconds per first-order search step of the project's search against NNI's own
  ``strategy.DARTS`` on ``nni.nas.hub.pytorch.DARTS`` (same width, cells and batch);
- ``retrain``: images/s of the retrain (the fixed DARTS-V2 network through the core Trainer:
  auxiliary head, drop path, cutout), warm epoch.

A search step is one DARTS iteration of :meth:`oneshot_darts.search_trainer.DartsSearch.train_step`: an
architecture step on a batch of the second half and a weight step on a batch of the first half,
on synthetic images. Each ``order``/``partial`` variant runs in a fresh process (so its peak memory
is its own: the process's peak resident memory, and on a GPU ``torch.cuda.max_memory_allocated``),
and the variants take turns ``--repeats`` times; the first ``--warmup`` steps of each are not
timed; the figure is the median step. Memory is the peak resident memory from just before the
supernet is built (Linux: the high-water mark reset through ``/proc/self/clear_refs``) less the
resident memory then (Python, torch, NNI and the images); "peak RSS" is that peak itself.

    python benchmarks/bench_darts.py --compare order partial --channels 4 --layers 3 --batch-size 8  # smoke
    python benchmarks/bench_darts.py --compare order partial      # small sizes: minutes on 2 CPU cores
    python benchmarks/bench_darts.py --compare order partial --channels 16 --layers 8 --batch-size 64  # the paper's
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from core.errors import ArgumentParser, cli_main
from measure import load_average, sync

REPO = Path(__file__).resolve().parents[1]
COMPARISONS = ("order", "partial", "nni", "retrain")


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    import logging
    for name in ("pytorch_lightning", "lightning.pytorch", "nni"):
        logging.getLogger(name).setLevel(logging.ERROR)


# --- one search variant, in its own process ---------------------------------------------------------

def _status_bytes(field: str) -> int | None:
    """A ``/proc/self/status`` memory figure (``VmRSS``, ``VmHWM``) in bytes; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> int:
    """Start measuring the peak resident memory from now: Linux resets the process's high-water mark
    (``VmHWM``) to its current resident memory when 5 is written to ``/proc/self/clear_refs``.
    Returns the current resident memory."""
    import psutil

    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass   # elsewhere: the peak since the start (ru_maxrss), which includes the imports
    return psutil.Process().memory_info().rss


def peak_rss() -> int:
    """The peak resident memory since :func:`reset_peak_rss` (Linux), else since the start."""
    return _status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_search(args, device: torch.device, order: int = 1, partial_channels: int = 1) -> dict:
    """Seconds of every timed search step, and the memory the search took (see the module docstring)."""
    from core.run_training import load_splits
    from core.trainer import seed_everything
    from oneshot_darts.search_trainer import DartsSearch, SearchConfig
    from oneshot_darts.space import build_supernet

    steps = args.warmup + args.steps
    cfg = SearchConfig(data="fake", channels=args.channels, layers=args.layers, n_nodes=args.nodes,
                       batch_size=args.batch_size, max_batches=steps, epochs=1, device=device.type, progress=False,
                       subset=steps * args.batch_size, val_subset=steps * args.batch_size, order=order,
                       partial_channels=partial_channels)
    splits = load_splits(cfg)
    seed_everything(cfg.seed)
    baseline = reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda_baseline = torch.cuda.memory_allocated(device)
    supernet = build_supernet(channels=cfg.channels, layers=cfg.layers, n_nodes=cfg.n_nodes,
                              stem_multiplier=cfg.stem_multiplier, num_classes=splits.num_classes,
                              partial_channels=partial_channels)
    search = DartsSearch(supernet, cfg, splits)
    search.model.train()
    times = []
    sync(device)
    start = time.perf_counter()
    for batch in search.batches():
        search.train_step(batch)
        sync(device)
        now = time.perf_counter()
        times.append(now - start)
        start = now
    peak = peak_rss()
    out = {"times": times[args.warmup:], "peak_rss": peak, "search_rss": max(peak - baseline, 0)}
    if device.type == "cuda":
        out["cuda_peak"] = torch.cuda.max_memory_allocated(device) - cuda_baseline
    return out


def child_command(args, order: int, partial_channels: int) -> list[str]:
    return [sys.executable, __file__, "--child", json.dumps({"order": order, "partial_channels": partial_channels}),
            "--channels", str(args.channels), "--layers", str(args.layers), "--nodes", str(args.nodes),
            "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--device", args.device, "--threads", str(args.threads)]


def compare_variants(args, title: str, variants: list[tuple[str, int, int]]) -> None:
    """Run each (label, order, partial_channels) in fresh processes, taking turns, and print the table."""
    results: dict[str, list[dict]] = {label: [] for label, _, _ in variants}
    for _ in range(args.repeats):
        for label, order, k in variants:
            res = subprocess.run(child_command(args, order, k), cwd=REPO, capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
            if res.returncode != 0:
                sys.exit(f"{label} failed:\n{res.stderr[-3000:]}")
            results[label].append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"\n{title}: C={args.channels}, {args.layers} cells x {args.nodes} nodes, batch {args.batch_size} (each "
          f"half), {args.steps} timed steps after {args.warmup}, {args.repeats} process(es) per variant, taking turns")
    base_label = variants[0][0]
    base = _summary(results[base_label])
    gpu = "cuda_peak" in base
    print(f"{'variant':<22} {'s/step':>8} {'ratio':>7} {'search MiB':>11} {'ratio':>7} {'peak RSS MiB':>13}"
          + (f" {'GPU MiB':>9} {'ratio':>7}" if gpu else ""))
    for label, _, _ in variants:
        s = _summary(results[label])
        line = (f"{label:<22} {s['step']:>8.3f} {s['step'] / base['step']:>6.2f}x {s['search_rss'] / 2**20:>11.1f} "
                f"{s['search_rss'] / max(base['search_rss'], 1):>6.2f}x {s['peak_rss'] / 2**20:>13.1f}")
        if gpu:
            line += f" {s['cuda_peak'] / 2**20:>9.1f} {s['cuda_peak'] / max(base['cuda_peak'], 1):>6.2f}x"
        print(line)
    print(f"(s/step: median over all timed steps; search MiB: peak resident memory while building and running the "
          f"search less the resident memory before, median over processes; ratios against {base_label})", flush=True)


def _summary(runs: list[dict]) -> dict:
    out = {"step": statistics.median(t for r in runs for t in r["times"]),
           "search_rss": statistics.median(r["search_rss"] for r in runs),
           "peak_rss": statistics.median(r["peak_rss"] for r in runs)}
    if "cuda_peak" in runs[0]:
        out["cuda_peak"] = statistics.median(r["cuda_peak"] for r in runs)
    return out


# --- NNI's strategy.DARTS, and the retrain ---------------------------------------------------------------

def time_nni_search(args, device: torch.device) -> list[float]:
    import pytorch_lightning as pl
    from nni.nas import strategy
    from nni.nas.evaluator.pytorch import Classification, DataLoader
    from nni.nas.hub.pytorch import DARTS as HubDarts

    steps = args.warmup + args.steps
    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(steps * args.batch_size, 3, 32, 32, generator=gen),
                                          torch.randint(0, 10, (steps * args.batch_size,), generator=gen))
    times: list[float] = []

    class StepTimer(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            sync(device)
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            sync(device)
            times.append(time.perf_counter() - self.start)

    torch.manual_seed(0)
    space = HubDarts(width=args.channels, num_cells=args.layers, dataset="cifar")
    evaluator = Classification(
        learning_rate=0.025, weight_decay=3e-4, optimizer=torch.optim.SGD, num_classes=10,
        train_dataloaders=DataLoader(data, batch_size=args.batch_size, shuffle=True),
        val_dataloaders=DataLoader(data, batch_size=args.batch_size),
        max_epochs=1, limit_train_batches=steps, num_sanity_val_steps=0, limit_val_batches=0,
        enable_progress_bar=False, enable_model_summary=False, logger=False, enable_checkpointing=False,
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, callbacks=[StepTimer()])
    darts = strategy.DARTS()
    supernet = darts.mutate_model(space)
    darts.mutate_evaluator(evaluator).evaluate(supernet)
    return times[args.warmup:]


def compare_nni(args, device: torch.device) -> None:
    nni_times = time_nni_search(args, device)
    ours = measure_search(args, device)["times"]
    n, o = statistics.median(nni_times), statistics.median(ours)
    print(f"\nfirst-order step vs NNI: C={args.channels}, {args.layers} cells x {args.nodes} nodes, batch "
          f"{args.batch_size}; device {device.type}, torch threads {torch.get_num_threads()}")
    print(f"NNI strategy.DARTS on hub DARTS: {n:.3f} s/step (median of {len(nni_times)}: "
          f"{', '.join(f'{t:.2f}' for t in nni_times)})")
    print(f"project search:                  {o:.3f} s/step (median of {len(ours)}: "
          f"{', '.join(f'{t:.2f}' for t in ours)})")
    print(f"ratio NNI / project: {n / o:.2f}x", flush=True)


def retrain_images_per_s(args, device: torch.device, tmp: Path) -> tuple[float, int]:
    from oneshot_darts.genotype import load_arch
    from oneshot_darts.retrain import RetrainConfig, run_retrain

    cfg = RetrainConfig(data="fake", channels=args.retrain_channels, layers=args.retrain_layers,
                        batch_size=args.retrain_batch_size, max_batches=args.retrain_batches, epochs=2,
                        eval_batch_size=args.retrain_batch_size, val_fraction=0.0, device=device.type,
                        progress=False, out_dir=str(tmp), arc=str(REPO / "oneshot_darts/archs/darts_v2.json"))
    result = run_retrain(cfg, load_arch(cfg.arc))
    return result["images_per_s"], result["params_without_auxiliary"]  # the second (warm) epoch's


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare", nargs="+", choices=COMPARISONS, default=list(COMPARISONS),
                   help="what to measure (default: all)")
    p.add_argument("--channels", type=int, default=8, help="search width C (paper: 16)")
    p.add_argument("--layers", type=int, default=5, help="search cells (paper: 8)")
    p.add_argument("--nodes", type=int, default=4, help="nodes per cell (NNI's hub DARTS has 4)")
    p.add_argument("--batch-size", type=int, default=16, help="search batch, of each half (paper: 64; PC-DARTS: 256)")
    p.add_argument("--partial-channels", type=int, default=4, help="K of the 'partial' comparison (PC-DARTS: 4)")
    p.add_argument("--steps", type=int, default=6, help="timed search steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed search steps first")
    p.add_argument("--repeats", type=int, default=2, help="processes per variant of 'order' and 'partial', taking turns")
    p.add_argument("--retrain-channels", type=int, default=16, help="retrain width (paper: 36)")
    p.add_argument("--retrain-layers", type=int, default=8, help="retrain cells (paper: 20)")
    p.add_argument("--retrain-batch-size", type=int, default=32, help="retrain batch (paper: 96)")
    p.add_argument("--retrain-batches", type=int, default=6, help="batches per retrain epoch (2 epochs run)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--child", metavar="JSON", help=argparse.SUPPRESS)   # one variant, in this process
    args = p.parse_args(argv)

    _quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    from core.device import resolve_device

    device = resolve_device(args.device)
    if args.child:
        print(json.dumps(measure_search(args, device, **json.loads(args.child))))
        return
    print(f"device {device.type}, torch threads {torch.get_num_threads()}, load average "
          f"{load_average()}")
    if "order" in args.compare:
        compare_variants(args, "second order vs first order", [("order 1", 1, 1), ("order 2", 2, 1)])
    if "partial" in args.compare:
        k = args.partial_channels
        compare_variants(args, f"PC-DARTS K={k} vs DARTS (K=1), same batch", [("K 1", 1, 1), (f"K {k}", 1, k)])
    if "nni" in args.compare:
        compare_nni(args, device)
    if "retrain" in args.compare:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            ips, params = retrain_images_per_s(args, device, Path(tmp))
        print(f"\nretrain DARTS-V2 C={args.retrain_channels}, {args.retrain_layers} cells ({params:,} parameters "
              f"without the auxiliary head), batch {args.retrain_batch_size}: {ips:,.1f} images/s")


if __name__ == "__main__":
    main()
