"""Bad input through the plain training command: one clear line, exit 2, no traceback, nothing written
(contradicting options, run names too long, a run folder file that is a symbolic link)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import TrainConfig, from_dict
from tests.helpers import FAST, cli, image_folder, one_error_line, run


@pytest.mark.parametrize("case", ["model", "optimizer", "source", "missing_path", "no_test", "classes", "yaml"])
def test_bad_input(tmp_path, case):
    out = tmp_path / "runs"
    cases = {
        "model": (["--model", "resnet19", "--data", "fake"],
                  "error: model: unknown value 'resnet19'; allowed: densenet121, dpn92, googlenet, mobilenet, "
                  "resnet18, senet18, shufflenetg2, vgg"),
        "optimizer": (["--optimizer", "RMSprop", "--data", "fake"],
                      "error: optimizer: unknown value 'RMSprop'; allowed: SGD, Adadelta, Adagrad, Adam, Adamax"),
        "source": (["--data", "cifar100"], "/cifar100' is neither one of cifar10, fake nor an existing path"),
        "missing_path": (["--data", str(tmp_path / "nope.tar.gz")], "is neither one of cifar10, fake nor an existing path"),
        "no_test": (["--data", str(tmp_path / "d")], "has no images under test/<class>/"),
        "classes": (["--data", str(tmp_path / "d")],
                    "train/ and test/ have different classes (only in train: ['b']; only in test: ['z'])"),
        "yaml": (["--config", str(tmp_path / "recipe.yaml"), "--data", "fake"],
                 f"config file {str(tmp_path / 'recipe.yaml')!r} does not exist (the project's YAML files end in "
                 f".yml: {str(tmp_path / 'recipe.yml')!r})"),
    }
    if case == "no_test":
        image_folder(tmp_path / "d", ["a", "b"], n=1, test_classes=[])
    if case == "yaml":
        (tmp_path / "recipe.yml").write_text("epochs: 1\n")
    if case == "classes":
        image_folder(tmp_path / "d", ["a", "b"], n=1, test_classes=["a", "z"])
    args = cases[case]
    res = cli(["-m", "core.train_model", *args[0], "--out-dir", str(out), "--data-root", str(tmp_path / "root"),
               "--epochs", "1"])
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and args[1] in lines[0], res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert not out.exists() and not (tmp_path / "root" / "cache").exists()


def test_smoke_run_and_resume_from_another_folder(tmp_path):
    out = tmp_path / "runs"
    res = cli(["-m", "core.train_model", "--model", "shufflenetg2", "--data", "fake", "--epochs", "1", "--max-batches",
               "2", "--batch-size", "16", "--out-dir", str(out), "--no-progress"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    run_dir = Path(result["run_dir"])
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "train.log", "metrics.jsonl", "checkpoint.pt",
                                                   "result.json"}
    assert result["epoch"] == 1 and 0 <= result["test_acc"] <= 1 and result["params"] == 887_582
    # resume of a finished run: nothing left to train, the same result comes back
    res = cli(["-m", "core.train_model", "--resume", str(run_dir / "checkpoint.pt")], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["val_acc"] == result["val_acc"]
    # other options beside --resume would be silently ignored: they are an error instead
    res = cli(["-m", "core.train_model", "--resume", str(run_dir / "checkpoint.pt"), "--epochs", "5"], cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == ("error: --epochs: not allowed with --resume, which "
                                                          "continues with the config stored in the checkpoint; "
                                                          "pass --resume alone")


# --- a full disk -------------------------------------------------------------------------------------

FULL_DISK_ARGS = ["--model", "mobilenet", "--data", "fake", "--batch-size", "16", "--epochs", "3", "--max-batches",
                  "3", "--device", "cpu", "--no-progress"]


def _train_in_process(argv, monkeypatch):
    """``python -m core.train_model ARGV`` in this process, with a small CNN for the model; returns
    (exit status, stderr)."""
    import contextlib
    import io

    from torch import nn

    import models
    from core import train_model

    def small_cnn(name, num_classes):
        return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))

    monkeypatch.setattr(models, "create_model", small_cnn)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            train_model.main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def _fill(disk: Path) -> Path:
    """Take every free byte of the file system of ``disk``; returns the file that holds them."""
    import errno
    import os

    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (mounting needs root: skipped where that is impossible)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize("disk", ["tmpfs", "simulated"])
def test_a_full_disk_is_one_line_and_the_run_resumes_once_there_is_space(tmp_path, monkeypatch, request, disk):
    import errno
    import os

    import torch

    code, err = _train_in_process([*FULL_DISK_ARGS, "--out-dir", str(tmp_path / "whole")], monkeypatch)
    assert code == 0, err
    [reference] = list((tmp_path / "whole").iterdir())
    out = request.getfixturevalue("small_disk") if disk == "tmpfs" else tmp_path / "full"
    filled, replace, fsync, checkpoints = [], os.replace, os.fsync, [0]

    def replace_then_fill(src, dst, *args, **kwargs):        # the disk is full after the first checkpoint
        replace(src, dst, *args, **kwargs)
        if str(dst).endswith("checkpoint.pt") and not filled:
            filled.append(_fill(out))

    def fsync_no_space_at_second_checkpoint(fd):
        if ".checkpoint.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            checkpoints[0] += 1
            if checkpoints[0] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fsync(fd)

    if disk == "tmpfs":
        monkeypatch.setattr(os, "replace", replace_then_fill)
    else:
        monkeypatch.setattr(os, "fsync", fsync_no_space_at_second_checkpoint)
    code, err = _train_in_process([*FULL_DISK_ARGS, "--out-dir", str(out)], monkeypatch)
    [run] = [p for p in out.iterdir() if p.is_dir() and p.name != "lost+found"]
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: cannot write '{run}/") and "(No space left on device) in epoch 2" in lines[0]
    assert f"continue with: python {sys.argv[0]} --resume {run / 'checkpoint.pt'}" in lines[0], lines[0]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1      # the last good one, intact
    assert not list(run.glob(".*.tmp")), "the failed write's temporary file is removed"
    # space is freed: the same run resumes from its checkpoint and ends as if nothing happened
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    for path in filled:
        path.unlink()
    code, err = _train_in_process(["--resume", str(run / "checkpoint.pt")], monkeypatch)
    assert code == 0, err

    def metrics(folder):
        return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]

    assert [m["epoch"] for m in metrics(run)] == [1, 2, 3]
    for a, b in zip(metrics(run), metrics(reference)):
        assert (a["train_loss"], a["val_loss"], a["val_acc"]) == (b["train_loss"], b["val_loss"], b["val_acc"])
    assert json.loads((run / "result.json").read_text())["test_acc"] == \
        json.loads((reference / "result.json").read_text())["test_acc"]


@pytest.mark.parametrize("flags,needle", [
    (["--lr", "0.01", "--lr-min", "0.75"], "lr_min: 0.75 is not allowed with lr 0.01"),
    (["--momentum", "5"], "momentum: 5.0 is not allowed; it must be in [0, 1)"),
    (["--momentum", "1"], "momentum: 1.0 is not allowed"),
    (["--val-fraction", "0", "--val-subset", "10"], "val_subset: 10 is not allowed with val_fraction 0"),
])
def test_options_that_contradict_each_other_are_one_line(tmp_path, flags, needle):
    one_error_line(run(["-m", "core.train_model", *FAST, *flags, "--out-dir", str(tmp_path / "runs")]), needle)
    assert not (tmp_path / "runs").exists()


def test_lr_min_above_lr_as_the_real_command(tmp_path):
    one_error_line(cli(["-m", "core.train_model", *FAST, "--lr", "0.01", "--lr-min", "0.75", "--out-dir",
                        tmp_path / "runs"]), "lr_min: 0.75 is not allowed with lr 0.01")
    assert not (tmp_path / "runs").exists()
    assert from_dict(TrainConfig, {"data": "fake", "lr": 0.01, "lr_min": 0.75, "scheduler": "none"}).lr_min == 0.75


def test_run_name_longer_than_the_file_system_allows(tmp_path):
    proc = cli(["-m", "core.train_model", *FAST, "--run-name", "x" * 300, "--out-dir", tmp_path / "runs"])
    one_error_line(proc, "run_name: 300 bytes is too long")
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory) -> Path:
    """A finished 2-epoch run folder (trained once for the module's tests; each copies it)."""
    out = tmp_path_factory.mktemp("two_epochs")
    proc = run(["-m", "core.train_model", "--model", "shufflenetg2", *FAST, "--epochs", "2", "--out-dir", str(out)])
    assert proc.returncode == 0, proc.stderr
    return next(out.iterdir())


@pytest.mark.parametrize("name", ["train.log", "metrics.jsonl", "checkpoint.pt"])
def test_a_run_folder_file_that_is_a_symlink_is_never_written_through(tmp_path, two_epoch_run, name):
    from core.checkpoint import load_checkpoint, save_checkpoint

    run_dir = tmp_path / "run"
    shutil.copytree(two_epoch_run, run_dir)
    checkpoint = run_dir / "checkpoint.pt"
    saved = load_checkpoint(checkpoint)            # back to after epoch 1, so the resume writes every file
    saved["epoch"] = 1
    save_checkpoint(checkpoint, saved)
    victim = tmp_path / "someone_elses_file"       # another user's file in a shared folder
    victim.write_bytes((run_dir / name).read_bytes())
    (run_dir / name).unlink()
    (run_dir / name).symlink_to(victim)
    before = victim.read_bytes()
    if name == "checkpoint.pt":
        resume = run_dir / "elsewhere.pt"           # resume from a copy: the run's checkpoint.pt is the link
        shutil.copy(victim, resume)
    else:
        resume = checkpoint
    command = cli if name == "train.log" else run   # once as a real process
    proc = command(["-m", "core.train_model", "--resume", str(resume)])
    one_error_line(proc, f"{str(run_dir / name)!r} is a symbolic link")
    assert victim.read_bytes() == before and (run_dir / name).is_symlink()
