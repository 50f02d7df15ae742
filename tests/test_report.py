"""`python -m report`: Kendall's tau, reports of an experiment (a database written the way NNI 3.0
writes it, with real trial run folders) and of run folders, `--top K` retrains that skip finished
ones and resume a killed one, retrains matched to the experiment's own trials, bad sources and damaged
run folders failing with one line and nothing written, ``-o`` replacing only a report of its own
(never through a link), and non-finite or absurd numbers shown as invalid.

The end-to-end tests (test_hpo_nni.py, test_classic_nas_e2e.py, test_darts_nni.py) build reports
from the real experiments they run, with :func:`check_report`."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml

from core import checkpoint as core_checkpoint
from report.cli import main as report_main
from report.stats import kendall
from tests.conftest import REPO
from tests.helpers import cli, one_error_line, report, state

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

def test_kendall_tau_matches_the_definition_with_a_p_value():
    assert kendall([1, 2, 3, 4], [10, 20, 30, 40]).tau == 1.0
    assert kendall([1, 2, 3, 4], [4, 3, 2, 1]).tau == -1.0
    assert kendall([1, 2, 3], [1, 3, 2]).tau == pytest.approx(1 / 3)
    assert kendall([1, 2], [5, 5]) is None and kendall([1], [1]) is None
    # tau-b by its definition: (concordant - discordant) / sqrt((pairs - ties x) (pairs - ties y))
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.integers(0, 4, 7).tolist(), rng.integers(0, 4, 7).tolist()
        pairs = [(i, j) for i in range(7) for j in range(i + 1, 7)]
        s = [np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in pairs]
        tx, ty = sum(x[i] == x[j] for i, j in pairs), sum(y[i] == y[j] for i, j in pairs)
        denominator = np.sqrt((len(pairs) - tx) * (len(pairs) - ty))
        got = kendall(x, y)
        assert (got is None and denominator == 0) or got.tau == pytest.approx(sum(s) / denominator)
    # the exact two-sided p-value of a perfect ranking of n = 5 without ties: 2 / 5!
    assert kendall([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]).p == pytest.approx(2 / 120)


def test_importance_finds_the_parameter_that_matters_and_not_noise():
    """report.stats.importance alone (scikit-learn's forest; this file also runs in the Colab-shaped
    environment, at the floors pyproject.toml names: scikit-learn 1.6.1, scipy 1.16.3)."""
    from report.stats import importance

    rng = np.random.default_rng(1)
    columns = {"model": rng.choice(["a", "b"], 30).tolist(), "optimizer": rng.choice(["Adam", "SGD", "Adagrad"], 30)
               .tolist(), "lr": rng.choice([0.1, 0.01, 0.001, 0.0001], 30).tolist()}
    y = [0.5 + 0.3 * (o == "Adam") + rng.uniform(-0.02, 0.02) for o in columns["optimizer"]]
    imp = importance(columns, y)
    assert imp.names == ("model", "optimizer", "lr") and imp.n == 30
    assert max(zip(imp.shares, imp.names))[1] == "optimizer" and imp.shares[1] > 0.9 and imp.oob_r2 > 0.8
    assert sum(imp.shares) == pytest.approx(1.0) and len(imp.spread) == 3
    noise = importance(columns, rng.uniform(0.4, 0.6, 30).tolist())
    assert noise.oob_r2 < 0          # the forest predicts held-out trials worse than their mean


# --- an experiment database, as NNI 3.0 writes it -----------------------------------------------

def _fake_experiment(exp_dir: Path, stage: str, trials: list[dict], images: int | None = None, *,
                     config: str = "data: fake\nepochs: 3\nbatch_size: 8\n", profile: dict | None = None,
                     flags: str | None = None) -> Path:
    """``exp_dir/db/nni.sqlite`` with a profile and ``trials`` ({id, params, curve, final, status},
    optionally ``error``: the ``error:`` line a failed trial left in its trial.stderr, ``extra``: more
    fields of its final result), each with a
    run folder holding a metrics.jsonl and config.yaml; ``images``: the validation images each
    trial reports it was scored on (``val_images``; None: not reported, as before it was);
    ``config``: each trial's config.yaml; ``profile``: fields of the experiment's config replaced;
    ``flags``: the CIFAR_AUTOML_TRIAL_FLAGS each trial records it ran with (None: no record)."""
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
               "tuner": {"name": "TPE"}, "assessor": {"name": "Medianstop"}, **(profile or {})}
    con.execute("INSERT INTO ExperimentProfile VALUES (?,?,?,?,?,?,?,?)",
                (json.dumps(profile), exp_dir.name, 10, 1000, 2000, str(exp_dir), len(trials), 1))
    metric = lambda v: json.dumps(json.dumps(v))  # noqa: E731  (NNI's double encoding)
    ts = 1000
    for seq, t in enumerate(trials):
        run = exp_dir / "environments" / "local-env" / "trials" / t["id"]
        run.mkdir(parents=True)
        run.joinpath("config.yaml").write_text(config)
        if flags is not None:
            run.joinpath("trial_command.json").write_text(json.dumps({"argv": ["trial.py", *flags.split()],
                                                                      "trial_flags": flags}))
        counted = {"val_images": images} if images else {}
        run.joinpath("metrics.jsonl").write_text("".join(
            json.dumps({"epoch": e, "val_acc": v, "train_loss": 2.0 - v, "train_seconds": 1.5, **counted}) + "\n"
            for e, v in enumerate(t["curve"], 1)))
        if t.get("error"):
            run.joinpath("trial.stderr").write_text(f"some warning\n{t['error']}\n")
        data = json.dumps({"parameter_id": seq, "parameter_source": "algorithm", "parameters": t["params"],
                           "parameter_index": 0})
        con.execute("INSERT INTO TrialJobEvent VALUES (?,?,?,?,?,?,NULL,'local-env')",
                    (ts, t["id"], "RUNNING", data, str(run), seq))
        for e, v in enumerate(t["curve"]):
            con.execute("INSERT INTO MetricData VALUES (?,?,?,?,?,?)",
                        (ts + 10 + e, t["id"], str(seq), "PERIODICAL", e, metric(v)))
        if t.get("final") is not None:
            con.execute("INSERT INTO MetricData VALUES (?,?,?,?,?,?)", (ts + 50, t["id"], str(seq), "FINAL", 0,
                        metric({"default": t["final"], "val_acc": t["final"], **counted, **t["params"],
                                **t.get("extra", {})})))
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
    monkeypatch.setattr("core.trainer.save_checkpoint", save_then_die)
    with pytest.raises((KeyboardInterrupt, SystemExit)):   # Ctrl-C: the command may exit 130 instead
        retrain.main(["--experiment", str(exp), "--top", "3", *RETRAIN, "--out-dir", str(runs)])
    monkeypatch.setattr("core.trainer.save_checkpoint", real_save)
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
    for figure in ("trials.png", "curves.png", "effect_lr.png", "effect_optimizer.png", "effect_model.png"):
        assert f"({figure})" in text
    assert "## Model x optimizer" in text and "| mobilenet | not tried | 0.5000 (lr 0.001) |" in text
    # two batches of 16 images per epoch learn nothing: every retrain is at chance on the synthetic test images
    # it was scored on (at most 0.1 + 2 standard errors of a guess), and the report says so instead of ranking
    # them or giving a tau
    results = [json.loads((runs / f"hpo_retrain-exp0report-{t}" / "result.json").read_text())
               for t in ("aaaaa", "ddddd", "ccccc")]
    test_accs = [r["test_acc"] for r in results]
    assert all(r["classes"] == 10 for r in results)                      # the runs record their classes
    assert max(test_accs) <= 0.1 + 2 * (0.1 * 0.9 / results[0]["test_images"]) ** 0.5
    assert "- chance 0.1000 (1 / 10 classes)" in text
    assert text.split("Does the ranking survive", 1)[1].count(" (at chance) |") == 3
    assert "**At chance: the retrains learned nothing at this budget.**" in text
    assert "(search_vs_retrain.png)" not in text and "Kendall's tau =" not in text and "The search's winner" not in \
        text.split("Does the ranking survive", 1)[1]
    # a retrain run folder of its own
    check_report(report_main([str(second)]), ["hpo_retrain-exp0report-ddddd", "exp0report", "Final test accuracy"])


def test_an_invalid_intermediate_result_is_still_an_epoch_the_trial_ran(tmp_path):
    exp = _fake_experiment(tmp_path / "exp0oneinvalid", "hpo", [
        {"id": "aaaaa", "params": {"model": "mobilenet", "optimizer": "Adam", "lr": 0.001}, "curve": [1.5],
         "final": 0.5, "status": "SUCCEEDED"}])
    text = report_main([str(exp), "-o", str(tmp_path / "out")]).read_text()
    assert "intermediate result 1 = 1.5 is invalid" in text
    assert "**0.5000** after 1 epoch;" in text and "after 0 epochs" not in text
    assert "1 trial-epochs" in text


def test_intermediate_results_after_an_invalid_one_keep_their_epochs(tmp_path, figures):
    """An intermediate result left out (NaN at epoch 2; one that is not a number at all) moves no
    later one: each is drawn, exported and counted at the epoch it was reported at."""
    from experiments.reader import load_experiment

    exp = _fake_experiment(tmp_path / "exp0gap", "hpo", [
        {"id": "aaaaa", "params": P("mobilenet", "Adam", 0.01), "curve": [0.2, float("nan"), 0.4, 0.5], "final": 0.5,
         "status": "SUCCEEDED"},
        {"id": "bbbbb", "params": P("vgg", "Adam", 0.01), "curve": [0.1, 0.2, 0.3], "status": "USER_CANCELED"},
        {"id": "ccccc", "params": P("vgg", "SGD", 0.01), "curve": [0.3, 0.35, 0.45], "final": 0.45,
         "status": "SUCCEEDED"}], images=1000)
    con = sqlite3.connect(exp / "db" / "nni.sqlite")       # bbbbb's epoch 2: not a number (core leaves it out)
    con.execute("UPDATE MetricData SET data = ? WHERE trialJobId = 'bbbbb' AND sequence = 1", (json.dumps('"oops"'),))
    con.commit()
    con.close()
    out = tmp_path / "out"
    text = check_report(report_main([str(exp), "-o", str(out)]), ["aaaaa"])
    assert "trial aaaaa: intermediate result 2 = nan is invalid" in text and "- spent: 10 trial-epochs" in text
    lines = {line.get_label(): line for line in figures["curves.png"].axes[0].get_lines()}
    assert list(lines["aaaaa"].get_xdata()) == [1, 3, 4] and list(lines["aaaaa"].get_ydata()) == [0.2, 0.4, 0.5]
    assert list(lines["bbbbb (early-stopped)"].get_xdata()) == [1, 3]
    assert any(list(line.get_xdata()) == [3] and line.get_marker() == "x" for line in lines.values())
    data = json.loads((out / "trials.json").read_text())
    got = {t["trial_id"]: (t["intermediates"], t["epochs"], t["best_intermediate"]) for t in data["trials"]}
    assert got == {"aaaaa": ([0.2, None, 0.4, 0.5], 4, 0.5), "bbbbb": ([0.1, None, 0.3], 3, 0.3),
                   "ccccc": ([0.3, 0.35, 0.45], 3, 0.45)}
    # nnictl's export (--intermediate): the same epochs
    export = tmp_path / "export.json"
    export.write_text(json.dumps([{"parameter": {}, "value": 0.5, "trialJobId": "aaaaa",
                                   "intermediate": [0.2, "oops", 0.4, 0.5]}]))
    trial, = load_experiment(export)
    assert trial.curve == [(1, 0.2), (3, 0.4), (4, 0.5)] and trial.epochs_run == 4


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


# --- chance, noise and figures that neither exaggerate nor hide ------------------------------------

@pytest.fixture
def figures(monkeypatch):
    """Every figure a report draws, by file name, as matplotlib objects (read after it was saved)."""
    from report import plots

    drawn = {}
    real_save = plots._save

    def save(fig, path, *args, **kwargs):
        result = real_save(fig, path, *args, **kwargs)
        drawn[Path(path).name] = fig
        return result
    monkeypatch.setattr(plots, "_save", save)
    return drawn


def _chance_lines(ax) -> list[float]:
    """The levels of the dotted chance lines an axes draws (horizontal ones)."""
    return [line.get_ydata()[0] for line in ax.get_lines() if str(line.get_label()).startswith("chance")]


def _check_texts_fit(figs: dict) -> None:
    from report.plots import clipped_texts

    for name, fig in figs.items():
        assert clipped_texts(fig) == [], f"{name}: a title or axis label reaches outside the figure"


P = lambda model, optimizer, lr: {"model": model, "optimizer": optimizer, "lr": lr}  # noqa: E731
CHANCE_TRIALS = [                  # synthetic data, one epoch: what a first quick search on a CPU gives
    {"id": "aaaaa", "params": P("mobilenet", "Adam", 0.01), "curve": [0.10], "final": 0.10, "status": "SUCCEEDED"},
    {"id": "bbbbb", "params": P("mobilenet", "Adam", 0.001), "curve": [0.104], "status": "USER_CANCELED"},
    {"id": "ccccc", "params": P("vgg", "Adamax", 0.001), "curve": [0.09], "status": "USER_CANCELED"},
    {"id": "ddddd", "params": P("vgg", "Adam", 0.01), "curve": [0.112], "final": 0.112, "status": "SUCCEEDED"},
    {"id": "eeeee", "params": P("vgg", "SGD", 0.01), "curve": [0.095], "status": "FAILED", "error": "error: boom"},
]


def test_a_search_at_chance_says_so_and_ranks_nothing(tmp_path, figures):
    exp = _fake_experiment(tmp_path / "exp0chance", "hpo", CHANCE_TRIALS, images=1000)
    text = check_report(report_main([str(exp), "-o", str(tmp_path / "out")]), ["aaaaa"])
    # 1 / 10 classes; 2 standard errors of a guess on 1,000 images: 0.019
    assert "- chance 0.1000 (1 / 10 classes)" in text and "that is 0.1190 or less" in text
    assert "**At chance: the search learned nothing at this budget.**" in text
    assert "| 0.1120 ± 0.0100 (at chance) | - |" in text and "| 0.1000 ± 0.0095 (at chance) | - |" in text
    assert "are tied with it" not in text and "ahead of every other" not in text
    rows = {r["trial_id"]: r for r in csv.DictReader(open(tmp_path / "out" / "trials.csv"))}
    assert rows["ddddd"]["at_chance"] == "true" and rows["ddddd"]["tied"] == "" and rows["bbbbb"]["at_chance"] == ""
    # every accuracy axis draws the chance line
    for name in ("trials.png", "curves.png", "budget.png", "effect_lr.png", "effect_model.png"):
        assert _chance_lines(figures[name].axes[0]) == [pytest.approx(0.1)], name
    # the model x optimizer table shows every searched value, and why a pair has no number
    table = text.split("## Model x optimizer", 1)[1]
    assert "| model | Adam | Adamax | SGD |" in table
    assert "| vgg | 0.1120 ± 0.0100 (at chance) (lr 0.01) | no finished trial (1 early-stopped) | no finished trial " \
           "(1 failed) |" in table
    # the effect of lr: lr 0.001's trials were all stopped, and still show (hollow), with the failed one
    ax = figures["effect_lr.png"].axes[0]
    hollow = {(round(float(y), 3), line.get_marker()) for line in ax.get_lines() if line.get_markerfacecolor() == "none"
              for y in line.get_ydata()}
    assert hollow == {(0.104, "o"), (0.09, "o"), (0.095, "s")}
    assert [t.get_text().split("\n") for t in ax.get_xticklabels()] == [
        ["0.001", "0 finished", "2 stopped"], ["0.01", "2 finished", "1 failed"]]
    assert any(c.__class__.__name__ == "LineCollection" for c in ax.collections), "no error bar on the mean"
    # one epoch: whole-number ticks only
    ax = figures["curves.png"].axes[0]
    lo, hi = ax.get_xlim()
    assert [t for t in ax.get_xticks() if lo <= t <= hi] == [1.0]
    _check_texts_fit(figures)


def test_accuracy_axes_span_a_few_standard_errors_and_best_so_far_has_its_band(tmp_path, figures):
    from report.stats import binomial_se

    # two results two images apart on 1,000: today's 0.155-0.157 must not fill the axis
    trials = [{"id": "aaaaa", "params": P("mobilenet", "Adam", 0.01), "curve": [0.12, 0.155], "final": 0.155,
               "status": "SUCCEEDED"},
              {"id": "bbbbb", "params": P("vgg", "Adam", 0.01), "curve": [0.13, 0.157], "final": 0.157,
               "status": "SUCCEEDED"}]
    exp = _fake_experiment(tmp_path / "exp0span", "hpo", trials, images=1000)
    text = check_report(report_main([str(exp), "-o", str(tmp_path / "out")]), ["bbbbb"])
    assert "**At chance" not in text and "(at chance)" not in text        # 0.155 is above 0.119
    se = binomial_se(0.157, 1000)
    for name in ("trials.png", "budget.png", "curves.png"):
        lo, hi = figures[name].axes[0].get_ylim()
        assert hi - lo >= 6 * se, (name, lo, hi)               # a few standard errors, not 0.155 to 0.157
    for name in ("trials.png", "budget.png"):           # the best so far carries a band of ± its standard error
        bands = [c for c in figures[name].axes[0].collections if c.__class__.__name__ in ("PolyCollection",
                                                                                          "FillBetweenPolyCollection")]
        ys = [v[1] for band in bands for path in band.get_paths() for v in path.vertices]
        assert ys and min(ys) == pytest.approx(0.155 - binomial_se(0.155, 1000), abs=1e-6)
        assert max(ys) == pytest.approx(0.157 + se, abs=1e-6)
    _check_texts_fit(figures)


def _fake_retrain(runs: Path, exp: str, trial: dict, seed: int, acc: float, images: int = 2000) -> Path:
    """A finished retrain folder of ``trial`` as hpo/retrain.py --top K --seeds writes one."""
    run = runs / f"hpo_retrain-{exp}-{trial['id']}-seed{seed}"
    run.mkdir(parents=True)
    (run / "origin.json").write_text(json.dumps({"experiment_id": exp, "stage": "hpo_retrain", "trial_id": trial["id"],
                                                 "rank": 1, "seed": seed, "params": trial["params"]}))
    (run / "config.yaml").write_text(yaml.safe_dump({**trial["params"], "data": "fake", "epochs": 2, "seed": seed}))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 2, "test_acc": acc, "test_images": images}) + "\n")
    (run / "result.json").write_text(json.dumps({"test_acc": acc, "test_images": images, "classes": 10, "epoch": 2}))
    return run


def test_retrains_are_tied_by_the_seed_spread_and_labelled_on_their_own_points(tmp_path, figures):
    from matplotlib.text import Text

    exp = _fake_experiment(tmp_path / "exp0retr", "hpo", HPO_TRIALS, images=1000)
    runs = tmp_path / "runs"
    by_id = {t["id"]: t for t in HPO_TRIALS}
    for trial_id, seed, acc in [("aaaaa", 0, 0.60), ("aaaaa", 1, 0.56), ("ddddd", 0, 0.62), ("ddddd", 1, 0.60),
                                ("ccccc", 0, 0.40)]:
        _fake_retrain(runs, "exp0retr", by_id[trial_id], seed, acc)
    # the runs folder given twice (as the default and with --retrains) is one folder
    text = check_report(report_main([str(exp), "--retrains", str(runs), "--retrains", str(runs) + "/", "-o",
                                     str(tmp_path / "out")]), ["hpo_retrain-exp0retr-aaaaa-seed1"])
    found = next(line for line in text.splitlines() if line.startswith("Retrains found in"))
    assert found.count(f"`{runs}`") == 1 and ": 5 run(s) of 3 configuration(s)" in found
    # seed-to-seed spread pooled over aaaaa (0.60, 0.56) and ddddd (0.62, 0.60): sqrt((0.0008 + 0.0002) / 2)
    spread = ((0.02 ** 2 * 2 + 0.01 ** 2 * 2) / 2) ** 0.5
    assert f"the larger of the seed-to-seed standard deviation ({spread:.4f}, pooled over the 2 configuration(s)" in text
    # ddddd leads (0.61); its noise is max(0.0224 / sqrt 2, binomial 0.0109): aaaaa's 0.58 is within 2 x 0.0158
    row = next(line for line in text.splitlines() if line.startswith("| 1 | aaaaa | mobilenet Adam 0.001 |"))
    assert "| 0.5800 ± 0.0283 (n=2) | 0.6000, 0.5600 | yes |" in row
    assert "is not the retrain's winner" in text and "Within the noise it is tied with it" in text
    tau = tau_in(text)
    assert tau == pytest.approx(kendall([0.5, 0.4, 0.3], [0.58, 0.61, 0.40]).tau, abs=1e-3)
    ax = figures["search_vs_retrain.png"].axes[0]
    assert f"n = 3" in ax.get_title() and "tau" in ax.get_title()
    labels = [t for t in ax.texts if t.get_text().split()[0] in by_id]
    assert len(labels) == 3
    from report.plots import clipped_texts

    fig = figures["search_vs_retrain.png"]
    assert clipped_texts(fig) == []                              # draws it again, for the boxes below
    renderer = fig.canvas.get_renderer()
    for t in labels:                      # each label points at its own configuration, with a line to it
        trial = by_id[t.get_text().split()[0]]
        assert t.xy[0] == pytest.approx(trial["final"]) and t.arrow_patch is not None
    boxes = [Text.get_window_extent(t, renderer) for t in labels]           # the text alone, not its line
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), "labels on top of each other"
    assert all(ax.bbox.contains(b.x0, b.y0) and ax.bbox.contains(b.x1, b.y1) for b in boxes), "a label outside"
    _check_texts_fit(figures)

    # two configurations: Kendall's tau is +1 or -1 whatever they are, and is kept out of the title
    two = tmp_path / "runs2"
    for trial_id, acc in [("aaaaa", 0.6), ("ddddd", 0.5)]:
        _fake_retrain(two, "exp0retr", by_id[trial_id], 0, acc)
    text = check_report(report_main([str(exp), "--retrains", str(two), "-o", str(tmp_path / "out2")]), [])
    assert "over two configurations it is +1 or -1 whatever they are" in text
    assert "tau" not in figures["search_vs_retrain.png"].axes[0].get_title()
    assert "its binomial standard error only: no configuration was retrained with more than one seed" in text


# --- -o OUT replaced: killed at any moment, OUT is the old report or the new one ---------------------

OLD_TEXT = "the old report\n"


def _run_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("data: fake\nepochs: 2\nmodel: mobilenet\n")
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "train_loss": 2.0 / e, "test_acc": 0.2 * e,
                                                              "train_seconds": 1.5}) + "\n" for e in (1, 2)))
    (folder / "result.json").write_text(json.dumps({"test_acc": 0.4, "epoch": 2}))
    return folder


def _quick_render(data, out: Path) -> str:
    """A run's report without drawing (the tests below are about putting it in place): a figure
    file and the Markdown."""
    from core.files import atomic_write_bytes

    atomic_write_bytes(out / "curves.png", b"a figure")
    return "# Report: new\n"


def _old_report(source: Path, out: Path) -> dict[str, bytes]:
    """A report of ``source`` in ``out`` whose report.md says it is the old one; its files."""
    report_main([str(source), "-o", str(out)])
    (out / "report.md").write_text(OLD_TEXT)
    return {p.name: p.read_bytes() for p in out.iterdir()}


def _which(out: Path, old: dict[str, bytes]) -> str:
    """``old`` when ``out`` is exactly the old report, ``new`` when it is a whole new report (every
    file its marker lists, and nothing else), else what it is."""
    if out.is_symlink() or not out.is_dir():
        return "missing" if not out.exists() else "not a folder"
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    if files == old:
        return "old"
    marker = json.loads(files.get(".report.json", b"{}"))
    whole = set(files) == {*marker.get("files", []), ".report.json"}
    return "new" if whole and files["report.md"].startswith(b"# Report:") else f"a mix: {sorted(files)}"


def _killed(argv: list[str], step: int, two_renames: bool) -> bool:
    """``python -m report ARGV`` in a forked process that SIGKILLs itself just before its STEP-th
    file-system change (a folder made, a file renamed or removed, two folders exchanged);
    whether it was killed (False: it had fewer steps and finished)."""
    import os
    import signal

    pid = os.fork()
    if pid == 0:                                        # the child: never returns into pytest
        try:
            import report.cli as cli

            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            done = [0]

            def counted(fn):
                def step_then(*args, **kwargs):
                    if done[0] == step:
                        os.kill(os.getpid(), signal.SIGKILL)
                    done[0] += 1
                    return fn(*args, **kwargs)
                return step_then
            for name in ("mkdir", "rename", "replace", "rmdir", "unlink"):
                setattr(os, name, counted(getattr(os, name)))
            cli._exchange = counted((lambda a, b: False) if two_renames else cli._exchange)
            cli.main(argv)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.mark.parametrize("two_renames", [False, True], ids=["exchanged", "two renames"])
def test_report_killed_at_any_step_leaves_the_old_or_the_new_report_and_the_next_run_cleans_up(tmp_path, monkeypatch,
                                                                                                two_renames):
    """A SIGKILL before each file-system step of ``report -o EXISTING``: OUT is the old report or
    the new one (where the file system cannot exchange two folders in one step, OUT may be missing
    between the two renames, and the old report is then whole in .OUT.old-*/OUT); the next run,
    even one that fails, puts a moved-aside report back, and removes what the killed one left."""
    from report.cli import _exchange

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    if not two_renames and not _exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("this file system cannot exchange two folders in one step")
    monkeypatch.setattr("report.run_report.render_run", _quick_render)
    source = _run_folder(tmp_path / "run")
    out = tmp_path / "reports" / "out"
    out.parent.mkdir()
    (out.parent / "notes.txt").write_text("the user's\n")
    old = _old_report(source, out)
    mine = ["notes.txt", "out"]
    seen = []
    for step in range(100):
        shutil.rmtree(out)
        out.mkdir()
        for name, data in old.items():
            (out / name).write_bytes(data)
        if not _killed([str(source), "-o", str(out)], step, two_renames):
            break
        now = _which(out, old)
        aside = list(out.parent.glob(".out.old-*"))
        if now == "missing":             # between the two renames: the old report is whole beside it
            assert two_renames and len(aside) == 1 and _which(aside[0] / "out", old) == "old", step
        else:
            assert now in ("old", "new"), (step, now)
        seen.append(now)
        # the next run fails (a missing source), and still puts back or removes what the killed one left
        with pytest.raises(SystemExit):
            report_main([str(tmp_path / "no-such-run"), "-o", str(out)])
        assert _which(out, old) == ("old" if now == "missing" else now), step
        assert sorted(p.name for p in out.parent.iterdir()) == mine, step
        report_main([str(source), "-o", str(out)])
        assert _which(out, old) == "new" and sorted(p.name for p in out.parent.iterdir()) == mine
    assert _which(out, old) == "new" and sorted(p.name for p in out.parent.iterdir()) == mine
    assert set(seen) == ({"old", "new", "missing"} if two_renames else {"old", "new"}), seen
    assert seen.index("new") > seen.index("old") and "old" not in seen[seen.index("new"):], seen


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGKILL"])
def test_report_killed_by_a_signal_between_its_renames_is_put_back_by_the_next_run(tmp_path, signum):
    """The real command, stopped by a signal from outside (SIGTERM has no handler: it ends the
    process as SIGKILL does) at the worst moment: the file system cannot exchange two folders, the
    old report is moved aside and the new one not yet in place."""
    import signal
    import time

    source = _run_folder(tmp_path / "run")
    out = tmp_path / "out"
    old = _old_report(source, out)
    flag = tmp_path / "between-the-renames"
    script = ("import os, sys, time, report.cli as cli\n"
              "cli._exchange = lambda a, b: False\n"
              "def stop_after_aside(rename):\n"
              "    def renamed(a, b):\n"
              "        rename(a, b)\n"
              "        if '.old-' in str(b):\n"
              f"            open({str(flag)!r}, 'w').close()\n"
              "            time.sleep(60)\n"
              "    return renamed\n"
              "os.rename, os.replace = stop_after_aside(os.rename), stop_after_aside(os.replace)\n"
              "cli.main(sys.argv[1:])\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(source), "-o", str(out)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the report never reached its renames"
            time.sleep(0.05)
        proc.send_signal(getattr(signal, signum))
        assert proc.wait(timeout=60) == -getattr(signal, signum)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    aside = list(tmp_path.glob(".out.old-*"))
    assert not out.exists() and len(aside) == 1 and _which(aside[0] / "out", old) == "old"
    assert list(tmp_path.glob(".out.tmp-*")), "the new report, built, is left beside OUT"
    with pytest.raises(SystemExit):                   # the next run fails, and puts the old report back first
        report_main([str(tmp_path / "no-such-run"), "-o", str(out)])
    assert _which(out, old) == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["between-the-renames", "out", "run"]


def test_report_removes_only_what_a_killed_run_of_its_own_left(tmp_path, monkeypatch):
    """Beside OUT, the next run removes a killed run's folders only: named exactly as it names them,
    holding only a report's files, and held by no living run."""
    import fcntl
    import os

    monkeypatch.setattr("report.run_report.render_run", _quick_render)
    source = _run_folder(tmp_path / "run")
    place = tmp_path / "reports"
    report_main([str(source), "-o", str(place / "out")])
    for name in (".out.tmp-k1lled_0", ".out.old-k1lled_1/out"):     # a killed run's: removed
        (place / name).mkdir(parents=True)
        (place / name / "curves.png").write_bytes(b"png")
        (place / name / ".report.md.abc123.tmp").write_text("half")
    kept = {".out.tmp-mine": {"a.txt": "x"},               # not tempfile's eight characters
            ".out.tmp-abcdefgh": {"sub/a.txt": "x"},       # holds a folder: no report does
            ".out.old-abcdefgh": {"notes.txt": "x"},       # not a report moved aside
            ".out.old-bcdefghi": {"out/notes.txt": "x", "out/sub/b.txt": "y"},   # a folder in it
            ".out.tmp-livingrn": {"report.md": "being written"},                 # a living run's (locked)
            ".other.tmp-abcdefgh": {"report.md": "x"},     # another OUT's
            "out.tmp-abcdefgh": {"report.md": "x"}}        # not hidden: not one of its names
    for folder, files in kept.items():
        for name, text in files.items():
            (place / folder / name).parent.mkdir(parents=True, exist_ok=True)
            (place / folder / name).write_text(text)
    (place / ".out.tmp-linkedto").symlink_to(place / ".out.tmp-mine")

    def listing() -> dict[str, bytes | None]:
        return {str(p.relative_to(place)): p.read_bytes() if p.is_file() else None for p in place.rglob("*")
                if p.relative_to(place).parts[0] != "out"}
    before = listing()
    living = os.open(place / ".out.tmp-livingrn", os.O_RDONLY)
    fcntl.flock(living, fcntl.LOCK_EX)
    try:
        report_main([str(source), "-o", str(place / "out")])
    finally:
        os.close(living)
    assert listing() == {k: v for k, v in before.items() if "k1lled" not in k}
    assert (place / "out" / "report.md").is_file()


# --- -o, invalid numbers, retrains matched to their trials, damaged run folders ----------------------

def fake_run(folder: Path, metrics: list[str] | None = None, result: dict | None = None, **files) -> Path:
    """A run folder as the training core writes one (metrics lines given as raw text)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text("data: fake\nepochs: 2\nmodel: mobilenet\n")
    lines = metrics if metrics is not None else [
        json.dumps({"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.2 * e, "test_acc": 0.1 * e,
                    "train_seconds": 1.5}) for e in (1, 2)]
    (folder / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    if result is not None:
        (folder / "result.json").write_text(json.dumps(result))
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text)
    return folder


@pytest.mark.parametrize("case", ["project folder", "runs folder", "a run folder", "own files", "a file"])
def test_report_never_replaces_what_it_did_not_write(tmp_path, case):
    source = fake_run(tmp_path / "runs" / "run-1", result={"test_acc": 0.5, "epoch": 2})
    if case == "project folder":                     # `-o .` in a project folder
        out, cwd = Path("."), tmp_path / "project"
        (cwd / "pkg").mkdir(parents=True)
        (cwd / "pkg" / "main.py").write_text("print('my code')\n")
    elif case == "runs folder":
        out, cwd = tmp_path / "runs", tmp_path
    elif case == "a run folder":
        out, cwd = source, tmp_path
    elif case == "own files":
        out, cwd = tmp_path / "mine", tmp_path
        out.mkdir()
        (out / "notes.txt").write_text("mine\n")
        (out / "report.md").write_text("my own report.md\n")
    else:
        out, cwd = tmp_path / "file.md", tmp_path
        out.write_text("x\n")
    target = (cwd / out).resolve()
    before = state(tmp_path)
    command = cli if case == "project folder" else lambda args, cwd: report(args[2:], cwd)   # one as a real process
    proc = command(["-m", "report", source, "-o", out], cwd=cwd)
    one_error_line(proc, "-o:", "it is left as it is" if case != "a file" else "is not a folder")
    assert state(tmp_path) == before, f"{target} changed"


def test_report_replaces_only_its_own_report_and_never_through_a_link(tmp_path):
    source = fake_run(tmp_path / "run-1", result={"test_acc": 0.5, "epoch": 2})
    out = tmp_path / "reports" / "r1"
    old_umask = os.umask(0o022)
    try:
        first = cli(["-m", "report", source, "-o", out])
        assert first.returncode == 0, first.stderr
        marker = json.loads((out / ".report.json").read_text())
        assert marker["kind"] == "python -m report" and "report.md" in marker["files"]
        assert stat.S_IMODE(out.stat().st_mode) == 0o755, "the report folder must get the usual mode, not 0700"
        (out / "report.md").write_text("stale\n")
        second = report([source, "-o", out])                    # its own report: replaced
        assert second.returncode == 0 and "stale" not in (out / "report.md").read_text()
        (out / "notes.txt").write_text("added by the user\n")   # now it holds a file the report did not write
        before = state(tmp_path)
        one_error_line(report([source, "-o", out]), "holds files the report did not write (notes.txt)")
        assert state(tmp_path) == before
        # a link as OUT: refused, the folder it points to untouched
        target = tmp_path / "elsewhere"
        target.mkdir()
        (target / "keep.txt").write_text("keep\n")
        link = tmp_path / "link"
        link.symlink_to(target)
        before = state(tmp_path)
        one_error_line(report([source, "-o", link]), "is a symbolic link")
        assert state(tmp_path) == before
        # an empty folder is taken
        empty = tmp_path / "empty"
        empty.mkdir()
        assert report([source, "-o", empty]).returncode == 0 and (empty / "report.md").is_file()
    finally:
        os.umask(old_umask)
    assert not list(tmp_path.rglob(".*.tmp-*")) and not list(tmp_path.rglob(".*.old-*"))


def test_report_into_an_unwritable_place_or_a_link_loop(tmp_path):
    source = fake_run(tmp_path / "run", result={"test_acc": 0.5, "epoch": 2})
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    before = state(tmp_path)
    one_error_line(cli(["-m", "report", source, "-o", "/proc/cifar-automl/report"]), "-o: cannot write the report")
    one_error_line(report([source, "-o", tmp_path / "loop" / "report"]), "-o:")
    assert state(tmp_path) == before


def _retrain_folder(runs: Path, name: str, exp: str, trial: str, params: dict, test_acc: float, **origin) -> Path:
    folder = runs / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": "fake", "epochs": 2, **params}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "train_loss": 1.0, "test_acc": test_acc})
                                                  + "\n" for e in (1, 2)))
    (folder / "result.json").write_text(json.dumps({"test_acc": test_acc, "epoch": 2}))
    (folder / "origin.json").write_text(json.dumps({"experiment_id": exp, "stage": "hpo_retrain", "trial_id": trial,
                                                    "rank": 1, "params": params, **origin}))
    return folder


def test_report_matches_retrains_to_real_trials_and_lists_what_it_left_out(tmp_path):
    exp = _fake_experiment(tmp_path / "exp0match", "hpo", HPO_TRIALS)
    runs = tmp_path / "runs"
    p = {t["id"]: t["params"] for t in HPO_TRIALS}
    good_a = _retrain_folder(runs, "a", "exp0match", "aaaaa", p["aaaaa"], 0.6)
    _retrain_folder(runs, "d", "exp0match", "ddddd", p["ddddd"], 0.7)
    shutil.copytree(good_a, runs / "copy-of-a")                                        # counted once
    _retrain_folder(runs, "nas", "exp0match", "ccccc", p["ccccc"], 0.9, stage="classic_nas_retrain")
    _retrain_folder(runs, "ghost", "exp0match", "zzzzz", p["aaaaa"], 0.9)               # no such trial
    _retrain_folder(runs, "other-lr", "exp0match", "ccccc", {**p["ccccc"], "lr": 0.1}, 0.9)  # not what ccccc ran
    _retrain_folder(runs, "bad-rank", "exp0match", "ccccc", p["ccccc"], 0.2, rank="x")  # a rank that is no number
    (runs / "dup").mkdir()
    (runs / "dup" / "origin.json").write_text('{"experiment_id": "exp0match", "trial_id": "aaaaa", "trial_id": "x"}')
    _retrain_folder(runs, "other-exp", "exp9other", "aaaaa", p["aaaaa"], 0.1)           # another experiment's
    proc = cli(["-m", "report", exp, "--retrains", runs, "-o", tmp_path / "out"])
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "out" / "report.md").read_text()
    assert "3 finished with a valid test accuracy" in text                             # a, d, and bad-rank (ccccc)
    assert "Kendall's tau = " in text and "Left out of the comparison (5):" in text
    for folder, reason in [("copy-of-a", "a second retrain of trial aaaaa (counted once"),
                           ("nas", "its stage is 'classic_nas_retrain', not 'hpo_retrain'"),
                           ("ghost", "trial 'zzzzz' is not a trial of this experiment"),
                           ("other-lr", "it trained lr 0.1, but trial ccccc ran lr 1e-09"),
                           ("dup", "the key 'trial_id' appears more than once")]:
        assert any(f"/{folder}`: " in line and reason in line for line in text.splitlines()), (folder, reason)
    assert "other-exp" not in text


def test_non_finite_and_absurd_numbers_are_shown_as_invalid(tmp_path):
    source = fake_run(tmp_path / "run", metrics=[
        '{"epoch": 1, "train_loss": NaN, "train_acc": 0.2, "train_seconds": 1.0}',
        '{"epoch": 2, "train_loss": 1.0, "train_acc": 1e300, "train_seconds": Infinity}'],
        result={"test_acc": float("inf"), "epoch": 2})
    proc = cli(["-m", "report", source, "-o", tmp_path / "out"])
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "out" / "report.md").read_text()
    assert "**Final test accuracy: invalid (inf)** after 2 epochs. (See Invalid numbers.)" in text
    assert "test accuracy: inf" not in text
    assert "## Invalid numbers" in text
    for needle in ("metrics.jsonl line 1: train_loss = nan is invalid (not a finite number)",
                   "metrics.jsonl line 2: train_acc = 1e+300 is invalid (an accuracy lies in [0, 1])",
                   "metrics.jsonl line 2: train_seconds = inf is invalid",
                   "result.json: test_acc = inf is invalid"):
        assert needle in text, needle


def test_invalid_trial_results_are_left_out_of_the_ranking(tmp_path):
    trials = [dict(t) for t in HPO_TRIALS[:4]]
    trials[2]["final"] = 1e300                      # would be "the best trial"
    exp = _fake_experiment(tmp_path / "exp0absurd", "hpo", trials)
    proc = report([exp, "-o", tmp_path / "out"])
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Trial **aaaaa**" in text and "trial ccccc: final validation accuracy 1e+300 is invalid" in text
    assert "**invalid (1e+300)**" in text


@pytest.mark.parametrize("case", ["random bytes", "non-number epoch", "cell input", "cell op", "epochs mixed"])
def test_damaged_run_folders_are_one_line(tmp_path, case):
    weights = {"normal/2_0": {"sep_conv_3x3": 0.6, "none": 0.4}, "reduce/2_0": {"max_pool_3x3": 1.0}}
    cell = {"normal": [[["sep_conv_3x3", 0], ["sep_conv_3x3", 1]]], "reduce": [[["max_pool_3x3", 0], ["max_pool_3x3", 1]]]}
    lines = None
    if case == "random bytes":
        folder = tmp_path / "run"
        folder.mkdir()
        (folder / "metrics.jsonl").write_bytes(os.urandom(2000) + b"\xff\xfe")
    elif case == "non-number epoch":
        lines = ['{"epoch": "one", "train_loss": 1.0}']
    elif case == "epochs mixed":                   # what two processes writing one folder leave
        lines = ['{"epoch": 1, "train_loss": 1.0}', '{"epoch": 1, "train_loss": 1.1}']
    else:
        bad = json.loads(json.dumps(cell))
        if case == "cell input":
            bad["normal"][0][1][1] = 7             # node 0 has inputs 0 and 1 only
        else:
            bad["reduce"][0][0][0] = "teleport_5x5"
        lines = [json.dumps({"epoch": 1, "train_loss": 1.0, "edge_weights": weights, "arch": bad})]
    if lines is not None:
        folder = fake_run(tmp_path / "run", metrics=lines)
    before = state(tmp_path)
    proc = (cli(["-m", "report", folder]) if case == "random bytes" else report([folder]))   # once as a real process
    one_error_line(proc, {"random bytes": "is not text", "non-number epoch": "epoch 'one' is not a whole number",
                          "epochs mixed": "epoch 1 follows epoch 1; two runs wrote into this folder",
                          "cell input": "node 0 of the derived normal cell takes input 7, which does not exist",
                          "cell op": "uses the operation 'teleport_5x5', which the search does not have"}[case])
    assert state(tmp_path) == before
