"""The trial benchmark's smoke run, and ``compile`` through training, checkpoint and resume."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import torch

from core.checkpoint import load_checkpoint, save_checkpoint
from core.config import TrainConfig, from_dict
from core.data import make_splits
from core.trainer import Trainer, seed_everything
from tests.conftest import REPO
from tests.helpers import small_cnn


# Its --concurrent and --compile-cache parts (spawned processes; compiling) are left out: each spawned
# process imports torch again, which made this test time out on the shared 2-core machine.
def test_bench_trial_prints_ratios_and_the_limit_per_model(tmp_path):
    common = [sys.executable, "benchmarks/bench_trial.py", "--data", "fake", "--data-root", str(tmp_path),
              "--models", "mobilenet", "--images", "64", "--batch-size", "16", "--max-batches", "1", "--warmup", "1",
              "--steps", "1"]
    res = subprocess.run([*common, "--variant", "", "--variant", "channels_last=off"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    number = r"[\d,.]+"
    for variant, layout in (("defaults", "channels_last"), ("channels_last=off", "contiguous")):
        rates = rf"{number}\s+{number}\s+{number}\s+[\d.]+x\s+[\d.]+"  # NNI example, trial, limit, ratios
        assert re.search(rf"^mobilenet\s+{variant}\s+{rates}\s+{layout}, fp32, compile off$", res.stdout, re.M), \
            res.stdout
    assert "load average" in res.stdout
    ab = subprocess.run([*common, "--ab", "channels_last"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert ab.returncode == 0, ab.stderr[-2000:]
    assert re.search(rf"^mobilenet\s+{number}\s+{number}\s+[\d.]+x\s+[\d.]+-[\d.]+x\s+\S", ab.stdout, re.M), ab.stdout


def test_bench_trial_refuses_an_unknown_field():
    res = subprocess.run([sys.executable, "benchmarks/bench_trial.py", "--data", "fake", "--variant", "nope=1"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "nope" in res.stderr


# torch.compile with inductor builds C++ kernels: about 10-20 s on an idle 2-core CPU.
@pytest.mark.skipif(not any(map(shutil.which, ("g++", "c++", "clang++"))),
                    reason="torch.compile on a CPU needs a C++ compiler")
def test_compile_trains_checkpoints_and_resumes_like_the_plain_engine(tmp_path):
    values = {"data": "fake", "data_root": str(tmp_path), "batch_size": 32, "max_batches": 2, "epochs": 2,
              "optimizer": "SGD", "lr": 0.05, "device": "cpu", "progress": False, "val_fraction": 0.1}
    splits = make_splits("fake", str(tmp_path), val_fraction=0.1)
    seed_everything(0)
    plain = Trainer(small_cnn(), from_dict(TrainConfig, values), splits, eval_splits=())
    plain.train_epoch(0)
    plain.start_epoch = 1
    save_checkpoint(tmp_path / "checkpoint.pt", plain.state_dict(1))
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    resumed = Trainer(small_cnn(), from_dict(TrainConfig, {**values, "compile": True}), splits, eval_splits=())
    assert resumed.net is not resumed.model
    resumed.load_state_dict(state)
    plain.fit()
    resumed.fit()
    saved = resumed.state_dict(2)["model"]
    assert not any(k.startswith("_orig_mod.") for k in saved) and saved.keys() == plain.model.state_dict().keys()
    for key, value in plain.model.state_dict().items():
        torch.testing.assert_close(saved[key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("config", ["hpo/config_gpu.yml", "classic_nas/config_gpu.yml"])
def test_gpu_configs_share_one_gpu_among_their_concurrent_trials(config):
    from nni.experiment.config import ExperimentConfig

    exp = ExperimentConfig.load(str(REPO / config))
    service = exp.training_service
    assert service.trial_gpu_number == 1 and service.max_trial_number_per_gpu >= 2  # 1/N GPU per trial
    assert service.use_active_gpu  # else NNI starts no second trial on a GPU the first one uses
    assert exp.trial_concurrency == service.max_trial_number_per_gpu
