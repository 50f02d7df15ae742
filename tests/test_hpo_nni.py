"""HPO stage end to end with the real NNI manager: `nnictl create` on a free port, hermetic HOME
and working directory (tests/nni_harness.py), REST polling until done, the web UI in headless
Chromium, reading the best trial back, and no NNI process left after `nnictl stop`."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from html import unescape
from pathlib import Path

import pytest
import yaml

from experiments import reader
from core.chance import FAKE_CLASSES, at_chance
from hpo import results, retrain
from hpo.nni_fixes import RECEIVED_TAG
from report.cli import main as report_main
from tests.conftest import REPO
from tests.nni_harness import ENDED, nni_experiment
from tests.test_report import check_report, tau_in

pytestmark = pytest.mark.e2e   # real nnictl experiments: not in the fast suite (pytest -m "not e2e")

ARTIFACTS = REPO / "test-artifacts"
SMOKE = REPO / "hpo/config_smoke.yml"
HYPERBAND = REPO / "hpo/config_hyperband.yml"


def _final(trial_job: dict) -> float | None:
    data = trial_job.get("finalMetricData") or []
    return reader._number(data[0]["data"]) if data else None


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")


def _browser(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``url``; virtual time lets the single-page app fetch and render first."""
    return subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=15000",
                           "--window-size=1400,1000", *extra, url],
                          capture_output=True, text=True, timeout=120)


def _visible_text(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def tuner_received(exp_dir: Path) -> dict[str, dict]:
    """What the experiment's tuner learnt from, by trial id: the ``tuner received:`` lines FixedTpe
    writes to the dispatcher's log (``{"parameter_id", "trial_job_id", "value", "early_stopped"}``)."""
    log = (Path(exp_dir) / "log" / "dispatcher.log").read_text(errors="replace")
    lines = [line.split(RECEIVED_TAG, 1)[1] for line in log.splitlines() if RECEIVED_TAG in line]
    return {r["trial_job_id"]: r for r in map(json.loads, lines)}


def check_tuner_learned_from_every_trial(exp_dir: Path) -> list[dict]:
    """In a finished experiment (its folder), the tuner received every trial's result: a finished
    trial's final result, and an early-stopped trial's (NNI 3.0: USER_CANCELED with intermediate
    results and no final one) last intermediate result, flagged as early-stopped. Returns what it
    received from the early-stopped trials (empty when the assessor stopped none)."""
    trials = results.load_experiment(exp_dir)
    received = tuner_received(exp_dir)
    log = (Path(exp_dir) / "log" / "dispatcher.log").read_text(errors="replace")
    assert "early-stopped trials' last intermediate results go to the tuner" in log, log[-4000:]
    from_stops = []
    for t in trials:
        got = received.get(t.trial_id)
        if t.early_stopped:
            assert got is not None, f"early-stopped trial {t.trial_id}: no result reached the tuner\n{log[-4000:]}"
            assert got["early_stopped"] and got["value"] in t.intermediates, (got, t.intermediates)
            from_stops.append(got)
        elif t.final is not None:
            assert got is not None and got["value"] == t.final, (t.trial_id, got, t.final)
    return from_stops


def test_tuner_learns_from_an_early_stopped_trial(hpo_study_exp):
    """The session's real experiment with the shipped tuner and assessor (Medianstop from epoch 2,
    tests/conftest.py) in which one trial is sure to be stopped: a configuration that learns (lr 0.01)
    runs first, then one that cannot (lr 1e-7), then one that fails (lr -1). The tuner must receive the
    stopped trial's last validation accuracy, with nothing set in the shell (the harness passes the
    test's own environment, no NNI_* variable)."""
    # NNI 3.0's manager started its dispatcher with the switch off, whatever the shell says
    assert hpo_study_exp.dispatcher_switch == {"false"}
    first, second, third = results.load_experiment(hpo_study_exp.exp_dir)
    log = hpo_study_exp.exp_dir / "log" / "dispatcher.log"
    assert first.params["lr"] == 0.01 and first.status == "SUCCEEDED", log.read_text()[-4000:]
    assert second.params["lr"] == 1e-7 and second.early_stopped, (second, log.read_text()[-4000:])
    assert third.params["lr"] == -1.0 and third.status == "FAILED" and not third.early_stopped, third
    (got,) = check_tuner_learned_from_every_trial(hpo_study_exp.exp_dir)
    assert got["trial_job_id"] == second.trial_id and got["value"] == second.intermediates[1]
    print("tuner received:", json.dumps(tuner_received(hpo_study_exp.exp_dir), indent=1))


def test_smoke_experiment_web_ui_and_best_trial(tmp_path):
    with nni_experiment(SMOKE, tmp_path, timeout=60) as exp:
        status = exp.wait_done(timeout=300)
        assert status["status"] == "DONE", exp.logs()
        jobs = exp.trials()
        assert len(jobs) >= 3
        metrics = exp.metrics()
        for job in jobs:
            assert job["status"] in ENDED, (job["trialJobId"], job["status"], exp.logs())
            periodical = [m for m in metrics if m["trialJobId"] == job["trialJobId"] and m["type"] == "PERIODICAL"]
            assert periodical, f"trial {job['trialJobId']} reported no intermediate result"
            if job["status"] == "SUCCEEDED":
                assert len(periodical) == 3 and isinstance(_final(job), float)
        assert any(_final(job) is not None for job in jobs)

        # the best trial, read back from the experiment folder (no web UI, no REST)
        trials = results.load_experiment(exp.exp_dir)
        assert {t.trial_id for t in trials} == {j["trialJobId"] for j in jobs}
        best = results.best_trial(trials)
        assert best.final == max(_final(j) for j in jobs if _final(j) is not None)
        assert set(results.searched_params(best)) == {"lr", "optimizer", "model"}
        assert best.final_metrics["val_acc"] == best.final and best.intermediates[-1] == best.final
        run = Path(best.log_dir)                          # the trial's run folder is NNI's trial folder
        assert {"config.yaml", "metrics.jsonl", "train.log", "result.json", "trial.log"} <= {p.name for p in run.iterdir()}
        assert f"model: {best.params['model']}" in (run / "config.yaml").read_text()
        assert results.best_trial(results.load_experiment(exp.id, experiments_dir=exp.work_dir)).trial_id == best.trial_id
        check_tuner_learned_from_every_trial(exp.exp_dir)     # and from early-stopped ones, if Medianstop stopped any

        # the web UI in a real browser: the overview shows the status, the trials page lists every trial
        overview = _browser(f"{exp.url}/oview", tmp_path, "--dump-dom")
        text = _visible_text(overview.stdout)
        assert "Neural Network Intelligence" in text and exp.id in text, text[:2000]
        assert "DONE" in text and "Status" in text, text[:2000]
        detail = _visible_text(_browser(f"{exp.url}/detail", tmp_path, "--dump-dom").stdout)
        for job in jobs:
            assert job["trialJobId"] in detail, detail[:2000]
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "hpo_webui_trials.png"
        shot.unlink(missing_ok=True)
        _browser(f"{exp.url}/detail", tmp_path, f"--screenshot={shot}")
        assert shot.is_file() and shot.stat().st_size > 10_000

        # retrain the best, by experiment id, the way a user would (one epoch here)
        result = retrain.main(["--experiment", exp.id, "--experiments-dir", str(exp.work_dir), "--data", "fake",
                               "--epochs", "1", "--max-batches", "1", "--batch-size", "8",
                               "--out-dir", str(tmp_path / "runs")])
        origin = json.loads((Path(result["run_dir"]) / "hpo_best.json").read_text())
        assert origin["trial_id"] == best.trial_id and 0.0 <= result["test_acc"] <= 1.0

        # TensorBoard: every trial wrote scalars, linked where the web UI's TensorBoard button looks,
        # and NNI's own TensorBoard task serves them
        for job in jobs:
            events = list((Path(job["logPath"]) / "tensorboard").glob("events.out.tfevents.*"))
            assert events, f"trial {job['trialJobId']} wrote no TensorBoard scalars"
            assert (exp.exp_dir / "trials" / job["trialJobId"] / "output" / "tensorboard").resolve() == events[0].parent
        _check_nni_tensorboard(exp, best.trial_id)

        # the K best retrained, each in its own folder, and the report comparing them with the search
        runs = tmp_path / "top_runs"
        rows = retrain.main(["--experiment", exp.id, "--experiments-dir", str(exp.work_dir), "--top", "2",
                             "--data", "fake", "--epochs", "1", "--max-batches", "2", "--batch-size", "8",
                             "--eval-batch-size", "100", "--out-dir", str(runs)])
        good = results.ranked(trials)
        assert [r["trial_id"] for r in rows] == [t.trial_id for t in good[:2]]
        assert sorted(p.name for p in runs.iterdir()) == sorted(f"hpo_retrain-{exp.id}-{t.trial_id}" for t in good[:2])
    text = check_report(report_main([str(exp.exp_dir), "--retrains", str(runs)]), [j["trialJobId"] for j in jobs])
    assert "(trials.png)" in text and "(curves.png)" in text and "(effect_model.png)" in text
    # the rank correlation is stated only where the report's rules allow it (synthetic data: results
    # often at chance, and a trial may diverge, leaving one configuration to retrain)
    finals, accs = [t.final for t in good[:2]], [r["test_acc"] for r in rows]
    top = max(rows, key=lambda r: r["test_acc"])
    top_images = json.loads((Path(top["run_dir"]) / "result.json").read_text())["test_images"]
    if at_chance(top["test_acc"], top_images, FAKE_CLASSES):
        assert "At chance: the retrains learned nothing" in text and "Kendall's tau" not in text
    elif at_chance(best.final, best.final_metrics["val_images"], FAKE_CLASSES):
        assert "The search's results are at chance" in text and "Kendall's tau" not in text
    elif len(rows) < 2:
        assert "Fewer than two configurations have a finished retrain" in text and "Kendall's tau" not in text
    elif finals[0] != finals[1] and accs[0] != accs[1]:
        assert tau_in(text) in (-1.0, 1.0)
    else:
        assert "Kendall's tau is undefined" in text


def _check_nni_tensorboard(exp, trial_id: str) -> None:
    """Start TensorBoard the way the web UI's button does (REST POST /tensorboard) and read the
    trial's scalars from it; stop it again."""
    request = urllib.request.Request(f"{exp.url}/api/v1/nni/tensorboard", method="POST",
                                     data=json.dumps({"trials": trial_id}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        task = json.loads(resp.read().decode())
    try:
        deadline, tags = time.monotonic() + 120, None
        while time.monotonic() < deadline and tags is None:
            time.sleep(2)
            task = exp.rest(f"tensorboard/{task['id']}")
            assert task["status"] != "ERROR", task
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{task['port']}/data/plugin/scalars/tags", timeout=10) as r:
                    tags = json.loads(r.read().decode())
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                continue
        assert tags, f"NNI's TensorBoard never answered: {task}"
        runs = [name for name in tags if trial_id in name]      # NNI names it "<No.>-<trial id>"
        assert len(runs) == 1 and "val/acc" in tags[runs[0]] and "train/loss" in tags[runs[0]], tags
    finally:
        urllib.request.urlopen(urllib.request.Request(f"{exp.url}/api/v1/nni/tensorboard-tasks", method="DELETE"),
                               timeout=30).close()


def test_bad_parameters_fail_their_trials_and_the_experiment_goes_on(tmp_path):
    space = {"model": {"_type": "choice", "_value": ["mobilenet", "resnet1000"]},
             "optimizer": {"_type": "choice", "_value": ["Adam", "Nadam"]},
             "lr": {"_type": "choice", "_value": [0.001, -1.0]}}
    smoke = yaml.safe_load(SMOKE.read_text())
    overrides = {"searchSpace": space, "searchSpaceFile": None, "maxTrialNumber": 4,
                 "trialCommand": smoke["trialCommand"].replace("--epochs 3", "--epochs 1")}
    with nni_experiment(SMOKE, tmp_path, timeout=60, overrides=overrides) as exp:
        assert exp.wait_done(timeout=240)["status"] == "DONE", exp.logs()
        trials = results.load_experiment(exp.exp_dir)
        assert len(trials) == 4
        for t in trials:
            bad = t.params["model"] != "mobilenet" or t.params["optimizer"] != "Adam" or t.params["lr"] <= 0
            if t.status == "FAILED":
                assert bad and t.error and t.error.startswith("error: ") and t.epochs_run == 0, t
                assert re.search(r"(model|optimizer|lr): .*(allowed|not allowed)", t.error), t.error
                stderr = (Path(t.log_dir) / "trial.stderr").read_text()
                assert "Traceback" not in stderr
            else:
                assert not bad and t.status == "SUCCEEDED" and t.final is not None, t


def test_hyperband_variant_reaches_done(tmp_path):
    config = yaml.safe_load(HYPERBAND.read_text())
    smoke = yaml.safe_load(SMOKE.read_text())
    advisor = {**config["advisor"], "classArgs": {**config["advisor"]["classArgs"], "R": 3}}
    # R = 3, eta = 3: bracket 0-1 runs 3 configurations for 1 epoch and promotes the best to 3
    # epochs; bracket 0-0 runs 2 configurations for 3 epochs: 6 trials in all
    # epochs a trial runs come from TRIAL_BUDGET; one batch per epoch and the two fastest models keep it short
    trial_command = smoke["trialCommand"].replace("--epochs 3 ", "").replace("--max-batches 2", "--max-batches 1")
    space = {**json.loads((REPO / "hpo/search_space.json").read_text()),
             "model": {"_type": "choice", "_value": ["mobilenet", "shufflenetg2"]}}
    with nni_experiment(HYPERBAND, tmp_path, timeout=60, overrides={
            "advisor": advisor, "maxTrialNumber": 6, "trialConcurrency": 2, "trialCommand": trial_command,
            "searchSpace": space, "searchSpaceFile": None}) as exp:
        status = exp.wait_done(timeout=300)
        assert status["status"] == "DONE", exp.logs()
        assert "TypeError" not in (exp.exp_dir / "log" / "dispatcher.log").read_text()
        trials = results.load_experiment(exp.exp_dir)
        assert len(trials) == 6 and all(t.status == "SUCCEEDED" for t in trials), [(t.trial_id, t.status) for t in trials]
        for t in trials:
            budget = t.params["TRIAL_BUDGET"]
            assert budget in (1, 3) and t.epochs_run == budget and t.final_metrics["epoch"] == budget
        assert [t.params["TRIAL_BUDGET"] for t in trials].count(1) in (3, 4)   # 4: the next bracket started first
        assert results.best_trial(trials).final is not None
