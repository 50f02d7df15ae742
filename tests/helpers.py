"""Plain functions the test files share (fixtures live in tests/conftest.py): the project's commands
run in this process (``run``, ``report``) or as a real process (``cli``), the check of a one-line
error (``one_error_line``), a file tree's state, a small image folder, a small network and a small
training config."""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from core.config import TrainConfig
from tests.conftest import REPO

#: the environment's bin folder: torchrun, nnictl, and the python3 that trials run
BIN = Path(sys.executable).parent

#: a training of seconds on fake data (one epoch of two batches, on the CPU)
FAST = ["--data", "fake", "--epochs", "1", "--max-batches", "2", "--batch-size", "16", "--eval-batch-size", "50",
        "--no-progress", "--device", "cpu"]

#: a retrain of seconds on fake data (one epoch of one batch, on the CPU)
RETRAIN = ["--data", "fake", "--epochs", "1", "--max-batches", "1", "--batch-size", "16", "--eval-batch-size", "100",
           "--no-progress", "--device", "cpu"]

#: how a user starts each command (a script or ``-m module``) -> the module whose ``main`` it runs
MAINS = {"-m core.train_model": "core.train_model", "hpo/results.py": "hpo.results", "hpo/retrain.py": "hpo.retrain",
         "hpo/trial.py": "hpo.trial", "classic_nas/retrain.py": "classic_nas.retrain",
         "-m classic_nas.export": "classic_nas.export", "-m classic_nas.export_space": "classic_nas.export_space",
         "oneshot_darts/search.py": "oneshot_darts.search", "oneshot_darts/retrain.py": "oneshot_darts.retrain",
         "oneshot_darts/protocol.py": "oneshot_darts.protocol",
         "-m report": "report.cli"}


def run(args, cwd: Path | None = None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """A command of the project as a user runs it (``args`` start with a script or ``-m module``),
    called in this process (much faster than a new interpreter; an unexpected exception fails the
    test with its traceback all the same), in ``cwd`` if given. Returns what ``subprocess.run`` would."""
    args = [str(a) for a in args]
    key = " ".join(args[:2]) if args[0] == "-m" else args[0]
    argv = args[2:] if args[0] == "-m" else args[1:]
    main = importlib.import_module(MAINS[key]).main
    out, err = io.StringIO(), io.StringIO()
    code = 0
    old = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def report(args: list, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m report ARGS`` in this process (``run``), in ``cwd`` if given."""
    return run(["-m", "report", *args], cwd=cwd)


def cli(args: list, cwd: Path = REPO, env: dict[str, str] | None = None, timeout: float = 300, *,
        project_path: bool = True) -> subprocess.CompletedProcess:
    """The real command, as a user runs it: ``python ARGS`` in ``cwd``, one thread, with ``env`` added
    to this process's environment. ``project_path``: the repository on PYTHONPATH; without it the
    environment is left as it is (to check that a script finds the project by itself)."""
    extra = {"OMP_NUM_THREADS": "1", **({"PYTHONPATH": str(REPO)} if project_path else {}), **(env or {})}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **extra})


def one_error_line(proc: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    """Exit ``code``, one ``error:`` line on stderr containing every needle, no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def state(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root`` (and ``root`` itself): mode and content; links as links."""
    out = {}
    for p in [root, *sorted(root.rglob("*"))]:
        st = p.lstat()
        kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
        content = os.readlink(p) if kind == "link" else p.read_bytes() if kind == "file" else None
        out[str(p.relative_to(root))] = (kind, stat.S_IMODE(st.st_mode), content)
    return out


def image_folder(root: Path, classes=("a", "b"), n=4, seed=0, size=32, test_classes=None) -> Path:
    """An image folder (train/ and test/, one folder per class) of ``n`` random PNGs per class;
    ``test_classes``: test/'s classes where they differ from train/'s (``[]``: no test/)."""
    gen = torch.Generator().manual_seed(seed)
    for split, names in (("train", classes), ("test", classes if test_classes is None else test_classes)):
        for cls in names:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (size, size, 3), generator=gen, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


def decode_json(value, strict: bool = True):
    """JSON text, maybe of JSON text (how NNI stores a metric or a parameter set), decoded until it is
    no longer a string; ``strict=False``: a string that is not JSON is returned as it is."""
    while isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            if strict:
                raise
            return value
    return value


def small_cnn() -> nn.Module:
    """A network of a few thousand parameters for CIFAR-shaped input, 10 classes, with BatchNorm."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))


def tiny_cfg(cls: type = TrainConfig, **kw):
    """A training config of seconds on fake data (``cls``: TrainConfig or a subclass); ``kw`` overrides."""
    base = dict(data="fake", subset=256, val_subset=100, batch_size=32, epochs=2, max_batches=4,
                optimizer="SGD", lr=0.05, device="cpu", progress=False)
    return cls(**{**base, **kw})
