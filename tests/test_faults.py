"""Faults: a run killed while it writes its checkpoint; a trial killed with SIGKILL mid-epoch;
``nnictl stop`` in the middle of an experiment, then ``nnictl resume``."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.e2e   # kills real processes and nnictl experiments (minutes): not in the fast suite (pytest -m "not e2e")
import torch

from tests.conftest import REPO
from tests.nni_harness import nni_experiment

SMOKE = REPO / "hpo/config_smoke.yml"
KILLED = "USER_CANCELED"     # what NNI 3.0 shows for a trial killed by a signal

# Test only: ``python -m core.train_model`` with a small CNN, whose process kills itself (SIGKILL)
# inside the KILL_AT-th checkpoint write: after the temporary file is written and fsynced, before
# the rename that would replace checkpoint.pt (core.files.atomic_write_bytes).
LAUNCHER = '''\
import os, runpy, signal, sys
from torch import nn
import models

def small_cnn(name, num_classes):
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))

models.create_model = small_cnn
kill_at, writes, rename = int(os.environ.get("KILL_AT_CHECKPOINT", "0")), [0], os.replace

def replace_or_die(src, dst, *args, **kwargs):
    if str(dst).endswith("checkpoint.pt"):
        writes[0] += 1
        if writes[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return rename(src, dst, *args, **kwargs)

os.replace = replace_or_die
sys.argv = ["core.train_model", *sys.argv[1:]]
runpy.run_module("core.train_model", run_name="__main__", alter_sys=True)
'''
ARGS = ["--model", "mobilenet", "--data", "fake", "--batch-size", "16", "--epochs", "3", "--max-batches", "3",
        "--device", "cpu", "--no-progress"]


def _train(launcher: Path, args: list[str], kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "KILL_AT_CHECKPOINT": str(kill_at), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(launcher), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_killed_inside_the_checkpoint_write_resumes_from_the_previous_one(tmp_path):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    whole = _train(launcher, [*ARGS, "--out-dir", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = _train(launcher, [*ARGS, "--out-dir", str(tmp_path / "killed")], kill_at=2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    [run] = list((tmp_path / "killed").iterdir())
    # the kill landed between the temporary file and the rename of epoch 2's checkpoint
    assert len(list(run.glob(".checkpoint.pt.*.tmp"))) == 1
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1                          # the previous checkpoint, intact
    assert [m["epoch"] for m in _metrics(run)] == [1, 2]
    assert not (run / "result.json").exists()
    resumed = _train(launcher, ["--resume", str(run / "checkpoint.pt")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [m["epoch"] for m in _metrics(run)] == [1, 2, 3]
    assert not list(run.glob(".*.tmp")), "the resumed run left the killed write's temporary file"
    # lost: epoch 2's training, done again; the result is the uninterrupted run's, number for number
    [reference] = list((tmp_path / "whole").iterdir())
    for a, b in zip(_metrics(run), _metrics(reference)):
        assert (a["train_loss"], a["val_loss"], a["val_acc"]) == (b["train_loss"], b["val_loss"], b["val_acc"])


def _trial_process(trial_dir: Path) -> psutil.Process | None:
    """The python process of the trial whose output folder is ``trial_dir``."""
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if "trial.py" in " ".join(proc.info["cmdline"] or []) and \
                    proc.environ().get("NNI_OUTPUT_DIR", "").rstrip("/") == str(trial_dir):
                return proc
        except psutil.Error:
            continue
    return None


def _finals(exp) -> dict[str, float]:
    return {m["trialJobId"]: json.loads(json.loads(m["data"]))["default"] if isinstance(json.loads(m["data"]), str)
            else json.loads(m["data"])["default"] for m in exp.metrics() if m["type"] == "FINAL"}


@pytest.mark.e2e
def test_sigkilled_trial_fails_alone_and_a_stopped_experiment_resumes_to_its_budget(tmp_path):
    overrides = {"maxTrialNumber": 4, "trialConcurrency": 1, "assessor": None,
                 "searchSpaceFile": None,
                 "searchSpace": {"lr": {"_type": "choice", "_value": [0.01, 0.001]},
                                 "optimizer": {"_type": "choice", "_value": ["Adam", "Adagrad"]},
                                 "model": {"_type": "choice", "_value": ["mobilenet", "shufflenetg2"]}}}
    # longer epochs than the smoke's, so that a kill after the first checkpoint lands mid-epoch
    env = {"CIFAR_AUTOML_TRIAL_FLAGS": "--max-batches 12 --keep-checkpoint"}
    with nni_experiment(SMOKE, tmp_path, timeout=120, overrides=overrides, env=env) as exp:
        trials_dir = exp.exp_dir / "environments/local-env/trials"
        # 1. the first trial: SIGKILL in its second epoch
        deadline, victim = time.monotonic() + 240, None
        while time.monotonic() < deadline and victim is None:
            for ckpt in trials_dir.glob("*/checkpoint.pt"):
                victim = ckpt.parent
            time.sleep(0.05)
        assert victim is not None, exp.logs()
        proc = _trial_process(victim)
        assert proc is not None, f"no process for trial {victim.name}"
        proc.send_signal(signal.SIGKILL)
        epochs_done = len((victim / "metrics.jsonl").read_text().splitlines())
        # 2. nnictl stop once a second trial has finished
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            jobs = exp.trials()
            if sum(j["status"] == "SUCCEEDED" for j in jobs) >= 1:
                break
            time.sleep(1)
        before = {j["trialJobId"]: j["status"] for j in exp.trials()}
        finals_before = _finals(exp)
        # NNI 3.0 books a trial that died of a signal (exit code null) as USER_CANCELED, one with an
        # exit code other than 0 as FAILED (nni_node/training_service/v3/compat.js, onTrialEnd)
        assert before[victim.name] == KILLED, (before, exp.logs())
        assert finals_before, before
        exp.stop()
        # 3. nnictl resume: the kept trials and results, then the rest of the budget
        exp.resume()
        status = exp.wait_done(timeout=400)
        assert status["status"] == "DONE", exp.logs()
        after = {j["trialJobId"]: j["status"] for j in exp.trials()}
        finals_after = _finals(exp)
        for trial_id, value in finals_before.items():
            assert finals_after[trial_id] == value
        assert after[victim.name] == KILLED
        assert sum(s == "SUCCEEDED" for s in after.values()) >= 2, after
        assert len(after) >= 4, after
    # the killed trial's folder holds complete files only: no temporary file, every metrics line
    # whole, a loadable checkpoint of the last finished epoch, no result
    assert not list(victim.glob(".*.tmp")), list(victim.iterdir())
    lines = (victim / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, len(lines) + 1))
    assert torch.load(victim / "checkpoint.pt", weights_only=True)["epoch"] == len(lines) >= epochs_done
    assert not (victim / "result.json").exists()
