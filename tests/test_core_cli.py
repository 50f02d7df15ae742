"""Bad input through the plain training command: one clear line, exit 2, no traceback, nothing written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "core.train_model", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def make_folder(root: Path, train_classes, test_classes):
    from PIL import Image

    for split, classes in (("train", train_classes), ("test", test_classes)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            Image.new("RGB", (32, 32)).save(root / split / cls / "0.png")
    return root


@pytest.mark.parametrize("case", ["model", "optimizer", "source", "missing_path", "no_test", "classes"])
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
    }
    if case == "no_test":
        make_folder(tmp_path / "d", ["a", "b"], [])
    if case == "classes":
        make_folder(tmp_path / "d", ["a", "b"], ["a", "z"])
    args = cases[case]
    res = run_cli(*args[0], "--out-dir", str(out), "--data-root", str(tmp_path / "root"), "--epochs", "1")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and args[1] in lines[0], res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert not out.exists() and not (tmp_path / "root" / "cache").exists()


def test_smoke_run_and_resume_from_another_folder(tmp_path):
    out = tmp_path / "runs"
    res = run_cli("--model", "shufflenetg2", "--data", "fake", "--epochs", "1", "--max-batches", "2",
                  "--batch-size", "16", "--out-dir", str(out), "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    run_dir = Path(result["run_dir"])
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "train.log", "metrics.jsonl", "checkpoint.pt",
                                                   "result.json"}
    assert result["epoch"] == 1 and 0 <= result["test_acc"] <= 1 and result["params"] == 887_582
    # resume of a finished run: nothing left to train, the same result comes back
    res = run_cli("--resume", str(run_dir / "checkpoint.pt"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["val_acc"] == result["val_acc"]
    # other options beside --resume would be silently ignored: they are an error instead
    res = run_cli("--resume", str(run_dir / "checkpoint.pt"), "--epochs", "5", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == ("error: --epochs: not allowed with --resume, which "
                                                          "continues with the config stored in the checkpoint; "
                                                          "pass --resume alone")
