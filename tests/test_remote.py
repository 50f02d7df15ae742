"""NNI 3.0's remote training service, for real: a private ``sshd`` on 127.0.0.1 (its own config,
host key and authorized user key in the test's temporary folder) plays the remote machine, and
the HPO smoke experiment runs its trials through it to DONE.

Nothing of the machine's own SSH setup is touched: no config, key, user or known_hosts file. The
remote side's HOME (where NNI's trial keeper keeps ``~/nni-experiments``) is a temporary folder,
set by the test sshd's ``SetEnv``; so are the data root and pip's offline switch (NNI 3.0 runs
``python -m pip install nni --upgrade`` on every remote host when it starts; with ``PIP_NO_INDEX``
pip finds nni 3.0 installed and changes nothing). sshd needs its privilege-separation folder
``/run/sshd`` (compiled in; Debian's service unit normally creates it): the test creates it when it
is missing and removes it again afterwards.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest
import yaml

from tests.conftest import REPO
from tests.helpers import BIN
from tests.nni_harness import ENDED, free_port, nni_experiment, processes_under

SMOKE = REPO / "hpo/config_smoke.yml"
REMOTE = REPO / "hpo/config_remote.yml"
SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cifar-automl-test", "-f", str(path)],
                   check=True, capture_output=True)


@contextlib.contextmanager
def private_sshd(folder: Path, env: dict[str, str]) -> Iterator[dict]:
    """An sshd on 127.0.0.1:PORT accepting only a key made here, for the current user; yields the
    ``machineList`` entry for NNI. ``env`` is set in every session (sshd's ``SetEnv``)."""
    if not SSHD.is_file() or shutil.which("ssh-keygen") is None:
        pytest.skip("Debian's openssh-server is not installed (/usr/sbin/sshd, ssh-keygen); .ci/run installs it")
    folder.mkdir(parents=True)
    _keygen(folder / "host_key")
    _keygen(folder / "user_key")
    shutil.copy(folder / "user_key.pub", folder / "authorized_keys")
    port = free_port()
    setenv = " ".join(f"{k}={v}" for k, v in env.items())
    (folder / "sshd_config").write_text(f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {folder / 'host_key'}
PidFile {folder / 'sshd.pid'}
AuthorizedKeysFile {folder / 'authorized_keys'}
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
Subsystem sftp internal-sftp
SetEnv {setenv}
""")
    made_privsep = not PRIVSEP_DIR.exists()
    if made_privsep:
        PRIVSEP_DIR.mkdir(mode=0o755)
    log = open(folder / "sshd.log", "w")
    proc = subprocess.Popen([str(SSHD), "-f", str(folder / "sshd_config"), "-D", "-e"], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"sshd exited with {proc.returncode}: {(folder / 'sshd.log').read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                pytest.fail("sshd did not listen within 20 s")
            time.sleep(0.2)
        yield {"host": "127.0.0.1", "port": port, "user": os.environ.get("USER") or _user(),
               "sshKeyFile": str(folder / "user_key"), "pythonPath": str(BIN)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if made_privsep:
            with contextlib.suppress(OSError):
                PRIVSEP_DIR.rmdir()


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def remote_overrides(machine: dict) -> dict:
    """hpo/config_smoke.yml made remote the way hpo/config_remote.yml is: the repository root as
    the uploaded trial code, the trial started as ``hpo/trial.py`` there, the manager reachable at
    127.0.0.1, one machine."""
    smoke, remote = yaml.safe_load(SMOKE.read_text()), yaml.safe_load(REMOTE.read_text())
    assert remote["trialCodeDirectory"] == ".." and remote["trialCommand"].startswith("python3 hpo/trial.py")
    return {"trialCodeDirectory": remote["trialCodeDirectory"],
            "trialCommand": smoke["trialCommand"].replace("python3 trial.py", "python3 hpo/trial.py"),
            "maxTrialNumber": 3, "nniManagerIp": "127.0.0.1",
            # the two fastest models on a CPU (the smoke's full space includes vgg, dpn92: seconds per step)
            "searchSpaceFile": None, "searchSpace": {"lr": {"_type": "choice", "_value": [0.01, 0.001]},
                                                     "optimizer": {"_type": "choice", "_value": ["Adam", "Adagrad"]},
                                                     "model": {"_type": "choice", "_value": ["mobilenet", "shufflenetg2"]}},
            "trainingService": {"platform": "remote", "machineList": [machine]}}


@pytest.mark.e2e   # a real nnictl experiment: not in the fast suite
def test_hpo_smoke_through_the_remote_training_service(tmp_path):
    remote_home = tmp_path / "remote_home"
    remote_home.mkdir()
    env = {"HOME": str(remote_home), "CIFAR_AUTOML_DATA_ROOT": str(tmp_path / "remote_data"),
           "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    with private_sshd(tmp_path / "sshd", env) as machine:
        try:
            (tmp_path / "manager").mkdir()
            with nni_experiment(SMOKE, tmp_path / "manager", timeout=120, overrides=remote_overrides(machine)) as exp:
                status = exp.wait_done(timeout=420)
                logs = exp.logs() + _remote_logs(remote_home)
                assert status["status"] == "DONE", logs
                jobs, metrics = exp.trials(), exp.metrics()
                assert len(jobs) == 3, logs
                for job in jobs:
                    assert job["status"] in ENDED, f"{job}\n{logs}"
                    mine = [m for m in metrics if m["trialJobId"] == job["trialJobId"]]
                    assert any(m["type"] == "PERIODICAL" for m in mine), f"{job}\n{logs}"
                    if job["status"] == "SUCCEEDED":
                        assert [m for m in mine if m["type"] == "FINAL"], f"{job}\n{logs}"
                # the trials ran on the "remote" side: their run folders are under its HOME
                remote_exp = remote_home / "nni-experiments" / exp.id
                results = sorted(remote_exp.glob("environments/*/trials/*/metrics.jsonl"))
                assert len(results) == 3, sorted(p.relative_to(remote_home) for p in remote_exp.rglob("*"))
                # what NNI uploaded: the code and configs, not the virtual environment or data (.nniignore)
                tarballs = list(exp.exp_dir.glob("tarball/*.tgz"))
                assert tarballs and all(t.stat().st_size < 2_000_000 for t in tarballs), tarballs
                with tarfile.open(tarballs[0]) as tar:
                    names = tar.getnames()
                assert "hpo/trial.py" in names and "hpo/config_smoke.yml" in names
                assert not [n for n in names if n.startswith((".venv", ".git/", "data/"))]
        finally:
            # `nnictl stop` shuts the remote trial keeper down; nothing may live on under the remote HOME
            deadline = time.monotonic() + 20
            while processes_under(str(remote_home)) and time.monotonic() < deadline:
                time.sleep(0.5)
            left = processes_under(str(remote_home))
            for proc in left:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            assert not left, [" ".join(p.cmdline())[:200] for p in left if p.is_running()]


def _remote_logs(home: Path, lines: int = 30) -> str:
    parts = []
    for f in sorted(home.glob("nni-experiments/*/environments/*/trial_keeper*/*.std*")) + \
            sorted(home.glob("nni-experiments/*/environments/*/trials/*/trial.std*")):
        tail = f.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- remote {f.relative_to(home)}\n" + "\n".join(tail))
    return "\n".join(parts)


@pytest.mark.parametrize("name", ["hpo/config_remote.yml", "classic_nas/config_remote.yml", "oneshot_darts/config_remote.yml"])
def test_remote_configs_load_and_their_trial_commands_resolve(tmp_path, name):
    """Each remote config passes NNI's own validation once its key file exists, uploads the
    repository root, and its trial command, run where NNI runs it (the root of the copy), resolves."""
    from nni.experiment.config import ExperimentConfig

    config = yaml.safe_load((REPO / name).read_text())
    key = tmp_path / "id_ed25519"
    key.write_text("not read: NNI checks that the file exists\n")
    for machine in config["trainingService"]["machineList"]:
        machine["sshKeyFile"] = str(key)
    for field in ("trialCodeDirectory", "searchSpaceFile"):   # relative to the original's folder
        if field in config:
            config[field] = str(((REPO / name).parent / config[field]).resolve())
    if isinstance(config.get("tuner", {}).get("codeDirectory"), str):
        config["tuner"]["codeDirectory"] = str(((REPO / name).parent / config["tuner"]["codeDirectory"]).resolve())
    path = tmp_path / Path(name).name
    path.write_text(yaml.safe_dump(config))
    loaded = ExperimentConfig.load(str(path)).canonical_copy()
    assert Path(loaded.trial_code_directory).resolve() == REPO
    assert loaded.nni_manager_ip and loaded.training_service.platform == "remote"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", "-c", loaded.trial_command + " --print-config"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "data_root" in yaml.safe_load(proc.stdout)
