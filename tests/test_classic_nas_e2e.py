"""Classic NAS end to end: a real ``nnictl`` experiment of ``classic_nas/config.yml`` (NNI's Random
tuner, fake data, three trials of two epochs), then the export of the best architecture and a
retrain of it for a few batches."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from classic_nas.space import SKIP_LABELS, search_space_json, validate_arch
from report.cli import main as report_main
from tests.conftest import REPO
from tests.helpers import decode_json
from tests.nni_harness import nni_experiment
from tests.test_report import check_report

pytestmark = pytest.mark.e2e   # real nnictl experiments: not in the fast suite (pytest -m "not e2e")

STAGE = REPO / "classic_nas"
TRIAL_FLAGS = ("--data fake --epochs 2 --max-batches 2 --batch-size 8 --eval-batch-size 50 --seed 1")


def test_random_search_with_nnictl_then_export_and_retrain(tmp_path):
    config = STAGE / "config.yml"
    shipped = (config.read_text().split("trialCommand: ", 1)[1].splitlines()[0]).strip()
    overrides = {"maxTrialNumber": 3, "trialCommand": f"{shipped} {TRIAL_FLAGS}"}
    with nni_experiment(config, tmp_path, timeout=120, overrides=overrides) as exp:
        status = exp.wait_done(timeout=420)
        assert status["status"] == "DONE", status
        trials, metrics = exp.trials(), exp.metrics()
        assert len(trials) == 3 and all(t["status"] == "SUCCEEDED" for t in trials), exp.logs()

        finals, archs = {}, {}
        for t in trials:
            tid = t["trialJobId"]
            params = decode_json(t["hyperParameters"][0])["parameters"]
            archs[tid] = validate_arch(params)  # the tuner's parameters are an architecture
            periodical = [m for m in metrics if m["trialJobId"] == tid and m["type"] == "PERIODICAL"]
            final = [decode_json(m["data"]) for m in metrics if m["trialJobId"] == tid and m["type"] == "FINAL"]
            assert len(periodical) == 2, "one validation accuracy per epoch"
            assert len(final) == 1 and final[0]["default"] == final[0]["val_acc"]
            assert final[0]["default"] == decode_json(periodical[-1]["data"])  # last epoch's val accuracy
            assert "test_acc" not in final[0]
            assert {k: final[0][k] for k in SKIP_LABELS} == archs[tid]
            finals[tid] = final[0]["default"]
            run = Path(t["logPath"])  # the trial's folder is its run folder
            assert json.loads((run / "arch.json").read_text()) == archs[tid]
            assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
        assert len({json.dumps(a) for a in archs.values()}) == 3, "the Random tuner does not repeat itself"
        # the experiment is served to the web UI: the page, and the search space it shows
        with urllib.request.urlopen(f"{exp.url}/oview", timeout=10) as page:
            assert b"<title>Neural Network Intelligence</title>" in page.read()
        assert exp.rest("experiment")["params"]["searchSpace"] == search_space_json()
        exp_dir = exp.exp_dir

    best_file = tmp_path / "best_arch.json"
    export = subprocess.run([sys.executable, "-m", "classic_nas.export", str(exp_dir), "--out", str(best_file)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    best_id = max(finals, key=lambda tid: (finals[tid], -[t["trialJobId"] for t in trials].index(tid)))
    assert json.loads(best_file.read_text()) == archs[best_id]
    assert f"best: trial {best_id}" in export.stdout

    runs = tmp_path / "runs"
    retrain = subprocess.run([sys.executable, str(STAGE / "retrain.py"), "--arc", str(best_file), "--data", "fake",
                              "--epochs", "1", "--max-batches", "3", "--batch-size", "8", "--eval-batch-size", "50",
                              "--out-dir", str(runs)], capture_output=True, text=True, cwd=STAGE)
    assert retrain.returncode == 0, retrain.stderr
    (run,) = runs.iterdir()
    result = json.loads((run / "result.json").read_text())
    assert json.loads((run / "arch.json").read_text()) == archs[best_id]
    assert 0.0 <= result["test_acc"] <= 1.0 and result["epoch"] == 1

    # the experiment's report: every trial, accuracy per architecture, each skip on/off
    text = check_report(report_main([str(exp_dir)]), list(archs))
    assert "(architectures.png)" in text and all(f"(effect_{k}.png)" in text for k in SKIP_LABELS)
    # and the retrain's own
    check_report(report_main([str(run)]), [run.name, "Final test accuracy"])


def test_nnictl_trials_train_with_the_hpo_winner_named_in_the_environment(nas_from_hpo_exp, hpo_study_exp):
    """CIFAR_AUTOML_FROM_HPO in the shell that runs `nnictl create`: every classic-NAS trial trains
    with that HPO experiment's best optimizer and lr (the session's shared experiments,
    tests/conftest.py: the HPO experiment's one finished trial ran Adam at lr 0.01)."""
    from experiments import reader as results

    winner = results.best_trial(results.load_experiment(hpo_study_exp.exp_dir))
    assert (winner.params["optimizer"], winner.params["lr"]) == ("Adam", 0.01)
    trials = results.load_experiment(nas_from_hpo_exp)
    assert len(trials) == 2 and all(t.status == "SUCCEEDED" for t in trials), trials
    for t in trials:
        final = t.final_metrics
        assert {k: final[k] for k in ("optimizer", "lr", "from_hpo", "hpo_trial")} == {
            "optimizer": "Adam", "lr": 0.01, "from_hpo": str(hpo_study_exp.exp_dir), "hpo_trial": winner.trial_id}
        run = Path(t.log_dir)
        config_yaml = (run / "config.yaml").read_text()
        assert "optimizer: Adam" in config_yaml and "lr: 0.01" in config_yaml
        assert "momentum: 0.9" in config_yaml and "scheduler: cosine" in config_yaml   # the rest: this stage's
        assert "training with optimizer Adam, lr 0.01 from HPO experiment" in (run / "trial.log").read_text()
