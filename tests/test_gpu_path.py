"""The GPU path's device logic, tested on the CPU with faked devices: collectives with
values on two devices, RNG state per device and per rank, GPUs the installed torch cannot drive,
memory checks, out-of-memory errors, precision per GPU, memory format and compile per device and
model, NNI's mixed-edge dtype under autocast. What only a real GPU can check: docs/testing.md."""
from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from torch import nn

from core import checkpoint, device as devices, distributed, speed
from core.config import ModelConfig, TrainConfig, from_dict
from core.data import ImageSet
from core.errors import UserError
from core.loader import BatchLoader
from core.run_folder import Run
from core.run_training import load_splits
from core.speed import Precision
from core.trainer import OutOfMemory, Trainer, seed_everything
from models import create_model
from tests import helpers
from tests.conftest import REPO
from tests.helpers import small_cnn

GiB = 1 << 30
CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)


tiny_cfg = functools.partial(helpers.tiny_cfg, ModelConfig, val_subset=64, max_batches=3, model="mobilenet")


# --- collectives take their values on the communication device ------------------------------

def test_all_sum_moves_every_value_to_the_communication_device(monkeypatch):
    """The engine sums a CPU count (``seen``) with counters on the training device; under NCCL a
    stack of both fails ('expected all tensors on the same device') unless each value moves first. ``meta`` stands for the
    second device here."""
    reduced = []
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "comm_device", lambda: torch.device("meta"))
    monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: reduced.append(t))
    out = distributed.all_sum(7, torch.tensor(3), torch.zeros((), device="meta", dtype=torch.int64))
    assert [t.device.type for t in reduced] == ["meta"] and reduced[0].shape == (3,)
    assert all(t.device.type == "meta" and t.dtype == torch.float64 for t in out)


COLLECTIVES_OF_ONE_RANK = """
import json, sys
import torch, torch.distributed as dist
from core import distributed
rank, store = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
sums = distributed.all_sum(rank + 1, torch.tensor(10 * (rank + 1), dtype=torch.int64), torch.tensor(0.25))
print(json.dumps({"sums": [t.item() for t in sums], "gathered": distributed.gather({"rank": rank}),
                  "told": distributed.broadcast(f"rank {rank}'s path")}))
distributed.leave()
"""


def test_all_sum_sums_over_a_real_gloo_group(tmp_path):
    """Two processes in one gloo group: sums over both ranks, every rank's object gathered on rank 0
    (None on the others), rank 0's object broadcast to both."""
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, "-c", COLLECTIVES_OF_ONE_RANK, str(rank), str(tmp_path / "store")],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    try:
        outs = [proc.communicate(timeout=120) for proc in ranks]
    finally:
        for proc in ranks:
            proc.kill()
    assert [proc.returncode for proc in ranks] == [0, 0], [err[-2000:] for _, err in outs]
    zero, one = (json.loads(out) for out, _ in outs)
    assert zero["sums"] == one["sums"] == [3.0, 30.0, 0.5]
    assert zero["gathered"] == [{"rank": 0}, {"rank": 1}] and one["gathered"] is None
    assert zero["told"] == one["told"] == "rank 0's path"


# --- RNG state per current device, per rank --------------------------------------------------

class FakeCudaRng(checkpoint.CudaRng):
    """``count`` GPUs whose generator states are recorded; indexing a missing one fails as CUDA does."""

    def __init__(self, count: int, current: int = 0):
        self.count, self.cur, self.states = count, current, {}

    def device_count(self) -> int:
        return self.count

    def current(self) -> int:
        return self.cur

    def get(self, index: int) -> torch.Tensor:
        self._check(index)
        return self.states.get(index, torch.full((16,), index, dtype=torch.uint8))

    def set(self, state: torch.Tensor, index: int) -> None:
        self._check(index)
        self.states[index] = state

    def _check(self, index: int) -> None:
        if index >= self.count:
            raise RuntimeError(f"CUDA error: invalid device ordinal {index}")


def test_rng_restore_with_more_saved_states_than_devices(monkeypatch):
    """A checkpoint of the old format holds one CUDA state per GPU of the machine that wrote it (four
    here); resumed where fewer GPUs are visible, the state of the GPU this process trains on is
    restored into that GPU, and nothing else."""
    fake = FakeCudaRng(count=1)
    monkeypatch.setattr(checkpoint, "CUDA_RNG", fake)
    saved = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]
    checkpoint.set_rng_state({"torch": torch.get_rng_state(), "cuda": saved}, torch.device("cuda"))
    assert torch.equal(fake.states[0], saved[0]) and list(fake.states) == [0]
    # two GPUs visible and the process trains on the second, named (cuda:1 while the current device
    # is still 0) or current: GPU 1 takes state 1, GPU 0 keeps its own
    for device, current in ((torch.device("cuda", 1), 0), (torch.device("cuda"), 1)):
        fake = FakeCudaRng(count=2, current=current)
        monkeypatch.setattr(checkpoint, "CUDA_RNG", fake)
        checkpoint.set_rng_state({"torch": torch.get_rng_state(), "cuda": saved}, device)
        assert list(fake.states) == [1] and torch.equal(fake.states[1], saved[1])


def test_rng_state_saves_the_current_device_and_each_rank_restores_its_own(monkeypatch):
    fake = FakeCudaRng(count=2, current=1)
    monkeypatch.setattr(checkpoint, "CUDA_RNG", fake)
    state = checkpoint.rng_state(torch.device("cuda"))  # only the current device's, not every GPU's
    assert torch.equal(state["cuda"], torch.full((16,), 1, dtype=torch.uint8))
    assert "cuda" not in checkpoint.rng_state(CPU)
    ranks = [{"torch": torch.get_rng_state(), "cuda": torch.full((16,), 10 + r, dtype=torch.uint8)}
             for r in range(2)]
    saved = checkpoint.rng_states(ranks)
    mine, own = checkpoint.rng_of_rank(saved, 1)
    assert own and mine is ranks[1]
    checkpoint.set_rng_state(mine, torch.device("cuda", 1))
    assert torch.equal(fake.states[1], ranks[1]["cuda"])
    assert checkpoint.rng_of_rank(saved, 3) == (ranks[1], False)  # more ranks than saved: not its own
    legacy = {"torch": torch.get_rng_state(), "cuda": []}        # before per-rank states: rank 0's alone
    assert checkpoint.rng_of_rank(legacy, 0) == (legacy, True)


def test_checkpoint_holds_every_ranks_generators(tmp_path):
    cfg = tiny_cfg(epochs=1)
    seed_everything(0)
    trainer = Trainer(create_model("mobilenet", num_classes=10), cfg, load_splits(cfg), Run(tmp_path))
    trainer.fit()
    rng = checkpoint.load_checkpoint(tmp_path / "checkpoint.pt")["rng"]
    assert len(rng["ranks"]) == 1 and torch.equal(rng["ranks"][0]["torch"], torch.get_rng_state())


# --- GPUs this torch cannot drive ----------------------------------------------------------

CU130_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


@pytest.mark.parametrize("capability, archs, supported", [
    ((7, 5), CU130_ARCHS, True),    # T4: Colab's and Kaggle's
    ((8, 9), CU130_ARCHS, True),    # L4: sm_86 code runs on 8.9
    ((6, 0), CU130_ARCHS, False),   # P100: Kaggle's
    ((7, 0), CU130_ARCHS, False),   # V100
    ((8, 0), ["sm_86"], False),     # machine code for a newer minor version does not run
    ((12, 1), ["sm_90", "compute_120"], True),  # PTX compiles for a newer GPU
])
def test_capability_check_against_the_arch_list(capability, archs, supported):
    reason = devices.unsupported_gpu("Tesla P100-PCIE-16GB", capability, archs)
    assert (reason is None) == supported
    if not supported:
        assert f"compute capability {capability[0]}.{capability[1]}" in reason and "Tesla P100-PCIE-16GB" in reason
        assert f"pip install torch=={torch.__version__.split('+')[0]}" in reason
        assert "--index-url https://download.pytorch.org/whl/cu126" in reason


def test_resolve_device_refuses_a_gpu_without_kernels(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)   # the GPU is visible
    monkeypatch.setattr(devices, "cuda_unusable_reason", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla P100-PCIE-16GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (6, 0))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: CU130_ARCHS)
    for name in ("auto", "cuda"):
        with pytest.raises(UserError, match=r"^device: the GPU 'Tesla P100-PCIE-16GB' \(compute capability 6.0\)"):
            devices.resolve_device(name)
    assert devices.resolve_device("cpu") == CPU


def test_a_driver_too_old_is_an_error_not_a_quiet_cpu_run(monkeypatch):
    def unavailable() -> bool:
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old (found version 12040).")
        return False

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)   # the GPU is visible
    monkeypatch.setattr(devices, "gpu_present", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", unavailable)
    with pytest.raises(UserError) as err:
        devices.resolve_device("auto")
    message = str(err.value)
    assert "\n" not in message and "driver on your system is too old (found version 12040)" in message
    assert "pip install torch==" in message and "--device cpu" in message
    monkeypatch.setattr(devices, "gpu_present", lambda: False)  # no GPU at all: the CPU, as before
    assert devices.resolve_device("auto") == CPU


@pytest.mark.parametrize("hidden", ["", "-1", " -1 ", "-1,0"])
def test_hidden_gpus_mean_the_cpu_said_in_the_log(monkeypatch, hidden):
    """NNI sets CUDA_VISIBLE_DEVICES to '' for a trial with trialGpuNumber 0 (its local training
    service to '-1'), and users set it to keep a run on the CPU: the driver is there, torch sees no
    GPU, and that is the CPU, not a driver to update."""
    def unavailable() -> bool:
        warnings.warn("CUDA initialization: CUDA driver initialization failed, you might not have a CUDA gpu.")
        return False

    monkeypatch.setattr(devices, "gpu_present", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", unavailable)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
    assert devices.resolve_device("auto") == CPU
    with pytest.raises(UserError, match=r"^device: 'cuda' was asked for but CUDA_VISIBLE_DEVICES=.* hides every GPU"):
        devices.resolve_device("cuda")
    cfg = tiny_cfg(device="auto")
    line = Trainer(small_cnn(), cfg, load_splits(cfg), eval_splits=()).choices[0]
    assert line == (f"device: cpu (auto: CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU (NNI sets it so for "
                    "trialGpuNumber 0))")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # a visible GPU this torch cannot drive: still the error
    with pytest.raises(UserError, match="Update the NVIDIA driver"):
        devices.resolve_device("auto")


def test_which_cuda_visible_devices_hide_every_gpu(monkeypatch):
    for value in ("", "-1", "-1,0", "none", ",0"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert devices.hidden_gpus() == value
    for value in ("0", "1,0", "0 ", "GPU-5d1f2a3b", "MIG-0a1b"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert devices.hidden_gpus() is None
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert devices.hidden_gpus() is None and devices.cpu_reason("auto") is None


# --- memory ---------------------------------------------------------------------------

def test_activation_estimate_matches_the_measured_figures():
    """Counted on the meta device; measured on the CPU: 5.5 GiB (dpn92) and 4.8 GiB (densenet121) of
    float32 activations at batch 128."""
    assert speed.activation_bytes(create_model("dpn92", 10), 128, 32) / GiB == pytest.approx(5.5, rel=0.05)
    assert speed.activation_bytes(create_model("densenet121", 10), 128, 32) / GiB == pytest.approx(4.8, rel=0.05)


T4_USABLE = 15 * GiB   # a 16 GB card (T4)


def needs_in_16_bit_and_fp32(model: nn.Module, batch_size: int) -> dict[str, float]:
    """One trial's estimated GPU memory (``core.speed.training_bytes``) in GiB, 16-bit (fp16 on a T4)
    and fp32, its activations counted once."""
    counted = speed.activation_bytes(model, batch_size, 32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(speed, "activation_bytes", lambda *args: counted)
        return {kind: speed.training_bytes(model, batch_size, 32, precision) / GiB for kind, precision in
                (("16-bit", speed.choose_precision(CUDA, True, capability=(7, 5))),
                 ("fp32", speed.choose_precision(CUDA, False)))}


def config_comment(name: str) -> tuple[str, dict]:
    text = (REPO / name).read_text()
    comment = " ".join(line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#"))
    return comment, yaml.safe_load(text)


def test_the_gpu_configs_memory_rule():
    """hpo/config_gpu.yml's figures are what core.speed estimates for every model of the search
    space at the trials' batch size, and its rule holds for them: maxTrialNumberPerGpu trials of any
    model fit on a 16 GB card in 16-bit (the default), and in fp32 exactly the models it names do not."""
    from hpo.trial import HpoTrialConfig

    comment, config = config_comment("hpo/config_gpu.yml")
    per_gpu = config["trainingService"]["maxTrialNumberPerGpu"]
    assert per_gpu >= 2   # with one GPU, NNI 3.0 starts no trial otherwise
    assert "--batch-size" not in config["trialCommand"]
    batch_size = HpoTrialConfig().batch_size
    models = json.loads((REPO / "hpo" / "search_space.json").read_text())["model"]["_value"]
    computed = {(kind, name): need for name in models
                for kind, need in needs_in_16_bit_and_fp32(create_model(name, 10), batch_size).items()}
    stated = {}
    for kind, figures in re.findall(r"(16-bit|fp32)(?: \(--no-amp\))?: (.*?) GiB", comment):
        for names, gib in re.findall(r"([\w /]+?) (\d+\.\d)", figures):
            stated.update({(kind, name): float(gib) for name in names.strip().split(" / ")})
    assert stated == {key: round(need, 1) for key, need in computed.items()}
    assert f"at batch {batch_size}" in comment
    assert all(speed.trials_that_fit(computed["16-bit", m] * GiB, T4_USABLE) >= per_gpu for m in models)
    too_big = {m for m in models if speed.trials_that_fit(computed["fp32", m] * GiB, T4_USABLE) < per_gpu}
    named = re.search(r"but not two fp32 ([\w /]+?) trials", comment).group(1)
    assert too_big == set(named.split(" / ")) and per_gpu == 2


def test_gpu_configs_name_the_memory_rule():
    """classic_nas/config_gpu.yml: its trial's figures are core.speed's estimate at the trials' batch
    size, and maxTrialNumberPerGpu trials fit from the GPU sizes it names (and not below them)."""
    from classic_nas.space import SKIP_LABELS, build_model

    comment, config = config_comment("classic_nas/config_gpu.yml")
    per_gpu = config["trainingService"]["maxTrialNumberPerGpu"]
    assert per_gpu >= 2   # with one GPU, NNI 3.0 starts no trial otherwise
    batch_size = yaml.safe_load((REPO / "configs" / "classic_nas.yml").read_text())["batch_size"]
    need = needs_in_16_bit_and_fp32(build_model({label: 1 for label in SKIP_LABELS}), batch_size)
    stated = re.search(rf"at batch {batch_size} needs about (\d+\.\d) GiB in 16-bit and (\d+\.\d) GiB in fp32, "
                       rf"so {per_gpu} trials fit on any GPU of (\d+) GiB or more in 16-bit \((\d+) GiB in fp32\)",
                       comment)
    assert stated, comment
    assert (float(stated[1]), float(stated[2])) == (round(need["16-bit"], 1), round(need["fp32"], 1))
    for kind, gib in (("16-bit", int(stated[3])), ("fp32", int(stated[4]))):
        assert speed.trials_that_fit(need[kind] * GiB, gib * GiB) >= per_gpu
        assert speed.trials_that_fit(need[kind] * GiB, (gib - 1) * GiB) < per_gpu


def test_data_set_too_large_for_free_memory_stays_in_host_memory(monkeypatch, tmp_path):
    """``data_fits`` against the free memory less training's need, and the engine's wiring: every
    loader asks it with its data set's bytes and the trainer's estimate, and a set that does not fit
    stays in host memory (batches copied as drawn), the log saying where."""
    monkeypatch.setattr(devices, "free_memory", lambda d: (3 * GiB, 16 * GiB))
    fits, where = devices.data_fits(1 * GiB, CUDA, reserve=1 * GiB)
    assert fits and "on the GPU" in where
    fits, where = devices.data_fits(2 * GiB, CUDA, reserve=1 * GiB)
    assert not fits and "in host memory" in where and "3.0 GiB free of 16.0 GiB" in where
    assert devices.data_fits(100 * GiB, CPU)[0]

    from core import trainer as engine

    asked = []
    monkeypatch.setattr(Trainer, "_check_memory", lambda self, model: 5 * GiB)   # what training would need
    monkeypatch.setattr(engine, "data_fits", lambda nbytes, device, reserve: asked.append((nbytes, reserve)) or
                        (False, "in host memory (test: no room)"))
    cfg = tiny_cfg(epochs=1, max_batches=1)
    splits = load_splits(cfg)
    trainer = Trainer(small_cnn(), cfg, splits, Run(tmp_path), eval_splits=("val",))
    trainer.fit()
    trainer.evaluate("test")   # a loader made on demand: the final test's
    loaders = [trainer.train_loader, trainer.eval_loaders["val"]]
    assert all(not loader.resident and loader._staging is not None for loader in loaders)
    assert asked == [(data.images.numel() + data.labels.numel() * 8, 5 * GiB)
                     for data in (splits.train, splits.val, splits.test)]
    log = (tmp_path / "train.log").read_text()
    assert f"data: {len(splits.train):,} training images in host memory (test: no room)" in log


@pytest.mark.parametrize("train", [True, False])
def test_host_memory_batches_equal_resident_ones(train):
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    data = ImageSet(images, torch.arange(40) % 10)
    kw = dict(batch_size=16, device=CPU, mean=(0.5,) * 3, std=(0.25,) * 3, train=train, cutout=8, seed=3)
    resident, host = BatchLoader(data, **kw), BatchLoader(data, resident=False, **kw)
    for (x1, y1), (x2, y2) in zip(resident, host, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_out_of_memory_is_one_line_naming_model_batch_and_what_to_try(tmp_path):
    class FakeOutOfMemory(Trainer):
        def train_step(self, batch):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    cfg = tiny_cfg(model="dpn92", subset=64)
    trainer = FakeOutOfMemory(create_model("dpn92", num_classes=10), cfg, load_splits(cfg), Run(tmp_path))
    with pytest.raises(OutOfMemory) as err:
        trainer.fit()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("out of memory during training: model dpn92 at batch size 32 (fp32) on cpu; try "
                              "--batch-size 16")
    assert "maxTrialNumberPerGpu" in message


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("resident", [True, False])
def test_each_rank_takes_only_its_share_of_the_global_batch(train, resident):
    """Data-parallel over 2 ranks: each rank's batches are its half of one process's batches (same
    draws, augmentation and cutout included), and from host memory each rank copies only its half
    of the global batch to the device, not the whole batch."""
    images = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8)
    data = ImageSet(images, torch.arange(48) % 10)
    kw = dict(batch_size=16, device=CPU, mean=(0.5,) * 3, std=(0.25,) * 3, train=train, cutout=8, seed=3)
    whole = list(BatchLoader(data, **kw))
    for rank in range(2):
        loader = BatchLoader(data, rank=rank, world_size=2, resident=resident, **kw)
        copied = []
        if not resident:
            copy = loader._staging.copy
            loader._staging.copy = lambda source, idx: copied.append((source.dim(), len(idx))) or copy(source, idx)
        for (x, y), (wx, wy) in zip(loader, whole, strict=True):
            assert torch.equal(x, wx.tensor_split(2)[rank]) and torch.equal(y, wy.tensor_split(2)[rank])
        assert resident or set(copied) == {(4, 8), (1, 8)}   # images and labels: 8 of each global batch of 16


def out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                                 "14.74 GiB of which 1.20 GiB is free. Including non-PyTorch memory, ...")


@pytest.mark.parametrize("during", ["setup (the model and data on the device)", "resume", "the final test"])
def test_out_of_memory_anywhere_in_a_training_command_is_one_line(monkeypatch, tmp_path, capsys, during):
    from core import trainer as engine, train_model

    args = ["--model", "mobilenet", "--data", "fake", "--subset", "64", "--val-subset", "32", "--batch-size", "16",
            "--eval-batch-size", "32", "--epochs", "1", "--max-batches", "1", "--device", "cpu", "--no-progress",
            "--out-dir", str(tmp_path)]
    if during == "resume":
        train_model.main(args)
        args = ["--resume", str(next(tmp_path.iterdir()) / "checkpoint.pt")]
        monkeypatch.setattr(Trainer, "load_extra_state", out_of_memory)
    elif during == "the final test":
        evaluate = Trainer.evaluate
        monkeypatch.setattr(Trainer, "evaluate", lambda self, name, *args, **kwargs: out_of_memory() if name == "test"
                            else evaluate(self, name, *args, **kwargs))
    else:
        monkeypatch.setattr(engine, "make_loader", out_of_memory)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        train_model.main(args)
    assert exit_.value.code == 2
    size = "eval batch size 32" if during == "the final test" else "batch size 16"
    assert capsys.readouterr().err == (f"error: out of memory during {during}: model mobilenet at {size} (fp32) on "
                                       f"cpu; try --{'eval-' if 'test' in during else ''}batch-size "
                                       f"{16 if 'test' in during else 8}, or fewer trials per GPU "
                                       "(maxTrialNumberPerGpu in the nnictl config)\n")


def test_out_of_memory_outside_the_engine_is_one_line(capsys):
    from core.errors import cli_main

    with pytest.raises(SystemExit) as exit_:
        cli_main(out_of_memory)()
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("error: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB); try a "
                                       "smaller --batch-size or --eval-batch-size, --amp on a GPU, or fewer trials "
                                       "per GPU (maxTrialNumberPerGpu in the nnictl config)\n")
    with pytest.raises(RuntimeError, match="^a bug$"):   # any other runtime error stays a traceback
        cli_main(lambda: (_ for _ in ()).throw(RuntimeError("a bug")))()


def test_out_of_memory_message_on_a_gpu(monkeypatch):
    monkeypatch.setattr(devices, "free_memory", lambda d: (0.2 * GiB, 15 * GiB))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla T4")
    message = devices.out_of_memory_message(model="googlenet", batch_size=128, precision="fp32", device=CUDA,
                                            during="training")
    assert "googlenet at batch size 128 (fp32) on Tesla T4 (15.0 GiB, 0.2 GiB free now)" in message
    assert "--batch-size 64" in message and "--amp" in message


# --- the choices of core/speed.py -----------------------------------------------

@pytest.mark.parametrize("device, capability, amp, can_scale, expected", [
    (CPU, None, True, True, ("fp32", None, False)),
    (CUDA, (9, 0), True, True, ("bf16", torch.bfloat16, False)),   # H100
    (CUDA, (8, 0), True, True, ("bf16", torch.bfloat16, False)),   # A100
    (CUDA, (7, 5), True, True, ("fp16", torch.float16, True)),     # T4
    (CUDA, (6, 0), True, True, ("fp16", torch.float16, True)),     # P100
    (CUDA, (7, 5), True, False, ("fp32", None, False)),            # a step without the scaler
    (CUDA, (8, 0), False, True, ("fp32", None, False)),            # --no-amp
])
def test_precision_per_device(device, capability, amp, can_scale, expected):
    p = speed.choose_precision(device, amp, capability=capability, can_scale=can_scale)
    assert (p.name, p.dtype, p.scaled) == expected and p.reason


def test_fp16_with_gradient_scaler_trains_and_resumes_exactly(monkeypatch, tmp_path):
    """The fp16 path a T4 takes, run under CPU autocast: the scaler scales, its state is in the
    checkpoint, and a run stopped after epoch 1 resumes to the straight run's weights and scale."""
    fp16 = Precision("fp16", torch.float16, True, "test: fp16 on the CPU")
    monkeypatch.setattr("core.trainer.choose_precision", lambda *a, **k: fp16)
    cfg = tiny_cfg(epochs=2, subset=128, batch_size=16, max_batches=2, grad_clip=5.0)

    def run(folder: Path, epochs: int) -> Trainer:
        seed_everything(0)
        trainer = Trainer(small_cnn(), cfg, load_splits(cfg), Run(folder))
        assert trainer.scaler.is_enabled() and trainer.precision is fp16
        trainer.cfg = dataclasses_replace(cfg, epochs=epochs)
        trainer.fit()
        return trainer

    straight = run(tmp_path / "a", 2)
    assert all(torch.isfinite(torch.tensor(m["train_loss"])) for m in straight.history)
    run(tmp_path / "b", 1)
    state = checkpoint.load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert state["scaler"]["scale"] > 0
    seed_everything(99)
    resumed = Trainer(small_cnn(), cfg, load_splits(cfg), Run(tmp_path / "b"))
    resumed.load_state_dict(state)
    resumed.fit()
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_memory_format_per_device_and_model():
    bf16 = speed.choose_precision(CUDA, True, capability=(8, 0))
    fp32 = speed.choose_precision(CUDA, False)
    assert speed.choose_channels_last("auto", CPU, "mobilenet").value           # measured faster in every pair
    assert not speed.choose_channels_last("auto", CPU, "dpn92").value           # measured: within the noise
    assert not speed.choose_channels_last("auto", CPU, "SomeNet").value         # not measured: contiguous
    assert "not measured" in speed.choose_channels_last("auto", CPU, "SomeNet").reason
    assert speed.choose_channels_last("auto", CUDA, "resnet18", bf16).value     # tensor cores: NHWC
    assert not speed.choose_channels_last("auto", CUDA, "resnet18", fp32).value  # not forced in fp32
    from oneshot_darts.search_trainer import SUPERNET_KEY, SUPERNET_NOTES

    supernet = speed.choose_channels_last("auto", CUDA, SUPERNET_KEY, bf16, SUPERNET_NOTES)   # the stage's measurement
    assert not supernet.value and "torch.stack" in supernet.reason
    assert speed.choose_channels_last("on", CPU, "resnet18").value
    assert not speed.choose_channels_last("off", CPU, "mobilenet").value


def test_model_key_names_registry_models_and_supernets():
    from oneshot_darts.search_trainer import SUPERNET_KEY, SUPERNET_NOTES

    assert speed.model_key(nn.Linear(2, 2), tiny_cfg(model="vgg")) == "vgg"
    net = nn.Sequential(nn.Linear(2, 2))
    assert speed.model_key(net, TrainConfig()) == "Sequential"
    assert speed.model_key(net, TrainConfig(), SUPERNET_NOTES) == SUPERNET_KEY   # the name its stage gives it


def test_compile_auto_pays_only_past_the_break_even():
    full = speed.planned_images(from_dict(TrainConfig, {"epochs": 30, "batch_size": 128}), 45_000)
    quick = speed.planned_images(from_dict(TrainConfig, {"epochs": 2, "batch_size": 64}), 2_000)
    smoke = speed.planned_images(from_dict(TrainConfig, {"epochs": 3, "batch_size": 8, "max_batches": 2}), 2_000)
    assert (full, quick, smoke) == (30 * 351 * 128, 2 * 31 * 64, 3 * 2 * 8)
    assert speed.choose_compile("auto", CPU, "resnet18", full).value
    assert not speed.choose_compile("auto", CPU, "resnet18", quick).value
    assert not speed.choose_compile("auto", CPU, "resnet18", smoke).value
    from oneshot_darts.retrain import DROP_PATH_NO_COMPILE
    from oneshot_darts.search_trainer import SUPERNET_KEY, SUPERNET_NOTES

    supernet = speed.choose_compile("auto", CPU, SUPERNET_KEY, full, no_compile=SUPERNET_NOTES.no_compile)
    assert not supernet.value and supernet.reason == ("auto: not for darts-supernet (the search's own step runs the "
                                                      "supernet for two optimizers)")
    no_gain = speed.choose_compile("auto", CPU, "mobilenet", full)  # measured: no gain from compiling
    assert not no_gain.value and "no measured gain" in no_gain.reason
    drop_path = speed.choose_compile("auto", CPU, "DartsSpace", full, no_compile=DROP_PATH_NO_COMPILE)
    assert not drop_path.value and drop_path.reason == ("auto: not with drop path (its probability changes every "
                                                        "epoch and would recompile)")
    assert not speed.choose_compile("auto", CUDA, "resnet18", full).value  # not measured on a GPU
    assert speed.choose_compile("on", CPU, "resnet18", smoke).value
    assert "break-even" in speed.choose_compile("auto", CPU, "resnet18", quick).reason


def test_compile_auto_stays_off_on_a_cpu_without_a_compiler(monkeypatch):
    full = speed.planned_images(from_dict(TrainConfig, {"epochs": 30, "batch_size": 128}), 45_000)
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    choice = speed.choose_compile("auto", CPU, "resnet18", full)
    assert not choice.value and "no C++ compiler (no-such-compiler-here)" in choice.reason
    assert speed.choose_compile("on", CPU, "resnet18", full).value   # asked for: inductor says what is missing
    assert not speed.choose_compile("auto", CUDA, "resnet18", full).value


def test_the_log_says_what_was_chosen_and_why(tmp_path):
    cfg = tiny_cfg(epochs=1)
    trainer = Trainer(create_model("mobilenet", num_classes=10), cfg, load_splits(cfg), Run(tmp_path))
    trainer.fit()
    log = (tmp_path / "train.log").read_text()
    assert "precision: fp32: mixed precision is for GPUs" in log
    assert "memory format: channels_last (auto on cpu for mobilenet: faster in every pair: on/off speed" in log
    assert "compile: off (auto: 96 planned training images are below the cpu break-even" in log


def test_compile_wraps_the_ddp_module_and_evaluation_runs_the_plain_one(monkeypatch, tmp_path):
    """PyTorch's recommendation: compile DDP(model), so the compiled graph overlaps the gradient
    all-reduce with the backward pass (compiling the module inside DDP does not)."""
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        monkeypatch.setattr(distributed, "world_size", lambda: 2)  # DDP over a one-rank group
        cfg = tiny_cfg(compile="on")
        trainer = Trainer(small_cnn(), cfg, load_splits(cfg), eval_splits=())
        assert isinstance(trainer.net._orig_mod, nn.parallel.DistributedDataParallel)  # compiled around DDP
        assert trainer.net._orig_mod.module is trainer.model
        assert distributed.unwrap(trainer.net) is trainer.model
    finally:
        dist.destroy_process_group()


def test_evaluation_uses_the_training_format_under_inference_mode(tmp_path):
    cfg = tiny_cfg(epochs=1)
    trainer = Trainer(create_model("mobilenet", num_classes=10), cfg, load_splits(cfg))
    assert trainer.channels_last  # mobilenet on the CPU (CHANNELS_LAST)
    seen = []
    trainer.model.register_forward_pre_hook(
        lambda m, args: seen.append((torch.is_inference_mode_enabled(),
                                     args[0].is_contiguous(memory_format=torch.channels_last))))
    trainer.evaluate("val")
    assert seen and all(mode and channels_last for mode, channels_last in seen)


def test_old_boolean_compile_values_still_load():
    assert from_dict(TrainConfig, {"compile": False}).compile == "off"
    assert from_dict(TrainConfig, {"compile": True}).compile == "on"
    assert TrainConfig().compile == "auto"


def test_nni_mixed_edges_stay_in_the_autocast_dtype():
    """NNI's DifferentiableMixedCell multiplied bf16 op outputs by float32 softmax weights, so its
    node states (and the cell output) were float32 under autocast."""
    from oneshot_darts.space import build_supernet

    net = build_supernet(channels=4, layers=3, n_nodes=2)
    from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedCell

    dtypes = []
    for cell in (m for m in net.modules() if isinstance(m, DifferentiableMixedCell)):
        cell.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(torch.randn(2, 3, 32, 32)).float().sum().backward()
    assert dtypes and set(dtypes) == {torch.bfloat16}, dtypes
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad and p.dim() == 1 and p.numel() == 8)


# --- GPU order ------------------------------------------------------------------------------

def test_gpus_are_numbered_in_pci_order_as_nni_numbers_them():
    code = "import os, core; print(os.environ['CUDA_DEVICE_ORDER'])"
    env = {k: v for k, v in __import__("os").environ.items() if k != "CUDA_DEVICE_ORDER"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PCI_BUS_ID"
    env["CUDA_DEVICE_ORDER"] = "FASTEST_FIRST"  # the user's own choice wins
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "FASTEST_FIRST"
