"""Training images/s of one process against N data-parallel processes (torchrun), same global batch.

    python benchmarks/bench_distributed.py                       # 1 vs 2 processes on the CPU (gloo)
    python benchmarks/bench_distributed.py --nproc 4 --device cuda --model resnet18 --batch-size 512

Each run is the real command, ``python -m core.train_model`` (under ``torchrun --standalone
--nproc_per_node N`` for N > 1), on synthetic data; the figure is the training throughput of the
last epoch (``images_per_s`` in its metrics: all ranks' images over the epoch's wall time), so the
first epoch's warm-up is left out. On the CPU every process gets ``cores / N`` threads, so the
ratio shows what splitting a batch over processes costs or gains against one process using all
cores; on GPUs each process has its own card. A third figure, one process with one thread, tells
apart what the processes gain from what fewer threads per process gain (on a loaded CPU, OpenMP
threads that wait for each other can cost more than they bring).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from core.errors import ArgumentParser, cli_main
from core.run_folder import METRICS_FILE, read_metrics

REPO = Path(__file__).resolve().parents[1]


def images_per_s(nproc: int, args: argparse.Namespace, out: Path, threads: int | None = None) -> float:
    train = ["-m", "core.train_model", "--model", args.model, "--data", "fake", "--batch-size", str(args.batch_size),
             "--epochs", str(args.epochs), "--max-batches", str(args.batches),
             "--device", args.device, "--no-progress", "--out-dir", str(out)]
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if nproc == 1:
        command = [sys.executable, *train]
    else:
        command = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", *train]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed:\n{proc.stderr[-2000:]}")
    metrics = read_metrics(next(out.glob(f"*/{METRICS_FILE}")).parent) or []
    return metrics[-1]["images_per_s"]


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch")
    parser.add_argument("--batches", type=int, default=10, help="batches per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="the last one is measured")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="alternating 1-process and N-process runs; the "
                        "medians are compared (on a shared machine the load moves between runs)")
    args = parser.parse_args(argv)
    ones, manys, singles = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            ones.append(images_per_s(1, args, Path(tmp) / f"one{i}"))
            manys.append(images_per_s(args.nproc, args, Path(tmp) / f"many{i}"))
            singles.append(images_per_s(1, args, Path(tmp) / f"single{i}", threads=1))
            print(f"run {i + 1}: 1 process {ones[-1]:.1f} images/s, {args.nproc} processes {manys[-1]:.1f} images/s, "
                  f"1 process with 1 thread {singles[-1]:.1f} images/s", flush=True)
    one, many = statistics.median(ones), statistics.median(manys)
    print(f"{args.model}, global batch {args.batch_size}, {args.device}, {os.cpu_count()} CPU cores: median 1 process "
          f"{one:.1f} images/s, {args.nproc} processes {many:.1f} images/s, ratio {many / one:.2f}; 1 process with "
          f"1 thread {statistics.median(singles):.1f} images/s (the thread count alone, for comparison)")


if __name__ == "__main__":
    main()
