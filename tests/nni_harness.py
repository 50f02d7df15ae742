"""Run a real NNI experiment from a test: ``nnictl create`` on a free port, hermetically.

Tests import it as ``from tests.nni_harness import nni_experiment`` (``tests/`` is a package).

>>> with nni_experiment(REPO / "hpo/config_smoke.yml", tmp_path, timeout=240) as exp:
...     status = exp.wait_done()
...     assert status["status"] == "DONE"
...     trials, metrics = exp.trials(), exp.metrics()

The experiment config is copied into ``tmp_path`` with its relative paths (trial code, search
space, custom tuner/assessor/advisor code) made absolute and ``experimentWorkingDirectory`` set
to ``tmp_path/nni-experiments``; ``nnictl`` runs with ``HOME=tmp_path/home`` (where it keeps its
experiment list), so nothing is written to the real home folder. On exit the harness runs
``nnictl stop`` and asserts that no process of the experiment (NNI manager, dispatcher, trials)
is left; stragglers are killed by pid and reported as a failure.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest
import yaml

from core.errors import UserError
from experiments.nni_config import check_experiment_config
from tests.helpers import BIN

FINAL_STATES = ("DONE", "STOPPED", "ERROR")
#: a trial's states once it ended well or was stopped (NNI 3.0 shows Medianstop's stops as USER_CANCELED)
ENDED = ("SUCCEEDED", "USER_CANCELED", "EARLY_STOPPED")
#: experiment-config keys that hold paths, resolved against the config file's folder by NNI
_PATH_KEYS = ("trialCodeDirectory", "searchSpaceFile")
_ALGO_KEYS = ("tuner", "assessor", "advisor")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hermetic_config(config_path: str | os.PathLike, tmp_path: Path,
                    overrides: dict[str, Any] | None = None) -> Path:
    """Copy an nnictl config into ``tmp_path``: absolute paths, working directory in ``tmp_path``,
    top-level keys replaced by ``overrides`` (``{"maxTrialNumber": 3}``, say)."""
    src = Path(config_path).resolve()
    config = yaml.safe_load(src.read_text())
    config.update(overrides or {})  # before resolving: overridden paths are relative to the config too
    base = src.parent

    def absolute(value: str) -> str:
        p = Path(os.path.expanduser(value))
        return str(p if p.is_absolute() else (base / p).resolve())

    for key in _PATH_KEYS:
        if isinstance(config.get(key), str):
            config[key] = absolute(config[key])
    for key in _ALGO_KEYS:
        algo = config.get(key)
        if isinstance(algo, dict) and isinstance(algo.get("codeDirectory"), str):
            algo["codeDirectory"] = absolute(algo["codeDirectory"])
    config["experimentWorkingDirectory"] = str(tmp_path / "nni-experiments")
    out = tmp_path / src.name
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def _environment(tmp_path: Path, extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["HOME"] = str(tmp_path / "home")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"   # trials run `python3` from this venv
    env.pop("NNI_PLATFORM", None)
    env.update(extra or {})
    Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
    return env


class Experiment:
    """A running experiment: its port, id, working directory, and REST read-outs."""

    def __init__(self, port: int, env: dict[str, str], work_dir: Path):
        self.port, self.env, self.work_dir = port, env, work_dir
        self.id: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def exp_dir(self) -> Path:
        """The experiment's folder (logs, db/nni.sqlite, trial folders)."""
        return self.work_dir / self.id

    def rest(self, path: str, timeout: float = 10) -> Any:
        """GET ``/api/v1/nni/<path>`` and decode the JSON answer."""
        with urllib.request.urlopen(f"{self.url}/api/v1/nni/{path.lstrip('/')}", timeout=timeout) as resp:
            return json.loads(resp.read().decode())

    def status(self) -> dict[str, Any]:
        return self.rest("check-status")

    def trials(self) -> list[dict[str, Any]]:
        return self.rest("trial-jobs")

    def metrics(self) -> list[dict[str, Any]]:
        return self.rest("metric-data")

    def logs(self, lines: int = 40) -> str:
        """The tails of the manager's and dispatcher's logs and of every trial's stderr (for failures)."""
        parts = []
        files = [self.exp_dir / "log" / n for n in ("nnimanager.log", "dispatcher.log")]
        files += sorted(self.exp_dir.glob("environments/*/trials/*/trial.stderr"))
        for f in files:
            if f.is_file():
                tail = f.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {f.relative_to(self.work_dir)}\n" + "\n".join(tail))
        return "\n".join(parts)

    def wait_done(self, timeout: float = 180, poll: float = 2.0) -> dict[str, Any]:
        """Poll ``check-status`` until DONE/STOPPED/ERROR; fail the test (with logs) on timeout."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                status = self.status()
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                status = {"status": f"unreachable ({exc})"}
            if status.get("status") in FINAL_STATES:
                return status
            time.sleep(poll)
        pytest.fail(f"experiment {self.id} not done after {timeout:.0f} s (last status {status}); "
                    f"trials: {[(t['trialJobId'], t['status']) for t in self._safe_trials()]}\n{self.logs()}")

    def stop(self, timeout: float = 60) -> None:
        """``nnictl stop``: the manager and its trials end (the experiment stays on disk)."""
        stopped = _nnictl(["stop", self.id], self.env, timeout)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        deadline = time.monotonic() + timeout
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not self.processes(), "processes left after nnictl stop"

    def resume(self, timeout: float = 60) -> None:
        """``nnictl resume ID`` on the same port and working directory; returns once the REST API answers."""
        resumed = _nnictl(["resume", self.id, "--port", str(self.port), "--experiment_dir", str(self.work_dir)],
                          self.env, timeout)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        self.wait_answering(timeout,
                            lambda: f"resumed experiment {self.id} did not answer\n{resumed.stdout}{self.logs()}")

    def wait_answering(self, timeout: float, failure: Callable[[], str]) -> None:
        """Return once the REST API answers; fail with ``failure()`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.status()
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(failure())
                time.sleep(0.5)

    def _safe_trials(self) -> list[dict[str, Any]]:
        try:
            return self.trials()
        except Exception:  # noqa: BLE001 - only for a failure message
            return []

    def processes(self) -> list[psutil.Process]:
        """Live processes of this experiment (manager, dispatcher, trials)."""
        return processes_under(str(self.work_dir))


def processes_under(marker: str) -> list[psutil.Process]:
    """Live processes (not this one, not zombies) whose command line, working folder or
    environment names ``marker`` (an experiment's working directory, a test's HOME)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            if proc.pid == os.getpid():
                continue
            text = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["cwd"] or "")
            if marker not in text:
                text += " " + " ".join(proc.environ().values())
            if marker in text and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:          # gone, a zombie, not ours to read
            continue
    return found


def _nnictl(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "nnictl"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=env["HOME"])


@contextlib.contextmanager
def nni_experiment(config_path: str | os.PathLike, tmp_path: Path, *, timeout: float = 60,
                   overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                   port: int | None = None) -> Iterator[Experiment]:
    """``nnictl create`` the experiment of ``config_path`` hermetically in ``tmp_path`` and yield it.

    ``timeout`` bounds the start (until the REST API answers) and the stop; pass the time an
    experiment may take to :meth:`Experiment.wait_done`. ``overrides`` replaces top-level config
    keys; ``env`` adds environment variables for the manager and its trials.
    """
    tmp_path = Path(tmp_path)
    config = hermetic_config(config_path, tmp_path, overrides)
    try:   # NNI's own check of e.g. trialConcurrency: 0 is a bare AssertionError: say what is wrong first
        check_experiment_config(config)
    except UserError as exc:
        pytest.fail(str(exc))
    environ = _environment(tmp_path, env)
    exp = Experiment(port or free_port(), environ, tmp_path / "nni-experiments")
    created = _nnictl(["create", "--config", str(config), "--port", str(exp.port)], environ, timeout)
    output = _ANSI.sub("", created.stdout + created.stderr)
    match = re.search(r"Experiment ID: (\w+)", output)
    try:
        if created.returncode != 0 or not match:
            pytest.fail(f"nnictl create failed (exit {created.returncode}):\n{output}")
        exp.id = match.group(1)
        exp.wait_answering(timeout, lambda: f"NNI manager of {exp.id} did not answer on port {exp.port}\n{output}\n"
                                            f"{exp.logs()}")
        yield exp
    finally:
        _stop(exp, timeout)


def _stop(exp: Experiment, timeout: float) -> None:
    """``nnictl stop``, then make sure nothing of the experiment survives (kill and fail if so)."""
    stopped = None
    if exp.id:
        stopped = _nnictl(["stop", exp.id], exp.env, timeout)
    deadline = time.monotonic() + 20
    left = exp.processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = exp.processes()
    if left:
        described = [f"{p.pid}: {' '.join(p.cmdline())[:200]}" for p in left if p.is_running()]
        for proc in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        pytest.fail(f"NNI processes left after `nnictl stop {exp.id}` "
                    f"(exit {stopped.returncode if stopped else '-'}): {described}")
