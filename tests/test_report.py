"""`python -m report`: Kendall's tau, reports of an experiment (a database written the way NNI 3.0
writes it, with real trial run folders) and of run folders, `--top K` retrains that skip finished
ones and resume a killed one, and bad sources failing with one line and nothing written.

The end-to-end tests (test_hpo_nni.py, test_classic_nas_e2e.py, test_darts_nni.py) build reports
from the real experiments they run, with :func:`check_report`."""
from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from core import checkpoint as core_checkpoint
from report.cli import main as report_main
from report.stats import kendall_tau

REPO = Path(__file__).resolve().parents[1]
MIN_PIXELS = 200 * 150
MIN_STD = 0.02          # pixel standard deviation (values in [0, 1]): not a blank canvas


def check_report(report: Path, names: list[str]) -> str:
    """``report`` names every one of ``names`` and every PNG it links exists, is a readable image of
    sensible size and is not blank; returns the Markdown."""
    text = report.read_text()
    for name in names:
        assert name in text, f"{name} missing from {report}"
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links, f"{report} links no figure"
    for link in links:
        png = report.parent / link
        assert png.is_file() and png.suffix == ".png", png
        image = matplotlib.image.imread(png)
        assert image.shape[0] * image.shape[1] >= MIN_PIXELS, (png, image.shape)
        assert float(np.std(image[..., :3])) > MIN_STD, f"{png} is blank"
    assert not list(report.parent.parent.glob(f".{report.parent.name}.*")), "temporary report folders left"
    return text


def tau_in(text: str) -> float:
    match = re.search(r"Kendall's tau = (-?[0-9.]+)", text)
    assert match, "no Kendall's tau in the report"
    tau = float(match.group(1))
    assert -1.0 <= tau <= 1.0
    return tau


# --- Kendall's tau -------------------------------------------------------------------------------

def test_kendall_tau_matches_the_definition_and_scipy():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert kendall_tau([1, 2], [5, 5]) is None and kendall_tau([1], [1]) is None
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.integers(0, 4, 7).tolist(), rng.integers(0, 4, 7).tolist()
        expected = scipy_stats.kendalltau(x, y).statistic
        got = kendall_tau(x, y)
        assert (got is None and np.isnan(expected)) or got == pytest.approx(expected)


# --- an experiment database, as NNI 3.0 writes it -----------------------------------------------

def _fake_experiment(exp_dir: Path, stage: str, trials: list[dict]) -> Path:
    """``exp_dir/db/nni.sqlite`` with a profile and ``trials`` ({id, params, curve, final, status}),
    each with a run folder holding a metrics.jsonl and config.yaml."""
    (exp_dir / "db").mkdir(parents=True)
    con = sqlite3.connect(exp_dir / "db" / "nni.sqlite")
    con.execute("CREATE TABLE TrialJobEvent (timestamp integer, trialJobId text, event text, data text, "
                "logPath text, sequenceId integer, message text, environmentId text)")
    con.execute("CREATE TABLE MetricData (timestamp integer, trialJobId text, parameterId text, type text, "
                "sequence integer, data text)")
    con.execute("CREATE TABLE ExperimentProfile (params text, id text, execDuration integer, startTime integer, "
                "endTime integer, logDir text, nextSequenceId integer, revision integer)")
    space = {k: {"_type": "choice", "_value": sorted({t["params"][k] for t in trials}, key=str)}
             for k in trials[0]["params"]}
    profile = {"experimentName": "report-test", "searchSpace": space, "trialCommand": "python3 trial.py",
               "trialCodeDirectory": str(REPO / stage), "maxTrialNumber": len(trials), "trialConcurrency": 1,
               "tuner": {"name": "TPE"}, "assessor": {"name": "Medianstop"}}
    con.execute("INSERT INTO ExperimentProfile VALUES (?,?,?,?,?,?,?,?)",
                (json.dumps(profile), exp_dir.name, 10, 1000, 2000, str(exp_dir), len(trials), 1))
    metric = lambda v: json.dumps(json.dumps(v))  # noqa: E731  (NNI's double encoding)
    ts = 1000
    for seq, t in enumerate(trials):
        run = exp_dir / "environments" / "local-env" / "trials" / t["id"]
        run.mkdir(parents=True)
        run.joinpath("config.yaml").write_text("data: fake\nepochs: 3\nbatch_size: 8\n")
        run.joinpath("metrics.jsonl").write_text("".join(
            json.dumps({"epoch": e, "val_acc": v, "train_loss": 2.0 - v, "train_seconds": 1.5}) + "\n"
            for e, v in enumerate(t["curve"], 1)))
        data = json.dumps({"parameter_id": seq, "parameter_source": "algorithm", "parameters": t["params"],
                           "parameter_index": 0})
        con.execute("INSERT INTO TrialJobEvent VALUES (?,?,?,?,?,?,NULL,'local-env')",
                    (ts, t["id"], "RUNNING", data, str(run), seq))
        for e, v in enumerate(t["curve"]):
            con.execute("INSERT INTO MetricData VALUES (?,?,?,?,?,?)",
                        (ts + 10 + e, t["id"], str(seq), "PERIODICAL", e, metric(v)))
        if t.get("final") is not None:
            con.execute("INSERT INTO MetricData VALUES (?,?,?,?,?,?)", (ts + 50, t["id"], str(seq), "FINAL", 0,
                        metric({"default": t["final"], "val_acc": t["final"], **t["params"]})))
        if t["status"] != "RUNNING":
            con.execute("INSERT INTO TrialJobEvent VALUES (?,?,?,NULL,NULL,?,NULL,'local-env')",
                        (ts + 60_000, t["id"], t["status"], seq))
        ts += 100_000
    con.commit()
    con.close()
    return exp_dir


HPO_TRIALS = [
    {"id": "aaaaa", "params": {"model": "mobilenet", "optimizer": "Adam", "lr": 0.001}, "curve": [0.2, 0.4, 0.5],
     "final": 0.5, "status": "SUCCEEDED"},
    {"id": "bbbbb", "params": {"model": "shufflenetg2", "optimizer": "Adagrad", "lr": 0.01}, "curve": [0.1],
     "status": "USER_CANCELED"},                                     # early-stopped by the assessor
    {"id": "ccccc", "params": {"model": "mobilenet", "optimizer": "Adam", "lr": 1e-9}, "curve": [0.1, 0.12, 0.3],
     "final": 0.3, "status": "SUCCEEDED"},
    {"id": "ddddd", "params": {"model": "shufflenetg2", "optimizer": "Adam", "lr": 0.001}, "curve": [0.3, 0.35, 0.4],
     "final": 0.4, "status": "SUCCEEDED"},
    {"id": "eeeee", "params": {"model": "mobilenet", "optimizer": "Adamax", "lr": 0.01}, "curve": [0.2],
     "status": "RUNNING"},
]
RETRAIN = ["--data", "fake", "--epochs", "2", "--max-batches", "2", "--batch-size", "16", "--eval-batch-size", "100",
           "--no-progress"]


def test_experiment_report_and_top_k_retrains_resume_and_rank(tmp_path, monkeypatch):
    from hpo import retrain

    exp = _fake_experiment(tmp_path / "exp0report", "hpo", HPO_TRIALS)
    runs = tmp_path / "runs"
    # retrain the 2 best; the second is killed right after its first epoch's checkpoint
    saves = []
    real_save = core_checkpoint.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        saves.append(state["epoch"])
        if len(saves) == 3:
            raise KeyboardInterrupt("killed")
    monkeypatch.setattr("core.train.save_checkpoint", save_then_die)
    with pytest.raises((KeyboardInterrupt, SystemExit)):   # Ctrl-C: the command may exit 130 instead
        retrain.main(["--experiment", str(exp), "--top", "3", *RETRAIN, "--out-dir", str(runs)])
    monkeypatch.setattr("core.train.save_checkpoint", real_save)
    first, second = (runs / f"hpo_retrain-exp0report-{t}" for t in ("aaaaa", "ddddd"))
    assert (first / "result.json").is_file() and not (second / "result.json").exists()
    assert (second / "checkpoint.pt").is_file() and not (runs / "hpo_retrain-exp0report-ccccc").exists()

    # the same command again: the finished one is skipped, the killed one resumes, the third starts
    rows = retrain.main(["--experiment", str(exp), "--top", "3", *RETRAIN, "--out-dir", str(runs)])
    assert [(r["trial_id"], r["action"]) for r in rows] == [("aaaaa", "skipped"), ("ddddd", "resumed"),
                                                              ("ccccc", "started")]
    assert "resumed from" in (second / "train.log").read_text()
    assert [json.loads(line)["epoch"] for line in (second / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    origin = json.loads((second / "origin.json").read_text())
    assert origin["experiment_id"] == "exp0report" and origin["rank"] == 2 and origin["search_metric"] == 0.4
    assert origin["params"] == HPO_TRIALS[3]["params"]

    report = report_main([str(exp), "--retrains", str(runs)])
    assert report == exp / "report" / "report.md"
    text = check_report(report, [t["id"] for t in HPO_TRIALS])
    for figure in ("trials.png", "curves.png", "effect_lr.png", "effect_optimizer.png", "effect_model.png",
                   "search_vs_retrain.png"):
        assert f"({figure})" in text
    assert "## Model x optimizer" in text and "| mobilenet | 0.5000 (lr 0.001) |" in text
    tau = tau_in(text)
    test_accs = [json.loads((runs / f"hpo_retrain-exp0report-{t}" / "result.json").read_text())["test_acc"]
                 for t in ("aaaaa", "ddddd", "ccccc")]
    assert tau == pytest.approx(kendall_tau([0.5, 0.4, 0.3], test_accs), abs=1e-3)
    if test_accs[0] < max(test_accs):
        assert "**The search's winner (aaaaa" in text and "is not the retrain's winner" in text
    elif test_accs.count(max(test_accs)) > 1:
        assert "The search's winner (aaaaa mobilenet Adam 0.001) ties for the retrain's best" in text
    else:
        assert "The search's winner (aaaaa mobilenet Adam 0.001) is also the retrain's winner" in text
    # a retrain run folder of its own
    check_report(report_main([str(second)]), ["hpo_retrain-exp0report-ddddd", "exp0report", "Final test accuracy"])


def test_classic_nas_experiment_report_shows_architectures_and_skips(tmp_path):
    trials = [{"id": f"t{i}xyz", "params": {f"skip{k}": (i >> (k - 1)) & 1 for k in range(1, 7)},
               "curve": [0.1, 0.1 + 0.05 * i], "final": 0.1 + 0.05 * i, "status": "SUCCEEDED"} for i in range(4)]
    exp = _fake_experiment(tmp_path / "nasexp1", "classic_nas", trials)
    text = check_report(report_main([str(exp), "-o", str(tmp_path / "out")]), [t["id"] for t in trials])
    assert "(architectures.png)" in text and "(effect_skip1.png)" in text and "100000" in text
    assert "classic NAS" in text


@pytest.mark.parametrize("case", ["missing folder", "unknown id", "no finished trial", "no metrics", "plain folder"])
def test_bad_sources_fail_with_one_line_and_write_nothing(tmp_path, monkeypatch, capsys, case):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))        # no ~/nni-experiments to find ids in
    if case == "missing folder":
        source = work / "nope"
    elif case == "unknown id":
        source = "zz9unknown"
    elif case == "no finished trial":
        source = _fake_experiment(work / "running1", "hpo", [HPO_TRIALS[1], HPO_TRIALS[4]])
    elif case == "no metrics":
        source = work / "run"
        source.mkdir()
        (source / "config.yaml").write_text("epochs: 3\n")
    else:
        source = work / "plain"
        source.mkdir()
    before = sorted(work.rglob("*"))
    if case == "unknown id":   # once as the real command: one line on stderr, exit status 2
        proc = subprocess.run([sys.executable, "-m", "report", str(source)], capture_output=True, text=True,
                              cwd=work, env={"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"})
        code, stderr = proc.returncode, proc.stderr
    else:
        with pytest.raises(SystemExit) as exit_info:
            report_main([str(source)])
        code, stderr = exit_info.value.code, capsys.readouterr().err
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    assert sorted(work.rglob("*")) == before, "something was written"
    expected = {"missing folder": "no such file or folder", "unknown id": "no folder with db/nni.sqlite",
                "no finished trial": "no trial finished yet", "no metrics": "no per-epoch metrics",
                "plain folder": "neither an NNI experiment folder"}[case]
    assert expected in lines[0]
