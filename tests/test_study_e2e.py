"""The study end to end: the session's real HPO experiment (nnictl, the shipped tuner +
Medianstop) in which one trial succeeds, one is stopped by the assessor and one fails; the session's
real classic-NAS experiment started with CIFAR_AUTOML_FROM_HPO naming it; a DARTS smoke search and a retrain of its cell; then
``trials.csv`` holds the failed and the early-stopped trial, and the study report of the four is
written, every figure a valid non-blank image (the checks: tests/test_study.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_study import check_study_report, check_trials_csv

pytestmark = pytest.mark.e2e   # real nnictl experiments: not in the fast suite (pytest -m "not e2e")


# hpo_study_exp, nas_from_hpo_exp: the session's shared experiments (tests/conftest.py): an HPO
# experiment whose trials run in a known order (lr 0.01 learns and finishes; lr 1e-7 cannot learn and
# Medianstop stops it at epoch 2; lr -1 fails at once), and a classic-NAS experiment whose trials
# train with its winner, named in the environment of nnictl create as a user does it.


def _run(script: str, *args: str) -> None:
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_trials_csv_holds_the_failed_and_the_early_stopped_trial(hpo_study_exp, tmp_path):
    rows = check_trials_csv(hpo_study_exp.exp_dir, tmp_path / "report", require=("SUCCEEDED", "EARLY_STOPPED", "FAILED"))
    by_lr = {float(r["params_lr"]): r for r in rows}
    assert by_lr[0.01]["status"] == "SUCCEEDED" and int(by_lr[0.01]["val_images"]) > 0 and by_lr[0.01]["final_se"]
    assert by_lr[1e-7]["status"] == "EARLY_STOPPED" and by_lr[1e-7]["nni_status"] == "USER_CANCELED"
    assert by_lr[-1.0]["status"] == "FAILED" and by_lr[-1.0]["error"].startswith("error: lr")


def test_study_report_of_hpo_classic_nas_darts_and_retrain(hpo_study_exp, nas_from_hpo_exp, tmp_path):
    runs = tmp_path / "runs"
    _run("oneshot_darts/search.py", "--config", "configs/darts_search_smoke.yml", "--out-dir", str(runs / "search"))
    (search,) = (runs / "search").iterdir()
    _run("oneshot_darts/retrain.py", "--config", "configs/darts_retrain_smoke.yml", "--arc",
         str(search / "final_arch.json"), "--out-dir", str(runs / "retrain"))
    (retrain,) = (runs / "retrain").iterdir()
    text = check_study_report(hpo_study_exp.exp_dir, nas_from_hpo_exp, search, retrain, tmp_path)
    assert "in 2 of its 2 finished trials" in text and "optimizer Adam and lr 0.01" in text
    assert "**Yes: the retrained cell is this study's searched cell**" in text       # its final_arch.json
    assert "The HPO winner it took " in text                   # and whether it stood out (or is at chance)
