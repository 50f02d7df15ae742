"""The lab folder: where every stage's files go, and ``lab.json``, the record of the stages.

Layout (the same in the lab folder and, when it is mirrored, in the local working folder)::

    lab.json            the record: budget, data, and per stage its status, experiment or run folder,
                        report, figures, attempts and seconds spent
    configs/            the nnictl configs the experiments were created from
    nni-experiments/    NNI's experiments (experimentWorkingDirectory): db/nni.sqlite, logs, trials
    runs/               the run folders (CIFAR_AUTOML_RUNS): retrains, the DARTS protocol
    data/               CIFAR-10's download, the decode cache and torch.compile's cache (CIFAR_AUTOML_DATA_ROOT)
    reports/<stage>/    each stage's report (python -m report), reports/study/ the study report
    probes.json         the timed steps of the estimates, per device

A stage's status goes ``running`` (started: its experiment id or run folder is recorded) ->
``trained`` (its training finished) -> ``done`` (its report written). One lab command at a time
holds the working folder's ``.lab.lock``.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.files import atomic_write_text
from core.paths import DATA_ENV, DATA_ROOT_ENV, FROM_HPO_ENV, RUNS_ENV, TRIAL_FLAGS_ENV
from lab import mirror as mirroring
from lab.plan import BUDGETS, STAGES, Budget

RECORD = "lab.json"
KIND = "cifar-automl lab"
LOCK = ".lab.lock"
#: Where the working folder of a lab folder on a FUSE mount goes when none is given.
LOCAL_WORK = Path.home() / "cifar-automl-lab-work"
#: Where Colab mounts Google Drive (a folder below it is on Drive whatever the mount table says).
COLAB_DRIVE = Path("/content/drive")


def default_work_dir(lab_dir: Path) -> Path:
    """The lab folder itself, or a local folder when it is on Google Drive or another FUSE mount."""
    if not (mirroring.on_fuse(lab_dir) or lab_dir.is_relative_to(COLAB_DRIVE)):
        return lab_dir
    digest = hashlib.sha1(str(lab_dir).encode()).hexdigest()[:8]
    return LOCAL_WORK / f"{lab_dir.name}-{digest}"


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def _work_folder(name: str) -> property:
    """A folder of the lab's working folder: ``<work>/name``."""
    return property(lambda lab: lab.work / name, doc=f"``<work>/{name}``")


class Lab:
    """A lab folder opened by one command: paths, the record, the mirror."""

    def __init__(self, lab_dir: str | os.PathLike, work_dir: str | os.PathLike | None = None):
        self.lab_dir = Path(os.path.abspath(os.path.expanduser(str(lab_dir))))
        self.work = Path(os.path.abspath(os.path.expanduser(str(work_dir)))) if work_dir else \
            default_work_dir(self.lab_dir)
        self.mirrored = self.work != self.lab_dir
        self.record: dict[str, Any] = {}
        self.budget: Budget = BUDGETS["smoke"]
        self._lock = None
        self._synced = 0.0
        self._manifest: dict[str, list[int]] | None = None     # the lab folder's, kept between mirrors

    # --- paths ---------------------------------------------------------------------------------
    experiments = _work_folder("nni-experiments")
    runs = _work_folder("runs")
    data_root = _work_folder("data")
    configs = _work_folder("configs")

    def report_dir(self, stage: str) -> Path:
        return self.work / "reports" / stage

    def path(self, relative: str) -> Path:
        """A path the record holds (relative to the folder) as a path in the working folder."""
        return self.work / relative

    def relative(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.work.resolve()).as_posix()

    # --- open, record --------------------------------------------------------------------------
    def open(self, budget: str | None, data: str | None) -> "Lab":
        """Take the lock, restore the working folder from the lab folder after a reset, and read (or
        start) the record; a budget or data other than the record's is an error."""
        from filelock import FileLock, Timeout

        for folder, flag in ((self.lab_dir, "--lab-dir"), (self.work, "--work-dir")):
            if folder.exists() and not folder.is_dir():
                raise UserError(f"{flag}: {str(folder)!r} is a file, not a folder")
        if not (self.work / RECORD).is_file() and not (self.lab_dir / RECORD).is_file():   # a new lab
            for folder, flag in ((self.lab_dir, "--lab-dir"), (self.work, "--work-dir")):
                if folder.is_dir() and any(p.name not in (LOCK, mirroring.MANIFEST) for p in folder.iterdir()):
                    raise UserError(f"{flag}: {str(folder)!r} holds other files and no {RECORD}; give a new or "
                                    "empty folder for the lab")
        self.work.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.work / LOCK))
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise UserError(f"another lab command is running in {str(self.work)!r}; wait for it to end (or stop it), "
                            "then run this one again") from None
        try:
            self._read(budget, data)
        except BaseException:
            self.close()
            raise
        return self

    def _read(self, budget: str | None, data: str | None) -> None:
        if self.mirrored and not (self.work / RECORD).is_file() and (self.lab_dir / RECORD).is_file():
            restored = mirroring.restore(self.lab_dir, self.work)
            print(f"restored {restored} files from {self.lab_dir} into the local working folder {self.work} "
                  "(this runtime started without them)", flush=True)
        path = self.work / RECORD
        if path.is_file():
            try:
                self.record = json.loads(path.read_text())
            except ValueError:
                raise UserError(f"{str(path)!r} is not JSON; the lab record is damaged") from None
            if not isinstance(self.record, dict) or self.record.get("kind") != KIND:
                raise UserError(f"{str(path)!r} is not a lab record of this project")
            for key, asked in (("budget", budget), ("data", data)):
                if key == "data" and asked:
                    asked = _data_source(asked)
                if asked and asked != self.record.get(key):
                    raise UserError(f"--{key}: {asked!r}, but the lab in {str(self.lab_dir)!r} was started with "
                                    f"{self.record.get(key)!r}; use another LAB_DIR for another {key} (or delete "
                                    "this one)")
            self.budget = BUDGETS[self.record["budget"]]
            return
        if not budget:
            raise UserError("--budget: required to start a lab (smoke, quick or lab)")
        if budget not in BUDGETS:
            raise UserError(f"--budget: unknown value {budget!r}; allowed: {', '.join(BUDGETS)}")
        if budget == "smoke" and data not in (None, "", "fake"):
            raise UserError("--data: the smoke budget trains on synthetic data (fake) only")
        self.budget = BUDGETS[budget]
        self.record = {"kind": KIND, "budget": budget, "data": _data_source(data or self.budget.data),
                       "created": now(), "stages": {}}
        self.save()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stage(self, name: str) -> dict[str, Any]:
        return self.record["stages"].setdefault(name, {})

    def status(self, name: str) -> str | None:
        return self.record["stages"].get(name, {}).get("status")

    def save(self, sync: bool = True) -> None:
        atomic_write_text(self.work / RECORD, json.dumps(self.record, indent=2) + "\n")
        if sync:
            self.sync(force=True)

    def sync(self, force: bool = False) -> None:
        """Mirror the working folder to the lab folder (no more often than the budget's interval
        unless ``force``); nothing to do when they are one folder."""
        if not self.mirrored:
            return
        every = self.budget.mirror_every
        if not force and time.monotonic() - self._synced < every:
            return
        done = mirroring.mirror(self.work, self.lab_dir, self._manifest)
        self._manifest = done.manifest
        self._synced = time.monotonic()

    # --- the environment of the stages' commands ---------------------------------------------
    def env(self, trial_flags: list[str] | None = None, from_hpo: Path | None = None) -> dict[str, str]:
        """The environment every stage command runs in: the data, the lab's data root and runs
        folder, this Python's folder first on PATH (nnictl, and the trials' ``python3``)."""
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env[DATA_ENV] = self.record["data"]
        env[DATA_ROOT_ENV] = str(self.data_root)
        env[RUNS_ENV] = str(self.runs)
        env.pop(FROM_HPO_ENV, None)
        env.pop(TRIAL_FLAGS_ENV, None)
        if trial_flags:
            env[TRIAL_FLAGS_ENV] = " ".join(trial_flags)
        if from_hpo is not None:
            env[FROM_HPO_ENV] = str(from_hpo)
        return env

    def finished(self) -> list[str]:
        return [s for s in STAGES if self.status(s) == "done"]


def _data_source(data: str) -> str:
    if data in ("cifar10", "fake"):
        return data
    path = Path(os.path.abspath(os.path.expanduser(data)))
    if not path.exists():
        raise UserError(f"--data: {data!r}: no such file or folder (cifar10, fake, or an image folder / .tar.gz)")
    return str(path)

