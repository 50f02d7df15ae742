"""Data-parallel training under real ``torchrun --standalone --nproc_per_node 2`` (gloo, CPU).

The runs train through the project's own command (``python -m core.train_model``, so
:func:`core.run_training.train`, the Trainer and :mod:`core.distributed`), started by a launcher
script this test writes: it swaps the registry's network for a two-convolution CNN (with or
without BatchNorm) so that a run takes seconds on a 2-core machine.

Tolerances. Without BatchNorm two processes must compute the one-process step: each rank's loss
is the mean over its half of the global batch, and DDP averages the two gradients, which is the
full-batch gradient up to float32 summation order, so the curves agree to 1e-4 (relative). With
BatchNorm on the CPU each rank normalises with its own half's statistics (torch's SyncBatchNorm
has no CPU kernel; CUDA runs use it): the first step already sees identical weights and images
but differently normalised activations, so the curves agree only to the noise of batch
statistics over 16 instead of 32 images: 5% on the training loss, 2% on the validation loss.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import BIN

pytestmark = pytest.mark.e2e   # real torchrun process groups (minutes): not in the fast suite (pytest -m "not e2e")

LAUNCHER = '''\
"""python -m core.train_model with the registry's network replaced by a small CNN (test only)."""
import os, runpy, sys
from torch import nn
import models

def small_cnn(name, num_classes):
    norm = (lambda c: nn.BatchNorm2d(c)) if os.environ.get("SMALL_CNN_BN") == "1" else (lambda c: nn.Identity())
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), norm(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), norm(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))

models.create_model = small_cnn
sys.argv = ["core.train_model", *sys.argv[1:]]
runpy.run_module("core.train_model", run_name="__main__", alter_sys=True)
'''

ARGS = ["--model", "mobilenet", "--data", "fake", "--batch-size", "32", "--eval-batch-size", "100",
        "--optimizer", "SGD", "--lr", "0.05", "--scheduler", "none", "--device", "cpu", "--no-progress"]


def _command(launcher: Path, nproc: int, args: list[str]) -> list[str]:
    if nproc == 1:
        return [sys.executable, str(launcher), *args]
    return [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", str(launcher), *args]


def _run(launcher: Path, nproc: int, args: list[str], out: Path, bn: bool) -> list[dict]:
    env = {**os.environ, "SMALL_CNN_BN": "1" if bn else "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(_command(launcher, nproc, [*args, "--out-dir", str(out)]), env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = list(out.iterdir())
    assert len(runs) == 1, runs            # one run folder, whatever the number of processes
    assert (runs[0] / "result.json").is_file()
    return [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def launcher(tmp_path) -> Path:
    path = tmp_path / "launch_small_cnn.py"
    path.write_text(LAUNCHER)
    return path


@pytest.mark.parametrize("bn, train_tol, val_tol", [(False, 1e-4, 1e-4), (True, 0.05, 0.02)],
                         ids=["no-batchnorm", "batchnorm"])
def test_two_processes_follow_the_one_process_loss_curve(tmp_path, launcher, bn, train_tol, val_tol):
    args = [*ARGS, "--epochs", "4", "--max-batches", "1"]    # one step per epoch: the curve, step by step
    one = _run(launcher, 1, args, tmp_path / "one", bn)
    two = _run(launcher, 2, args, tmp_path / "two", bn)
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=train_tol), (one, two)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=val_tol), (one, two)
    if not bn:
        assert [a["val_acc"] for a in one] == [b["val_acc"] for b in two]
    log = next((tmp_path / "two").iterdir()) / "train.log"
    assert "2 processes (data-parallel)" in log.read_text()
    assert log.read_text().count("epoch=1 ") == 1          # rank 0 alone writes the log


def test_a_killed_distributed_run_resumes_and_finishes(tmp_path, launcher):
    args = [*ARGS, "--epochs", "5", "--max-batches", "8"]
    whole = _run(launcher, 2, args, tmp_path / "whole", bn=True)
    out = tmp_path / "killed"
    env = {**os.environ, "SMALL_CNN_BN": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_command(launcher, 2, [*args, "--out-dir", str(out)]), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    metrics = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(out.glob("*/metrics.jsonl"))
        if found and found[0].read_text().strip():
            metrics = found[0]
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)                    # torchrun and both ranks, after epoch 1
    proc.wait()
    assert metrics is not None, "the distributed run wrote no epoch"
    run = metrics.parent
    assert not (run / "result.json").exists(), "killed too late: the run had finished"
    done = len(metrics.read_text().splitlines())
    assert 1 <= done < 5
    import torch
    rng = torch.load(run / "checkpoint.pt", weights_only=True)["rng"]
    assert len(rng["ranks"]) == 2, "every rank's generators are in the checkpoint (gathered to rank 0)"
    resumed = subprocess.run(_command(launcher, 2, ["--resume", str(run / "checkpoint.pt")]), env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert list(out.iterdir()) == [run] and (run / "result.json").is_file()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4, 5]
    # exact resume: the same numbers as the run that was never killed
    for a, b in zip(lines, whole):
        assert (a["train_loss"], a["val_loss"], a["val_acc"]) == (b["train_loss"], b["val_loss"], b["val_acc"])
    assert "resumed from" in (run / "train.log").read_text()


def test_a_write_failing_on_rank_0_alone_is_its_one_line_and_no_other_rank_traceback(tmp_path, launcher):
    """Rank 0 alone writes the run folder: when its checkpoint cannot be written (no space left)
    it stops with its one ``error:`` line while rank 1 waits in the next collective, which then
    loses its peer; rank 1 leaves without a traceback (core.errors.cli_main), and the checkpoint
    of the epoch before is intact."""
    wrapper = tmp_path / "full_disk_rank0.py"
    wrapper.write_text(
        "import errno, os, runpy, sys\n"
        "import core.checkpoint as ck\n"
        "calls = [0]\n"
        "real = ck.atomic_write_bytes\n"
        "def full(path, data):\n"
        "    calls[0] += 1\n"
        "    if os.environ.get('RANK') == '0' and calls[0] == 2:\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device', str(path))\n"
        "    return real(path, data)\n"
        "ck.atomic_write_bytes = full\n"
        f"sys.argv = [{str(launcher)!r}, *sys.argv[1:]]\n"
        f"runpy.run_path({str(launcher)!r}, run_name='__main__')\n")
    out = tmp_path / "runs"
    env = {**os.environ, "SMALL_CNN_BN": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(_command(wrapper, 2, [*ARGS, "--epochs", "3", "--max-batches", "1", "--out-dir", str(out)]),
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "checkpoint.pt" in errors[0], proc.stderr[-3000:]
    assert not any(line.startswith("[rank") for line in proc.stderr.splitlines()), proc.stderr[-3000:]
    [run] = list(out.iterdir())
    import torch
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1
