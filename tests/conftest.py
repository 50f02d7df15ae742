"""Shared fixtures: where the real JPEG CIFAR-10 copy lives, and a decoded-image cache per session;
how the suite spreads over pytest-xdist's workers (docs/testing.md, "Workers")."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from core.paths import DATA_ROOT_ENV, FROM_HPO_ENV, RUNS_ENV

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One data root (decoded-image cache) for the whole session, so the JPEG copy decodes once."""
    return tmp_path_factory.mktemp("data_root")


@pytest.fixture(scope="session")
def cifar_jpeg() -> Path:
    if not SHARED_CIFAR.exists():
        pytest.skip(f"real-data check: {SHARED_CIFAR} is absent")
    return SHARED_CIFAR


@pytest.fixture(scope="session", autouse=True)
def hermetic_defaults(tmp_path_factory):
    """Runs and downloads that a test does not place itself go to temporary folders, not into the
    repository's runs/ and data/ (commands and trials started by tests inherit this)."""
    mp = pytest.MonkeyPatch()
    mp.setenv(RUNS_ENV, str(tmp_path_factory.mktemp("runs")))
    mp.setenv(DATA_ROOT_ENV, str(tmp_path_factory.mktemp("default_data_root")))
    yield
    mp.undo()


# --- experiments shared by the whole test run -----------------------------------------------------
# One real HPO experiment and one real classic-NAS experiment serve every e2e test that needs an
# experiment of that shape (docs/testing.md lists who reads which).

#: the session's shared experiments; the tests that use one run in one pytest-xdist worker
SHARED_EXPERIMENTS = ("hpo_study_exp", "nas_from_hpo_exp")
#: the shared HPO experiment's trials, in the order its tuner proposes them: lr 0.01 learns and
#: finishes, lr 1e-7 cannot learn and Medianstop (from epoch 2) stops it, lr -1 fails at once
STUDY_LRS = (0.01, 1e-7, -1.0)


@dataclass(frozen=True)
class HpoStudyExperiment:
    exp_dir: Path                      # the finished experiment's folder (db/nni.sqlite, log/, trials)
    seed: int                          # the shipped tuner's seed that proposes STUDY_LRS in order
    dispatcher_switch: frozenset       # NNI_INCLUDE_INTERMEDIATE_RESULTS as NNI's manager set it for the dispatcher


def study_tuner_seed(space: dict) -> int:
    """A seed for the shipped tuner (FixedTpe) whose first proposals are STUDY_LRS, in order."""
    from hpo.nni_fixes import FixedTpe

    for seed in range(1000):
        probe = FixedTpe(optimize_mode="maximize", seed=seed, include_intermediate_results=False)
        probe.update_search_space(space)
        if tuple(probe.generate_parameters(i)["lr"] for i in range(len(STUDY_LRS))) == STUDY_LRS:
            return seed
    raise AssertionError(f"no FixedTpe seed below 1000 proposes {STUDY_LRS} in order")


@pytest.fixture(scope="session")
def hpo_study_exp(tmp_path_factory) -> HpoStudyExperiment:
    """A real HPO experiment (nnictl, hpo/config_smoke.yml with the shipped tuner FixedTpe and
    Medianstop from epoch 2, one trial at a time) whose three trials succeed, are early-stopped and
    fail (STUDY_LRS), with nothing set in the shell: the harness passes the test's own environment."""
    from tests.nni_harness import nni_experiment

    assert "NNI_INCLUDE_INTERMEDIATE_RESULTS" not in os.environ      # nothing set in the shell
    smoke_path = REPO / "hpo/config_smoke.yml"
    smoke = yaml.safe_load(smoke_path.read_text())
    space = {"model": {"_type": "choice", "_value": ["shufflenetg2"]},
             "optimizer": {"_type": "choice", "_value": ["Adam"]},
             "lr": {"_type": "choice", "_value": list(STUDY_LRS)}}
    seed = study_tuner_seed(space)
    command = (smoke["trialCommand"].replace("--epochs 3", "--epochs 4").replace("--max-batches 2", "--max-batches 20")
               .replace("--batch-size 8", "--batch-size 16").replace("--eval-batch-size 16", "--eval-batch-size 50"))
    overrides = {"searchSpace": space, "searchSpaceFile": None, "maxTrialNumber": len(STUDY_LRS),
                 "trialConcurrency": 1, "trialCommand": command,
                 "tuner": {**smoke["tuner"], "classArgs": {**smoke["tuner"]["classArgs"], "seed": seed}},
                 "assessor": {**smoke["assessor"], "classArgs": {**smoke["assessor"]["classArgs"], "start_step": 2}}}
    with nni_experiment(smoke_path, tmp_path_factory.mktemp("hpo_study"), timeout=60, overrides=overrides) as exp:
        assert exp.wait_done(timeout=400)["status"] == "DONE", exp.logs()
        # NNI 3.0's manager starts its dispatcher with the switch off, whatever the shell says
        dispatcher = [p for p in exp.processes() if "--exp_params" in " ".join(p.cmdline())]   # (and its shell)
        assert dispatcher, exp.logs()
        switch = frozenset(p.environ().get("NNI_INCLUDE_INTERMEDIATE_RESULTS") for p in dispatcher)
        return HpoStudyExperiment(exp.exp_dir, seed, switch)


@pytest.fixture(scope="session")
def nas_from_hpo_exp(tmp_path_factory, hpo_study_exp) -> Path:
    """A real classic-NAS experiment (nnictl, classic_nas/config.yml, two trials at once) started with
    CIFAR_AUTOML_FROM_HPO naming the shared HPO experiment in the environment of nnictl create, as a
    user does it: every trial trains with that experiment's winner (Adam, lr 0.01)."""
    from tests.nni_harness import nni_experiment

    config = REPO / "classic_nas/config.yml"
    shipped = (config.read_text().split("trialCommand: ", 1)[1].splitlines()[0]).strip()
    flags = "--data fake --epochs 1 --max-batches 2 --batch-size 8 --eval-batch-size 50 --seed 1 --threads 1"
    overrides = {"maxTrialNumber": 2, "trialConcurrency": 2, "trialCommand": f"{shipped} {flags}"}
    with nni_experiment(config, tmp_path_factory.mktemp("nas_from_hpo"), timeout=120, overrides=overrides,
                        env={FROM_HPO_ENV: str(hpo_study_exp.exp_dir)}) as exp:
        assert exp.wait_done(timeout=420)["status"] == "DONE", exp.logs()
        return exp.exp_dir


#: pytest-xdist's ``-n auto`` (pyproject.toml): one worker per core, at most this many (the e2e
#: tests' experiments start trials of their own)
MAX_WORKERS = 4


@pytest.hookimpl(optionalhook=True)   # a hook of pytest-xdist, absent under -p no:xdist
def pytest_xdist_auto_num_workers(config) -> int:
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


def pytest_configure(config) -> None:
    """In a worker, torch and the commands a test starts get this worker's share of the cores (a
    2-core machine: one thread each): two workers with torch's default of one thread per core each
    ran in-process training up to 17 times slower than one (measured; docs/testing.md)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = max(1, len(os.sched_getaffinity(0)) // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


@pytest.hookimpl(tryfirst=True)   # before pytest-xdist reads the groups from the markers
def pytest_collection_modifyitems(config, items) -> None:
    """With ``--dist loadgroup``: the tests that share a module-scoped fixture run in one worker (it is
    built once), and so do those that read the shared experiments, and those that decode the real
    JPEG copy (one decoded-image cache)."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs if info else {}
        if "cifar_jpeg" in defs:
            item.add_marker(pytest.mark.xdist_group("real_cifar10"))
        elif any(name in defs for name in SHARED_EXPERIMENTS):
            item.add_marker(pytest.mark.xdist_group("shared_experiments"))
        elif any(d[-1].scope == "module" for d in defs.values()):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
