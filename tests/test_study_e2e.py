"""The study end to end (issue 21): a real HPO experiment (nnictl, GridSearch + Medianstop) in which
one trial succeeds, one is stopped by the assessor and one fails; a real classic-NAS experiment started
with CIFAR_AUTOML_FROM_HPO naming it; a DARTS smoke search and a retrain of its cell; then
``trials.csv`` holds the failed and the early-stopped trial, and the study report of the four is
written, every figure a valid non-blank image (the checks: tests/test_study.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.paths import FROM_HPO_ENV
from tests.nni_harness import nni_experiment
from tests.test_study import check_study_report, check_trials_csv

pytestmark = pytest.mark.e2e   # real nnictl experiments: not in the fast suite (pytest -m "not e2e")

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs/hpo_smoke.yml"
NAS = REPO / "classic_nas/config.yml"
NAS_FLAGS = "--data fake --epochs 1 --max-batches 2 --batch-size 8 --eval-batch-size 50 --seed 1 --threads 1"


@pytest.fixture(scope="module")
def hpo_exp(tmp_path_factory) -> Path:
    """An HPO experiment whose trials run in a known order (GridSearch, one at a time): lr 0.01 learns
    and finishes; lr 1e-7 cannot learn and Medianstop stops it at epoch 2; lr -1 fails at once."""
    tmp_path = tmp_path_factory.mktemp("hpo")
    smoke = yaml.safe_load(SMOKE.read_text())
    space = {"model": {"_type": "choice", "_value": ["shufflenetg2"]},
             "optimizer": {"_type": "choice", "_value": ["Adam"]},
             "lr": {"_type": "choice", "_value": [0.01, 1e-7, -1.0]}}
    command = (smoke["trialCommand"].replace("--epochs 3", "--epochs 4").replace("--max-batches 2", "--max-batches 20")
               .replace("--batch-size 8", "--batch-size 16").replace("--eval-batch-size 16", "--eval-batch-size 50"))
    overrides = {"searchSpace": space, "searchSpaceFile": None, "maxTrialNumber": 3, "trialConcurrency": 1,
                 "trialCommand": command, "tuner": {"name": "GridSearch"},
                 "assessor": {**smoke["assessor"], "classArgs": {**smoke["assessor"]["classArgs"], "start_step": 2}}}
    with nni_experiment(SMOKE, tmp_path, timeout=60, overrides=overrides) as exp:
        assert exp.wait_done(timeout=400)["status"] == "DONE", exp.logs()
        return exp.exp_dir


@pytest.fixture(scope="module")
def nas_exp(tmp_path_factory, hpo_exp) -> Path:
    """A classic-NAS experiment whose trials train with the HPO experiment's winner (named in the
    environment of nnictl create, as a user does it)."""
    tmp_path = tmp_path_factory.mktemp("nas")
    shipped = (NAS.read_text().split("trialCommand: ", 1)[1].splitlines()[0]).strip()
    overrides = {"maxTrialNumber": 2, "trialConcurrency": 2, "trialCommand": f"{shipped} {NAS_FLAGS}"}
    with nni_experiment(NAS, tmp_path, timeout=120, overrides=overrides, env={FROM_HPO_ENV: str(hpo_exp)}) as exp:
        assert exp.wait_done(timeout=420)["status"] == "DONE", exp.logs()
        return exp.exp_dir


def _run(script: str, *args: str) -> None:
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_trials_csv_holds_the_failed_and_the_early_stopped_trial(hpo_exp, tmp_path):
    rows = check_trials_csv(hpo_exp, tmp_path / "report", require=("SUCCEEDED", "EARLY_STOPPED", "FAILED"))
    by_lr = {float(r["params_lr"]): r for r in rows}
    assert by_lr[0.01]["status"] == "SUCCEEDED" and int(by_lr[0.01]["val_images"]) > 0 and by_lr[0.01]["final_se"]
    assert by_lr[1e-7]["status"] == "EARLY_STOPPED" and by_lr[1e-7]["nni_status"] == "USER_CANCELED"
    assert by_lr[-1.0]["status"] == "FAILED" and by_lr[-1.0]["error"].startswith("error: lr")


def test_study_report_of_hpo_classic_nas_darts_and_retrain(hpo_exp, nas_exp, tmp_path):
    runs = tmp_path / "runs"
    _run("oneshot_darts/search.py", "--config", "configs/darts_search_smoke.yaml", "--out-dir", str(runs / "search"))
    (search,) = (runs / "search").iterdir()
    _run("oneshot_darts/retrain.py", "--config", "configs/darts_retrain_smoke.yaml", "--arc",
         str(search / "final_arch.json"), "--out-dir", str(runs / "retrain"))
    (retrain,) = (runs / "retrain").iterdir()
    text = check_study_report(hpo_exp, nas_exp, search, retrain, tmp_path)
    assert "in 2 of its 2 finished trials" in text and "optimizer Adam and lr 0.01" in text
