"""Results a researcher can trust and compare, on synthetic experiment databases
(written the way NNI 3.0 writes them, tests/test_report.py) and run folders: each accuracy with its
standard error and the trials tied with the best; ``--top K --seeds``; ``trials.csv``/``trials.json``;
parallel coordinates and parameter importance; comparisons of experiments; the study report.

:func:`check_trials_csv` and :func:`check_study_report` take real experiment and run folders too:
tests/test_study_e2e.py calls them on real nnictl experiments, a DARTS search and a retrain.
"""
from __future__ import annotations

import csv
import json
import random
import re
import shutil
import sqlite3
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

from report.cli import main as report_main
from report.stats import MIN_TRIALS_FOR_IMPORTANCE, binomial_se, kendall, tied_with
from tests.conftest import REPO
from tests.helpers import cli, decode_json, one_error_line, report
from tests.helpers import run as run_command
from tests.test_report import HPO_TRIALS, RETRAIN, _fake_experiment, check_report, tau_in


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"{name} in a JSON export")
    return json.loads(text, parse_constant=refuse)


def _cell(text: str):
    """A trials.csv cell as a value (numbers and JSON decoded, other text as it is, less the ``'``
    that keeps a spreadsheet from running it)."""
    if text.startswith("'") and text[1:].startswith(("=", "+", "-", "@", "\t", "\r")):
        return text[1:]
    try:
        return json.loads(text)
    except ValueError:
        return text


# --- checks that also run on real experiments (tests/test_study_e2e.py) --------------------------

def check_trials_csv(exp_dir: Path, out: Path, require: tuple[str, ...] = ()) -> list[dict]:
    """``python -m report EXP -o OUT`` writes trials.csv and trials.json holding every trial of the
    experiment's database (read here directly with sqlite, not through experiments.reader): its
    sequence id, NNI status (EARLY_STOPPED for a trial the assessor stopped: NNI's USER_CANCELED with
    intermediate results and no final one), final result, best intermediate result, epochs, and the
    parameters its final result repeats. ``require``: statuses that must be among them. Returns the
    CSV rows."""
    report_main([str(exp_dir), "-o", str(out)])
    con = sqlite3.connect(f"file:{Path(exp_dir) / 'db' / 'nni.sqlite'}?mode=ro", uri=True)
    events = con.execute("SELECT trialJobId, event, sequenceId FROM TrialJobEvent ORDER BY timestamp").fetchall()
    metrics = con.execute("SELECT trialJobId, type, sequence, data FROM MetricData").fetchall()
    space = decode_json(con.execute("SELECT params FROM ExperimentProfile ORDER BY revision DESC LIMIT 1")
                        .fetchone()[0], strict=False)
    con.close()
    status, seq = {}, {}
    for tid, event, sequence in events:
        status[tid] = event
        if sequence is not None:
            seq[tid] = sequence
    periodical: dict[str, list[float]] = {tid: [] for tid in status}
    final: dict[str, dict] = {}
    for tid, kind, _, data in metrics:
        value = decode_json(data, strict=False)
        if kind == "PERIODICAL":
            periodical[tid].append(value["default"] if isinstance(value, dict) else value)
        elif kind == "FINAL":
            final[tid] = value if isinstance(value, dict) else {"default": value}
    with open(out / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    data = _strict_json((out / "trials.json").read_text())
    marker = json.loads((out / ".report.json").read_text())
    assert {"trials.csv", "trials.json"} <= set(marker["files"]), marker
    assert sorted(r["trial_id"] for r in rows) == sorted(status), "every trial once, and no other"
    assert [t["trial_id"] for t in data["trials"]] == [r["trial_id"] for r in rows]
    keys = list(space.get("searchSpace") or {})
    for row, record in zip(rows, data["trials"]):
        tid = row["trial_id"]
        early = status[tid] in ("USER_CANCELED", "EARLY_STOPPED") and tid not in final and bool(periodical[tid])
        assert row["nni_status"] == status[tid] and row["status"] == ("EARLY_STOPPED" if early else status[tid]), row
        assert record["early_stopped"] is early and record["status"] == row["status"]
        assert row["sequence_id"] == str(seq.get(tid, "")), row
        assert int(row["epochs"]) == len(periodical[tid]) == len(record["intermediates"])
        assert (float(row["best_intermediate"]) == max(periodical[tid])) if periodical[tid] else \
            row["best_intermediate"] == ""
        if tid in final and 0 <= final[tid]["default"] <= 1:
            assert float(row["final"]) == final[tid]["default"] and record["final"] == final[tid]["default"]
            for k in keys:
                if k in final[tid]:       # the parameters the trial really ran (its final result repeats them)
                    assert _cell(row[f"params_{k}"]) == final[tid][k] == record["params"][k], (tid, k)
        else:
            assert row["final"] == "" and record["final"] is None and row["rank"] == ""
        if row["status"] == "FAILED":
            assert row["final"] == "" and row["rank"] == ""
    for needed in require:
        assert any(r["status"] == needed for r in rows), f"no {needed} trial in {[r['status'] for r in rows]}"
    return rows


def check_study_report(hpo_exp: Path, nas_exp: Path, darts_run: Path, retrain_run: Path, tmp_path: Path,
                       from_hpo: bool = True) -> str:
    """``python -m report --study`` (sources in a shuffled order) writes one report: the four stages in
    the lab report's order, each with its own figures (every one a valid, non-blank image), whether the
    classic-NAS experiment took this study's HPO winner, and the closing table beside the lab's and
    the DARTS paper's numbers; its marker lists every file. Returns the Markdown."""
    out = tmp_path / "study_report"
    report_main([str(retrain_run), str(nas_exp), str(hpo_exp), str(darts_run), "--study", "-o", str(out)])
    text = check_report(out / "report.md", ["# Study report", "HPO experiment", "classic-NAS experiment",
                                            "one-shot DARTS search", "retrain"])
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    order = [next(i for i, h in enumerate(heads) if h.startswith(f"## {n}. {kind}"))
             for n, kind in enumerate(("HPO experiment", "classic-NAS experiment", "one-shot DARTS search", "retrain"),
                                      1)]
    assert order == sorted(order) and heads[-1] == "## This study beside the lab's and the DARTS paper's", heads
    for prefix in ("hpo_", "nas_", "darts_", "retrain_"):
        assert f"]({prefix}" in text, f"no figure of {prefix}"
    for name in ("hpo_trials.png", "hpo_budget.png", "nas_architectures.png", "nas_parallel.png",
                 "darts_edge_weights_normal.png", "darts_cell_normal.png", "retrain_curves.png"):
        assert f"({name})" in text, name
    hpo_part = text.split("## 2. ", 1)[0]
    assert "(hpo_parallel.png)" in hpo_part or "Fewer than two finished trials" in hpo_part
    closing = text.split("## This study beside", 1)[1]
    for needle in ("96.66 % after 200 epochs", "97.25 % after 600 epochs", "97.24 ± 0.09 % after 600 epochs",
                   "| HPO best configuration", "| classic-NAS best architecture", "| DARTS search",
                   "| retrain (a DARTS cell retrained): test accuracy"):
        assert needle in closing, needle
    assert "**This study's budget is smaller than the lab's**" in closing
    assert "**This study's budget is smaller than the DARTS paper's**" in closing
    taken = "**The classic-NAS experiment took this study's HPO winner** (--from-hpo)"
    assert (taken in text) is from_hpo
    assert "### Is it the searched cell?" in text.split("## 4. retrain", 1)[1]       # the retrain's cell checked
    marker = json.loads((out / ".report.json").read_text())
    assert marker["study"] is True and set(marker["files"]) == {p.name for p in out.iterdir()} - {".report.json"}
    assert {"hpo_trials.csv", "hpo_trials.json", "nas_trials.csv", "nas_trials.json"} <= set(marker["files"])
    return text


# --- noise: standard errors and ties -------------------------------------------------------------

def test_each_accuracy_has_its_standard_error_and_the_tied_trials_are_marked(tmp_path):
    assert binomial_se(0.9, 5000) == pytest.approx(0.0042426, abs=1e-6)      # 0.4 points at 90 %
    assert binomial_se(0.5, None) is None and binomial_se(None, 100) is None
    assert tied_with(0.5, 0.0158, 0.47) is True and tied_with(0.5, 0.0158, 0.46) is False
    assert tied_with(0.5, None, 0.49) is None
    trials = [dict(t) for t in HPO_TRIALS]
    trials[3] = {**trials[3], "final": 0.49, "curve": [0.3, 0.4, 0.49]}   # 0.01 behind the best: within 2 SE at n 1000
    exp = _fake_experiment(tmp_path / "exp0noise", "hpo", trials, images=1000)
    text = check_report(report_main([str(exp), "-o", str(tmp_path / "out")]), ["aaaaa", "ddddd"])
    se = binomial_se(0.5, 1000)
    assert f"**0.5000** ± {se:.4f}" in text and f"| 0.5000 ± {se:.4f} | yes |" in text
    assert f"| 0.4900 ± {binomial_se(0.49, 1000):.4f} | yes |" in text                 # tied
    assert f"| 0.3000 ± {binomial_se(0.3, 1000):.4f} |  |" in text                      # not tied
    assert "(1,000 validation images; binomial)" in text and "are tied with it: 1 (ddddd" in text
    assert f"| mobilenet | not tried | 0.5000 ± {se:.4f} (lr 0.001) |" in text          # model x optimizer too
    assert "shaded: tied with the best" in text

    # trials that did not record how many images they were scored on: said so, no tie claimed
    old = _fake_experiment(tmp_path / "exp0old", "hpo", HPO_TRIALS)
    text = check_report(report_main([str(old), "-o", str(tmp_path / "out_old")]), ["aaaaa"])
    assert "standard error is unknown" in text and "| 0.5000 | yes |" in text and "| 0.4000 | ? |" in text


# --- exports -------------------------------------------------------------------------------------

def test_trials_csv_and_json_hold_every_trial_including_failed_and_early_stopped(tmp_path):
    trials = [*HPO_TRIALS,
              {"id": "fffff", "params": {"model": "vgg", "optimizer": "Adam", "lr": -1.0}, "curve": [],
               "status": "FAILED", "error": "error: lr: -1.0 is not allowed; a learning rate must be positive"},
              {"id": "iiiii", "params": {"model": "vgg", "optimizer": "Adam", "lr": 0.1}, "curve": [0.2, 0.2],
               "final": 1e300, "status": "SUCCEEDED"}]                       # an invalid final result
    exp = _fake_experiment(tmp_path / "exp0export", "hpo", trials, images=5000)
    rows = check_trials_csv(exp, tmp_path / "out", require=("SUCCEEDED", "FAILED", "EARLY_STOPPED", "RUNNING"))
    by_id = {r["trial_id"]: r for r in rows}
    assert by_id["bbbbb"]["status"] == "EARLY_STOPPED" and by_id["bbbbb"]["nni_status"] == "USER_CANCELED"
    assert by_id["fffff"]["error"].startswith("error: lr: -1.0 is not allowed") and by_id["fffff"]["epochs"] == "0"
    assert by_id["iiiii"]["final"] == "" and by_id["iiiii"]["final_invalid"] == "1e+300"
    assert by_id["aaaaa"]["rank"] == "1" and by_id["aaaaa"]["tied"] == "true" and by_id["aaaaa"]["val_images"] == "5000"
    assert float(by_id["aaaaa"]["final_se"]) == pytest.approx(binomial_se(0.5, 5000))
    assert by_id["aaaaa"]["params_source"] == "result" and by_id["aaaaa"]["duration_s"] == "60.0"
    assert by_id["aaaaa"]["start_time"].startswith("1970-01-01T00:00:01")
    assert list(rows[0])[:4] == ["sequence_id", "trial_id", "status", "nni_status"]
    assert [r["sequence_id"] for r in rows] == [str(i) for i in range(len(trials))]
    data = json.loads((tmp_path / "out" / "trials.json").read_text())
    assert data["experiment_id"] == "exp0export" and data["stage"] == "hpo" and "within 2 standard errors" in \
        data["tie_rule"] and data["trials"][0]["intermediates"] == [0.2, 0.4, 0.5]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "[`trials.csv`](trials.csv)" in text and "Every trial (7, failed and early-stopped ones included)" in text
    # the exports are part of the report folder: -o replaces it as a whole
    report_main([str(exp), "-o", str(tmp_path / "out")])
    assert (tmp_path / "out" / "trials.csv").is_file()


def test_trials_csv_cells_a_spreadsheet_would_run_are_text(tmp_path):
    """Every cell of trials.csv that a spreadsheet would take for a formula (starting with =, +, -,
    @, a tab or a carriage return, and not a number) starts with ' (OWASP); numbers stay numbers,
    and trials.json keeps the values as they are."""
    hostile = ['=HYPERLINK("http://x.example/","click")', "+1+1", "@SUM(A1:A2)", "-2+3", "\t=1+1", "\r=1+1"]
    trials = [{"id": f"t{i}abc", "params": {"model": m, "optimizer": "Adam", "lr": 0.001}, "curve": [0.3],
               "final": 0.3 + i / 100, "status": "SUCCEEDED"} for i, m in enumerate(hostile)]
    trials += [{"id": "@t9abc", "params": {"model": "-0.5", "optimizer": "=1+2", "lr": -1.0}, "curve": [0.1],
                "final": 0.1, "status": "SUCCEEDED"}]                  # numbers, and a trial id as a formula
    exp = _fake_experiment(tmp_path / "exp0csv", "hpo", trials)
    report_main([str(exp), "-o", str(tmp_path / "out")])
    with open(tmp_path / "out" / "trials.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    for row in rows:
        for cell in row:
            if cell.startswith(("=", "+", "-", "@", "\t", "\r")):
                float(cell)               # only a number may start as a formula does
    by_id = {r["trial_id"]: r for r in csv.DictReader(open(tmp_path / "out" / "trials.csv", newline=""))}
    for i, value in enumerate(hostile):
        assert by_id[f"t{i}abc"]["params_model"] == "'" + value
    assert "'@t9abc" in by_id and by_id["'@t9abc"]["params_optimizer"] == "'=1+2"
    assert by_id["'@t9abc"]["params_model"] == "-0.5" and by_id["'@t9abc"]["params_lr"] == "-1.0"
    data = json.loads((tmp_path / "out" / "trials.json").read_text())
    assert [t["params"]["model"] for t in data["trials"]] == [*hostile, "-0.5"] and data["trials"][-1]["trial_id"] == \
        "@t9abc"


# --- parameter importance and parallel coordinates -----------------------------------------------

def _random_hpo(exp_dir: Path, n: int, seed: int, signal: bool = True, stage: str = "hpo") -> Path:
    rng = random.Random(seed)
    trials = []
    for i in range(n):
        params = {"model": rng.choice(["mobilenet", "resnet18"]), "optimizer": rng.choice(["Adam", "SGD", "Adagrad"]),
                  "lr": rng.choice([0.1, 0.01, 0.001, 0.0001])}
        acc = (0.5 + (0.3 if params["optimizer"] == "Adam" else 0.0) + rng.uniform(-0.02, 0.02) if signal
               else rng.uniform(0.4, 0.6))
        trials.append({"id": f"{exp_dir.name[-3:]}{i:02d}", "params": params, "curve": [acc - 0.1, acc], "final": acc,
                       "status": "SUCCEEDED"})
    return _fake_experiment(exp_dir, stage, trials, images=5000)


def test_parameter_importance_from_enough_trials_and_said_impossible_below(tmp_path):
    exp = _random_hpo(tmp_path / "exp0imp", 30, seed=1)
    text = check_report(report_main([str(exp), "-o", str(tmp_path / "out")]), ["## Parameter importance"])
    assert "(importance.png)" in text and "(parallel.png)" in text
    section = text.split("## Parameter importance", 1)[1].split("\n## ", 1)[0]
    shares = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in section.splitlines()
              if line.startswith(("| optimizer |", "| lr |", "| model |"))}
    assert max(shares, key=shares.get) == "optimizer" and shares["optimizer"] > 0.6, shares
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)

    few = _random_hpo(tmp_path / "exp0few", MIN_TRIALS_FOR_IMPORTANCE - 1, seed=2)
    text = check_report(report_main([str(few), "-o", str(tmp_path / "out_few")]), ["## Parameter importance"])
    assert (f"Importance cannot be estimated from {MIN_TRIALS_FOR_IMPORTANCE - 1} finished trial(s): it takes at "
            f"least {MIN_TRIALS_FOR_IMPORTANCE}") in text
    assert not (tmp_path / "out_few" / "importance.png").exists() and "(parallel.png)" in text

    noise = _random_hpo(tmp_path / "exp0noi", 30, seed=3, signal=False)   # accuracy unrelated to the parameters
    text = check_report(report_main([str(noise), "-o", str(tmp_path / "out_noise")]), ["## Parameter importance"])
    assert "Not shown:" in text and "no better than their mean" in text
    assert not (tmp_path / "out_noise" / "importance.png").exists()


# --- comparisons ---------------------------------------------------------------------------------

def test_comparison_of_two_experiments_of_one_stage(tmp_path, capsys):
    a = _random_hpo(tmp_path / "exp0cma", 12, seed=4)
    b = _random_hpo(tmp_path / "exp0cmb", 6, seed=5)
    out = tmp_path / "cmp"
    text = check_report(report_main([str(a), str(b), "-o", str(out)]), ["# Comparison: `exp0cma`, `exp0cmb`"])
    assert "## Side by side" in text and "| trial-epochs spent | 24 | 12 |" in text
    assert "(budget.png)" in text and "(exp0cma_trials.png)" in text and "(exp0cmb_trials.png)" in text
    assert "- Each within its whole budget (exp0cma 24 trial-epochs, exp0cmb 12 trial-epochs): " in text
    assert "- Within the smallest budget any of them spent (12 trial-epochs" in text
    assert {"exp0cma_trials.csv", "exp0cmb_trials.json", "budget.png"} <= set(
        json.loads((out / ".report.json").read_text())["files"])
    whole = text.split("- Each within its whole budget", 1)[1].splitlines()[0]
    assert "**tied**" in whole or "found the better configuration" in whole or "is ahead, tied with" in whole

    # the verdict with the noise, by construction: 0.80 vs 0.79 at n 5000 is tied; vs 0.70 it is not
    def one(name, acc, tuner):
        return _fake_experiment(tmp_path / name, "hpo", [{"id": f"{name[-3:]}01", "params": HPO_TRIALS[0]["params"],
                                                          "curve": [acc], "final": acc, "status": "SUCCEEDED"}],
                                images=5000, profile={"tuner": {"name": tuner}})
    text = check_report(report_main([str(one("exp0hi", 0.80, "TPE")), str(one("exp0lo", 0.79, "Random")), "-o",
                                     str(tmp_path / "c2")]), [])
    assert "**tied** (exp0hi: 0.8000 ± 0.0057" in text and "these experiments cannot be told apart" in text
    assert "it counts validation sampling only" in text                # nothing ran with two seeds
    text = check_report(report_main([str(tmp_path / "exp0hi"), str(one("exp0wo", 0.70, "Anneal")), "-o",
                                     str(tmp_path / "c3")]), [])
    assert "**exp0hi found the better configuration**" in text

    # mistakes: one line, exit 2, nothing written
    nas = _fake_experiment(tmp_path / "exp0nas", "classic_nas", [
        {"id": "n0000", "params": {f"skip{k}": 1 for k in range(1, 7)}, "curve": [0.3], "final": 0.3,
         "status": "SUCCEEDED"}])
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.0}\n')
    (tmp_path / "link-to-a").symlink_to(a)
    for argv, needle in [([a, nas, "-o", tmp_path / "bad1"], "experiments of one stage only"),
                         ([a, run, "-o", tmp_path / "bad2"], "is a run folder; a comparison takes experiments"),
                         ([a, b], "give the report folder with -o OUT"),
                         ([a, tmp_path / "exp0cma" / "db" / "nni.sqlite", "-o", tmp_path / "bad3"],
                          "are the same experiment"),
                         ([a, a, "-o", tmp_path / "bad4"], "are the same experiment"),            # one spelling twice
                         ([b, a, f"{tmp_path}/run/../exp0cma/", "-o", tmp_path / "bad5"], "are the same experiment"),
                         ([tmp_path / "link-to-a", b, a, "-o", tmp_path / "bad6"], "are the same experiment"),
                         ([a, b, "-o", ""], "-o: the folder's name is empty")]:
        one_error_line(report(argv), needle)
    assert not any((tmp_path / f"bad{i}").exists() for i in range(1, 7))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["exp0cma", "exp0cmb", "exp0hi", "exp0lo", "exp0wo", "exp0nas", "run", "link-to-a", "cmp", "c2", "c3"])
    for source in (a, run):     # -o "" is no folder for one source either (not the default folder)
        one_error_line(report([source, "-o", ""]), "-o: the folder's name is empty")
        assert not (source / "report").exists()


def _seeded(tmp_path: Path, name: str, seed: int, finals: dict[tuple, float], tuner: str = "TPE") -> Path:
    """An HPO experiment whose trials ran ``--seed SEED`` through CIFAR_AUTOML_TRIAL_FLAGS (as its trials record
    it) and scored ``finals`` (model, optimizer, lr -> validation accuracy on 1,000 images)."""
    trials = [{"id": f"{name[-3:]}{i:02d}", "params": {"model": m, "optimizer": o, "lr": lr}, "curve": [acc],
               "final": acc, "status": "SUCCEEDED"} for i, ((m, o, lr), acc) in enumerate(finals.items())]
    return _fake_experiment(tmp_path / name, "hpo", trials, images=1000, flags=f"--seed {seed}",
                            config=f"data: fake\nepochs: 2\nbatch_size: 64\nweight_decay: 0.0005\nseed: {seed}\n",
                            profile={"trialCommand": "python3 trial.py --epochs 2 ${CIFAR_AUTOML_TRIAL_FLAGS:-}",
                                     "tuner": {"name": tuner}, "maxTrialNumber": 4})


def test_comparison_shows_what_differs_and_calls_a_seed_repeat_one(tmp_path):
    from report.stats import binomial_se

    mob, shu = ("mobilenet", "Adamax", 0.01), ("shufflenetg2", "Adam", 0.001)
    # the same configuration scoring 0.205 with one seed and 0.168 with the other
    a = _seeded(tmp_path, "exp0sda", 0, {mob: 0.205, shu: 0.150})
    b = _seeded(tmp_path, "exp0sdb", 1, {mob: 0.168, shu: 0.160})
    text = check_report(report_main([str(a), str(b), "-o", str(tmp_path / "c1")]), [])
    assert text.index("## What differs") < text.index("## Side by side")
    assert "- `exp0sda` ran its trials as `python3 trial.py --epochs 2 --seed 0`" in text     # the flags expanded
    assert "${CIFAR_AUTOML_TRIAL_FLAGS" not in text          # each experiment's what-ran says it the same way
    assert "- trial command: `python3 trial.py --epochs 2 --seed 1` (as its trials ran it" in text
    assert "| seed | trials' seed 0 | trials' seed 1 |" in text
    assert "The same in all: search space, tuner, assessor, budget, data, recipe, trial command." in text
    assert "**A seed repeat, not two search strategies**" in text and "## The same search with another seed" in text
    assert "found the better configuration" not in text and "## Which found the better" not in text
    # the seed-to-seed spread of the two configurations both ran, pooled: several times the binomial error
    spread = (((0.205 - 0.168) ** 2 + (0.150 - 0.160) ** 2) / 4) ** 0.5
    assert f"a standard deviation of {spread:.4f} from seed to seed (2 configuration(s) ran in more than one)" in text

    # another tuner too: ranked as search strategies, with the seed spread in the noise (0.205 vs 0.170 is
    # 2.7 binomial standard errors apart, but within 2 seed-to-seed standard deviations)
    c = _seeded(tmp_path, "exp0sdc", 2, {mob: 0.170, shu: 0.150}, tuner="Random")
    text = check_report(report_main([str(a), str(c), "-o", str(tmp_path / "c2")]), [])
    assert "| tuner | TPE | Random |" in text and "A seed repeat" not in text
    assert 0.205 - 0.170 > 2 * binomial_se(0.205, 1000)
    spread = (((0.205 - 0.170) ** 2 + 0) / 4) ** 0.5
    assert "**tied** (exp0sda: 0.2050 ± 0.0128" in text
    assert f"and the seed-to-seed standard deviation ({spread:.4f}, from 2 configuration(s) run with several seeds)" \
        in text


# --- the study report ----------------------------------------------------------------------------

def fake_darts_search(folder: Path) -> Path:
    """A DARTS search's run folder as oneshot_darts/search.py writes one (two epochs, 2 nodes)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("data: fake\nepochs: 2\nn_nodes: 2\nchannels: 4\nlayers: 3\nbatch_size: 8\n")
    ops = ["sep_conv_3x3", "skip_connect", "max_pool_3x3", "none"]
    arch = {c: [[["sep_conv_3x3", 0], ["skip_connect", 1]], [["sep_conv_3x3", 0], ["max_pool_3x3", 2]]]
            for c in ("normal", "reduce")}
    lines = []
    for e in (1, 2):
        weights = {f"{c}/{n}_{s}": {op: 0.25 + 0.05 * e * ((op == "sep_conv_3x3") - (op == "none")) for op in ops}
                   for c in ("normal", "reduce") for n in (2, 3) for s in range(n)}
        lines.append(json.dumps({"epoch": e, "train_loss": 2.0 / e, "val_acc": 0.2 * e, "val_images": 100,
                                 "train_images": 16, "edge_weights": weights, "arch": arch, "normal_skip_connect": 1,
                                 "normal_param_free": 2, "train_seconds": 1.0}))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "result.json").write_text(json.dumps({"val_acc": 0.4, "epoch": 2, "val_images": 100, "arch": arch}))
    return folder


def fake_darts_retrain(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("data: fake\nepochs: 2\nchannels: 4\nlayers: 3\nauxiliary_weight: 0.4\n"
                                        "arc: final_arch.json\n")
    (folder / "metrics.jsonl").write_text("".join(json.dumps(
        {"epoch": e, "train_loss": 1.0 / e, "test_acc": 0.3 * e, "test_images": 200, "train_images": 16,
         "train_seconds": 1.0}) + "\n" for e in (1, 2)))
    (folder / "result.json").write_text(json.dumps({"test_acc": 0.6, "epoch": 2, "test_images": 200}))
    (folder / "arch.json").write_text(json.dumps(   # the cell fake_darts_search derives, as retrain.py records it
        {c: [[["sep_conv_3x3", 0], ["skip_connect", 1]], [["sep_conv_3x3", 0], ["max_pool_3x3", 2]]]
         for c in ("normal", "reduce")}))
    return folder


def _nas_from(hpo: Path, tmp_path: Path, name: str, winner: str | None) -> Path:
    extra = {"optimizer": "Adam", "lr": 0.001, "from_hpo": str(hpo), "hpo_trial": winner} if winner else {}
    trials = [{"id": f"n{i}xyz", "params": {f"skip{k}": (i >> (k - 1)) & 1 for k in range(1, 7)},
               "curve": [0.1, 0.1 + 0.05 * i], "final": 0.1 + 0.05 * i, "status": "SUCCEEDED", "extra": extra}
              for i in range(4)]
    return _fake_experiment(tmp_path / name, "classic_nas", trials, images=5000)


def test_study_report_of_the_four_stages(tmp_path, capsys, monkeypatch):
    hpo = _fake_experiment(tmp_path / "hpoexp1", "hpo", HPO_TRIALS, images=5000)
    nas = _nas_from(hpo, tmp_path, "nasexp1", winner="aaaaa")
    darts, retrain = fake_darts_search(tmp_path / "darts_search"), fake_darts_retrain(tmp_path / "darts_retrain")
    text = check_study_report(hpo, nas, darts, retrain, tmp_path)
    assert "in 4 of its 4 finished trials" in text and "| HPO best configuration: trial aaaaa" in text
    assert "**Yes: the retrained cell is this study's searched cell**" in text

    # any subset; the classic-NAS experiment without --from-hpo says so; the default folder is in the runs folder
    monkeypatch.setenv("CIFAR_AUTOML_RUNS", str(tmp_path / "runs"))
    own = _nas_from(hpo, tmp_path, "nasexp2", winner=None)
    path = report_main(["--study", str(own), str(retrain)])
    assert path == tmp_path / "runs" / "study-nasexp2-darts_retrain" / "report.md"
    text = check_report(path, ["## 1. classic-NAS experiment `nasexp2`", "## 2. retrain: a DARTS cell retrained"])
    assert "**The classic-NAS experiment did not take the HPO winner**" in text
    assert "Not part of it: HPO experiment, one-shot DARTS search." in text
    another = _nas_from(tmp_path / "elsewhere", tmp_path, "nasexp3", winner="zzzzz")
    text = check_report(report_main(["--study", str(hpo), str(another), "-o", str(tmp_path / "s3")]), [])
    assert "**The classic-NAS experiment took another HPO winner** than this study's" in text

    # each source's kind checked: one line, exit 2, nothing written
    hpo2 = _fake_experiment(tmp_path / "hpoexp2", "hpo", HPO_TRIALS[:1])
    dnni = _fake_experiment(tmp_path / "dartsexp", "oneshot_darts", HPO_TRIALS[:1])   # its best trial: no search
    for argv, needle in [([hpo, hpo2], "are both of kind 'HPO experiment'"),
                         ([darts, fake_darts_search(tmp_path / "darts2")], "are both of kind 'one-shot DARTS search'"),
                         ([dnni], "is an experiment of stage 'oneshot_darts', which the study does not take"),
                         ([tmp_path / "plain"], "no such file or folder")]:
        one_error_line(report(["--study", *argv, "-o", tmp_path / "bad"]), needle)
    assert not (tmp_path / "bad").exists()


def test_study_checks_the_retrained_cell_and_whether_the_hpo_winner_stood_out(tmp_path):
    darts = fake_darts_search(tmp_path / "darts_search")
    searched = json.loads((darts / "result.json").read_text())["arch"]
    same = fake_darts_retrain(tmp_path / "same_cell")
    # the searched cell, its nodes' edges in another order: the same cell
    (same / "arch.json").write_text(json.dumps({c: [list(reversed(node)) for node in nodes]
                                                for c, nodes in searched.items()}))
    text = check_report(report_main(["--study", str(darts), str(same), "-o", str(tmp_path / "s1")]), [])
    assert "**Yes: the retrained cell is this study's searched cell**, the search's derived cell" in text

    v2 = fake_darts_retrain(tmp_path / "v2_cell")
    (v2 / "arch.json").write_text((REPO / "oneshot_darts" / "archs" / "darts_v2.json").read_text())
    text = check_report(report_main(["--study", str(darts), str(v2), "-o", str(tmp_path / "s2")]), [])
    assert "**No: the retrain trained the published DARTS-V2 cell, not this study's searched cell**" in text

    # the HPO winner classic NAS took: tied with another configuration at 100 validation images
    hpo = _fake_experiment(tmp_path / "hpoexp7", "hpo", HPO_TRIALS, images=100)
    nas = _nas_from(hpo, tmp_path, "nasexp7", winner="aaaaa")
    text = check_report(report_main(["--study", str(hpo), str(nas), "-o", str(tmp_path / "s3")]), [])
    assert "**The HPO winner it took was tied with 1 other configuration(s)** within 2 standard errors (0.1000): ddddd " \
           "(shufflenetg2 Adam 0.001, 0.4000)" in text
    hpo = _fake_experiment(tmp_path / "hpoexp8", "hpo", HPO_TRIALS, images=5000)
    nas = _nas_from(hpo, tmp_path, "nasexp8", winner="aaaaa")
    text = check_report(report_main(["--study", str(hpo), str(nas), "-o", str(tmp_path / "s4")]), [])
    assert "The HPO winner it took was ahead of every other HPO configuration by more than 2 standard errors" in text

    # a retrain at chance: marked in the closing table and said plainly
    low = fake_darts_retrain(tmp_path / "low")
    (low / "result.json").write_text(json.dumps({"test_acc": 0.11, "epoch": 2, "test_images": 200, "classes": 10}))
    text = check_report(report_main(["--study", str(low), "-o", str(tmp_path / "s5")]), [])
    closing = text.split("## This study beside", 1)[1]
    assert "| 11.00 ± 2.21 % (at chance) |" in closing and "**retrain (a DARTS cell retrained) is at chance**" in closing
    assert "this study holds no DARTS search to check it against" in text


def test_darts_figures_number_nodes_alike_label_the_auxiliary_loss_and_tick_whole_epochs(tmp_path):
    from report import plots

    drawn = {}
    real_save = plots._save

    def save(fig, path, *args, **kwargs):
        drawn[Path(path).name] = fig
        return real_save(fig, path, *args, **kwargs)
    search = fake_darts_search(tmp_path / "search")
    retrain = fake_darts_retrain(tmp_path / "retrain")
    one = tmp_path / "one_epoch"
    one.mkdir()
    (one / "config.yaml").write_text("data: fake\nepochs: 1\n")
    (one / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 2.0, "val_acc": 0.3, "val_images": 500,
                                                   "train_seconds": 1.0}) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "_save", save)
        text = check_report(report_main([str(search), "-o", str(tmp_path / "r1")]), [])
        titles = {ax.get_title() for ax in drawn["edge_weights_normal.png"].axes if ax.get_title()}
        graph = {t.get_text() for t in drawn["cell_normal.png"].axes[0].texts}
        check_report(report_main([str(retrain), "-o", str(tmp_path / "r2")]), [])
        legend = [t.get_text() for t in drawn["curves.png"].axes[0].get_legend().get_texts()]
        check_report(report_main([str(one), "-o", str(tmp_path / "r3")]), [])
        curves, times = drawn["curves.png"], drawn["epoch_time.png"]
    # nodes 2 and 3, inputs 0 = c_{k-2} and 1 = c_{k-1}: the edge weights, the cell graph and the table alike
    assert titles == {"node 2 <- c_{k-2} (0)", "node 2 <- c_{k-1} (1)", "node 3 <- c_{k-2} (0)",
                      "node 3 <- c_{k-1} (1)", "node 3 <- node 2"}
    assert {"0: $c_{k-2}$", "1: $c_{k-1}$", "2", "3", "$c_{k}$"} <= graph and "0" not in graph
    # (a table cell is escaped as data: c\_{k-2} shows as c_{k-2})
    assert "| 2 | sep_conv_3x3 from c\\_{k-2} (0) + skip_connect from c\\_{k-1} (1) |" in text
    assert "| 3 | sep_conv_3x3 from c\\_{k-2} (0) + max_pool_3x3 from node 2 |" in text
    assert "train_loss (with 0.4 x auxiliary loss)" in legend
    for fig in (curves, times):             # one epoch: the tick is 1, never 0.96, 0.98, ...
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            assert [t for t in ax.get_xticks() if lo <= t <= hi] == [1.0]
    for fig in drawn.values():
        assert plots.clipped_texts(fig) == []


def fake_protocol(folder: Path, accs: dict[int, float], images: int = 1000) -> Path:
    """A finished DARTS protocol folder as oneshot_darts/protocol.py writes one: a search per seed,
    a short retrain per cell (its result with the validation images it was scored on), the selection."""
    rows = []
    for s, acc in accs.items():
        fake_darts_search(folder / f"search-seed{s}")
        (folder / f"select-seed{s}").mkdir()
        (folder / f"select-seed{s}" / "result.json").write_text(json.dumps({"val_acc": acc, "val_images": images}))
        arch = json.loads((folder / f"search-seed{s}" / "result.json").read_text())["arch"]
        rows.append({"seed": s, "search_val_acc": 0.4, "select_val_acc": acc, "genotype": arch, "cell": "-",
                     "params": 1000 + s})
    winner = max(rows, key=lambda r: r["select_val_acc"])
    (folder / "protocol.json").write_text(json.dumps({"settings": {
        "seeds": list(accs), "select_epochs": 3, "search": {"data": "fake", "epochs": 2, "n_nodes": 2, "channels": 4,
                                                            "layers": 3, "batch_size": 8},
        "select": {"channels": 4, "layers": 3, "batch_size": 8, "val_fraction": 0.5, "seed": 0}}, "steps": {}}))
    (folder / "selection.json").write_text(json.dumps({"rule": "best short-retrain val_acc", "select_epochs": 3,
                                                       "seeds": rows, "winner": winner}))
    return folder


def test_study_report_takes_a_darts_protocol_and_shows_its_noise(tmp_path):
    hpo = _fake_experiment(tmp_path / "hpoexp4", "hpo", HPO_TRIALS, images=5000)
    protocol = fake_protocol(tmp_path / "darts-protocol", {0: 0.62, 1: 0.60, 2: 0.50})
    text = check_report(report_main(["--study", str(protocol), str(hpo), "-o", str(tmp_path / "out")]),
                        ["## 2. one-shot DARTS search: protocol `darts-protocol`", "(darts_selection.png)",
                         "(darts_seed0_cell_normal.png)"])
    se = binomial_se(0.62, 1000)
    assert f"| 0 | 0.4000 ± {binomial_se(0.4, 100):.4f} | 0.6200 ± {se:.4f} |" in text
    assert "(tied with it): seed 1. It counts validation sampling only" in text   # 0.60 within 2 x 0.0153 of 0.62
    assert f"| DARTS protocol: seed 0's cell, short-retrain validation accuracy | 62.00 ± {100 * se:.2f} % |" in text
    assert "The search itself, run with 3 seeds: validation accuracy 0.4000 ± 0.0000" in text

    # short retrains at chance: the selection is arbitrary, no tie and no rank correlation is stated
    chance = fake_protocol(tmp_path / "chance-protocol", {0: 0.11, 1: 0.10})
    text = check_report(report_main([str(chance), "-o", str(tmp_path / "out2")]), [])
    assert "**At chance: the short retrains learned nothing at this budget.**" in text
    assert f"0.1100 ± {binomial_se(0.11, 1000):.4f} (at chance)" in text and "(tied with it)" not in text
    assert "No rank correlation between search and short-retrain accuracy is stated" in text
    assert "Kendall's tau" not in text


def test_a_number_recorded_as_text_is_invalid_in_every_report_and_the_closing_table(tmp_path):
    """A string (or any non-number) where a run records a number (an accuracy, an image count, an
    epoch, its seconds, a DARTS search's skip_connects; result.json, metrics.jsonl, a protocol's
    selection) is shown as invalid and listed, never taken for the number it spells, never a
    traceback: in a retrain's and a DARTS search's report, an experiment's retrains and the
    study's closing table."""
    from tests.test_report import _fake_retrain

    hpo = _fake_experiment(tmp_path / "hpoexp5", "hpo", HPO_TRIALS, images=5000)
    runs = tmp_path / "runs"
    retrained = _fake_retrain(runs, "hpoexp5", HPO_TRIALS[0], 0, 0.6)
    (retrained / "result.json").write_text(json.dumps({"test_acc": "0.6", "test_images": 2000, "epoch": 2}))
    darts = fake_darts_search(tmp_path / "darts_search")
    lines = [json.loads(line) for line in (darts / "metrics.jsonl").read_text().splitlines()]
    lines[-1].update(normal_skip_connect="2", train_seconds="1.0", val_images="100")
    (darts / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    retrain = fake_darts_retrain(tmp_path / "darts_retrain")
    (retrain / "result.json").write_text(json.dumps({"test_acc": "0.6", "epoch": "2", "test_images": "200"}))
    (retrain / "metrics.jsonl").write_text("".join(json.dumps(
        {"epoch": e, "train_loss": 1.0 / e, "test_acc": [0.3, "0.6"][e - 1], "train_seconds": "1.0"}) + "\n"
        for e in (1, 2)))
    text = check_report(report_main(["--study", str(hpo), str(darts), str(retrain), "--retrains", str(runs), "-o",
                                     str(tmp_path / "study")]), ["## This study beside"])
    closing = text.split("## This study beside", 1)[1]
    assert "| retrain (a DARTS cell retrained): test accuracy | **invalid (0.6)** | **invalid (2)** |" in closing
    assert "its retrain (a DARTS cell retrained) of **invalid (0.6)** is not comparable" in closing
    assert "**Final test accuracy: invalid (0.6)** after **invalid (2)** epochs. (See Invalid numbers.)" in text
    for problem in ("result.json: test_acc = '0.6' is invalid ('0.6' is not a number)",
                    "metrics.jsonl line 2: test_acc = '0.6' is invalid",
                    "metrics.jsonl line 2: normal_skip_connect = '2' is invalid",
                    "metrics.jsonl line 1: train_seconds = '1.0' is invalid",
                    "result.json: test_images = '200' is invalid"):
        assert problem in text, problem
    part = text.split("Does the ranking survive", 1)[1]
    assert "| - | finished (invalid (0.6)) |" in part and "(0 finished with a valid test accuracy)" in part

    protocol = fake_protocol(tmp_path / "protocol", {0: 0.62, 1: 0.60})
    selection = json.loads((protocol / "selection.json").read_text())
    selection["winner"]["select_val_acc"] = "0.62"
    (protocol / "selection.json").write_text(json.dumps(selection))
    text = check_report(report_main(["--study", str(protocol), "-o", str(tmp_path / "study2")]), [])
    assert "| DARTS protocol: seed 0's cell, short-retrain validation accuracy | **invalid (0.62)** |" in text
    assert "selection.json, winner: select_val_acc = '0.62' is invalid" in text


# --- --top K --seeds -----------------------------------------------------------------------------

def test_top_k_retrains_with_seeds_give_mean_and_std_per_configuration(tmp_path, capsys):
    from hpo import retrain

    exp = _fake_experiment(tmp_path / "exp0seeds", "hpo", HPO_TRIALS, images=1000)
    runs = tmp_path / "runs"
    argv = ["--experiment", str(exp), "--top", "2", "--seeds", "3", "7", *RETRAIN, "--epochs", "1",
            "--out-dir", str(runs)]
    rows = retrain.main(argv)
    assert [(r["trial_id"], r["seed"], r["action"]) for r in rows] == [
        ("aaaaa", 3, "started"), ("ddddd", 3, "started"), ("aaaaa", 7, "started"), ("ddddd", 7, "started")]
    for t in ("aaaaa", "ddddd"):
        for s in (3, 7):
            run = runs / f"hpo_retrain-exp0seeds-{t}-seed{s}"
            assert json.loads((run / "origin.json").read_text())["seed"] == s
            assert f"seed: {s}\n" in (run / "config.yaml").read_text()
            assert json.loads((run / "result.json").read_text())["test_images"] > 0
    # the same command again: all four finished, skipped; other options: one line naming the field
    assert {r["action"] for r in retrain.main(argv)} == {"skipped"}
    capsys.readouterr()
    one_error_line(run_command(["hpo/retrain.py", *argv[:-2], "--lr", "0.5", "--out-dir", str(runs)]),
                   "(seed 3) was retrained in")
    for bad, needle in [(["--seed", "1"], "--seed: not allowed with --seeds"),
                        (["--seeds", "1", "1"], "--seeds: seed 1 is given twice")]:
        one_error_line(run_command(["hpo/retrain.py", *argv, *bad]), needle)
    one_error_line(run_command(["hpo/retrain.py", "--experiment", str(exp), "--seeds", "1", "2"]),
                   "--seeds: only with --experiment ID --top K")

    text = check_report(report_main([str(exp), "--retrains", str(runs), "-o", str(tmp_path / "out")]),
                        ["hpo_retrain-exp0seeds-aaaaa-seed3", "hpo_retrain-exp0seeds-ddddd-seed7"])
    accs = {t: [json.loads((runs / f"hpo_retrain-exp0seeds-{t}-seed{s}" / "result.json").read_text())["test_acc"]
                for s in (3, 7)] for t in ("aaaaa", "ddddd")}
    mean = {t: sum(v) / 2 for t, v in accs.items()}
    std = {t: abs(v[0] - v[1]) / 2 ** 0.5 for t, v in accs.items()}
    assert "4 run(s) of 2 configuration(s) (4 finished with a valid test accuracy)" in text
    assert f"| 3, 7 | {mean['aaaaa']:.4f} ± {std['aaaaa']:.4f} (n=2)" in text
    # the pooled seed-to-seed spread sets the ties (two configurations, two seeds each)
    spread = (((accs["aaaaa"][0] - accs["aaaaa"][1]) ** 2 + (accs["ddddd"][0] - accs["ddddd"][1]) ** 2) / 4) ** 0.5
    assert f"the larger of the seed-to-seed standard deviation ({spread:.4f}, pooled over the 2" in text
    k = kendall([0.5, 0.4], [mean["aaaaa"], mean["ddddd"]])
    n = json.loads((runs / "hpo_retrain-exp0seeds-aaaaa-seed3" / "result.json").read_text())["test_images"]
    if max(mean.values()) <= 0.1 + 2 * (0.1 * 0.9 / n) ** 0.5:        # one epoch of 2 batches: at chance
        assert "**At chance: the retrains learned nothing at this budget.**" in text and "Kendall's tau =" not in text
    elif k is None:
        assert "Kendall's tau is undefined" in text
    else:
        assert tau_in(text) == pytest.approx(k.tau, abs=1e-3) and f"(p = {k.p:.3g}, n = 2;" in text


def test_classic_nas_top_k_retrains_with_seeds(tmp_path, capsys):
    from classic_nas import retrain

    arc = tmp_path / "arch.json"
    arc.write_text(json.dumps({f"skip{k}": 1 for k in range(1, 7)}))
    proc = cli(["classic_nas/retrain.py", "--arc", str(arc), "--seeds", "1", "2"])
    one_error_line(proc, "--seeds: only with --experiment ID --top K")

    nas = _nas_from(tmp_path / "nohpo", tmp_path, "nasexp9", winner=None)
    runs = tmp_path / "runs"
    rows = retrain.main(["--experiment", str(nas), "--top", "1", "--seeds", "1", "2", *RETRAIN, "--epochs", "1",
                         "--out-dir", str(runs)])
    assert [(r["trial_id"], r["seed"], r["action"]) for r in rows] == [("n3xyz", 1, "started"), ("n3xyz", 2, "started")]
    for s in (1, 2):
        run = runs / f"classic_nas_retrain-nasexp9-n3xyz-seed{s}"
        assert json.loads((run / "arch.json").read_text()) == {f"skip{k}": (3 >> (k - 1)) & 1 for k in range(1, 7)}
        assert json.loads((run / "origin.json").read_text())["seed"] == s and f"seed: {s}\n" in \
            (run / "config.yaml").read_text()
    capsys.readouterr()
    one_error_line(run_command(["classic_nas/retrain.py", "--experiment", str(nas), "--top", "1", "--seeds", "1",
                                "--seed", "4"]), "--seed: not allowed with --seeds")
    text = check_report(report_main([str(nas), "--retrains", str(runs), "-o", str(tmp_path / "out")]), ["| 1, 2 |"])
    assert "2 run(s) of 1 configuration(s) (2 finished with a valid test accuracy)" in text


# --- names and parameters shown as text ----------------------------------------------------------

#: Values a parameter, a name or a message may hold that mean something in Markdown or HTML.
HOSTILE = ["two\nlines", "<img src=x onerror=alert(1)>", "[click](javascript:alert(1))", "a|b", "`tick` *b* _i_ ~~s~~",
           "end\\", "&lt;p&gt; \r\n| x |"]
HOSTILE_KEY = "<i>k|1"


def check_inert(text: str, out: Path) -> None:
    """``text`` (a report's Markdown, written into ``out``) shows what came from data as text: no
    HTML (nothing but escaped text and code spans holds a ``<`` that could open a tag), no link but
    to a file of the report, every code span closed on its line, and every row of a table with its
    header's number of cells (a line break or a ``|`` in a value splits nothing)."""
    columns = None
    for n, line in enumerate(text.splitlines(), 1):
        plain = re.sub(r"\\.", "E", line)                      # an escaped character is text
        assert plain.count("`") % 2 == 0, (n, line)             # code spans end on their line
        plain = re.sub(r"`[^`]*`", "C", plain)                  # a code span is text
        assert not re.search(r"<[A-Za-z/!?]", plain), (n, line)
        for target in re.findall(r"\]\(([^)]*)\)", plain):
            assert (out / unquote(target)).is_file(), (n, line)
        if plain.startswith("|"):
            columns = columns or plain.count("|")
            assert plain.count("|") == columns, (n, line)
        else:
            columns = None
    for value in HOSTILE:
        for part in re.split(r"\r\n|\r|\n", value)[1:]:
            assert not any(line.startswith(part.strip()) for line in text.splitlines() if part.strip()), part


def _hostile_hpo(folder: Path, **kwargs) -> Path:
    trials = [{"id": f"h{i}abc", "params": {"model": v, "optimizer": HOSTILE[-1 - i], HOSTILE_KEY: i % 2, "lr": 0.001},
               "curve": [0.2, 0.3 + i / 100], "final": 0.3 + i / 100, "status": "SUCCEEDED"}
              for i, v in enumerate(HOSTILE)]
    trials.append({"id": "i<u>|`d", "params": {"model": "m", "optimizer": "o", HOSTILE_KEY: 0, "lr": 0.01},
                   "curve": [0.1], "status": "FAILED", "error": "error: <script>alert(1)</script> | `x` [a](javascript:b)"})
    exp = _fake_experiment(folder, "hpo", trials, images=1000, **kwargs)
    con = sqlite3.connect(exp / "db" / "nni.sqlite")
    params = json.loads(con.execute("SELECT params FROM ExperimentProfile").fetchone()[0])
    params.update(experimentName="<script>n</script>\n# a heading", tuner={"name": "[t](javascript:x)"})
    con.execute("UPDATE ExperimentProfile SET params = ?", (json.dumps(params),))
    con.commit()
    con.close()
    return exp


def _no_drawing(monkeypatch) -> None:
    """Every figure function of report.plots writes a placeholder file where it would draw (tests
    about the Markdown and the files' names, not the figures)."""
    import inspect

    from report import plots

    for name, draw in vars(plots).items():
        if inspect.isfunction(draw) and not name.startswith("_") and "path" in inspect.signature(draw).parameters:
            def placeholder(*args, _signature=inspect.signature(draw), **kwargs):
                path = Path(_signature.bind(*args, **kwargs).arguments["path"])
                path.write_bytes(b"a figure")
                return path
            monkeypatch.setattr(plots, name, placeholder)


def test_every_report_shows_names_and_parameters_as_text(tmp_path, monkeypatch):
    """Parameters, parameter names, experiment and trial names, folders, error lines, a run's config
    and origin, a DARTS protocol's rule and operations, holding line breaks, ``|``, HTML, links and
    backticks, are escaped (one function, :func:`report.markdown.md`) in every kind of report: an
    experiment's, a comparison (its seed-repeat section and what differs: trial commands with their
    flags, recipes), a run folder's, a DARTS protocol's and the study (the HPO winner's ties, whether
    the retrained cell is the searched one). (The figures are not drawn here, only written as
    files: this is about the Markdown.)"""
    _no_drawing(monkeypatch)
    hpo = _hostile_hpo(tmp_path / "exp<i>|`1")
    out = tmp_path / "exp_report"
    report_main([str(hpo), "-o", str(out)])
    text = (out / "report.md").read_text()
    check_inert(text, out)
    trial_rows = text.split("## All trials, best first", 1)[1].split("\n\n")[2].splitlines()
    assert len(trial_rows) == 2 + len(HOSTILE) + 1, trial_rows     # header, separator, one row per trial
    assert "two↵lines" in text and "[click\\](javascript:alert(1))" in text and "&lt;img src=x" in text
    assert "a\\|b" in text and "&lt;i&gt;k\\|1" in text

    other = _hostile_hpo(tmp_path / "exp2[x](javascript:y)")
    report_main([str(hpo), str(other), "-o", str(tmp_path / "comparison")])
    text = (tmp_path / "comparison" / "report.md").read_text()
    check_inert(text, tmp_path / "comparison")
    assert "**A repeat, not two search strategies**" in text and "## The same search with another seed" in text
    # what differs: the trial command as the trials ran it, the recipe, with hostile flags and values
    command = {"trialCommand": "python3 trial.py ${CIFAR_AUTOML_TRIAL_FLAGS:-} <b>|`c`"}
    differs = [_hostile_hpo(tmp_path / f"exp{i}<d>|`{i}", profile=command, flags=f"--seed {i} --note <i>|`{i}`",
                            config=f"data: fake\nepochs: 3\nscheduler: '<s{i}>|`x`'\n") for i in (3, 4)]
    report_main([*map(str, differs), "-o", str(tmp_path / "differs")])
    text = (tmp_path / "differs" / "report.md").read_text()
    check_inert(text, tmp_path / "differs")
    section = text.split("## What differs", 1)[1].split("## Side by side", 1)[0]
    assert "| trial command |" in section and "| recipe |" in section
    assert "--note &lt;i&gt;\\|\\`3\\` &lt;b&gt;\\|\\`c\\`" in section and "&lt;s4&gt;\\|\\`x\\`" in section

    run = fake_darts_retrain(tmp_path / "run<b>|x")
    config = (run / "config.yaml").read_text().replace("arc: final_arch.json", 'arc: "<a>|`x`"')
    (run / "config.yaml").write_text(config + 'model: "<img src=x>"\noptimizer: "a|b\\nc"\n')
    (run / "origin.json").write_text(json.dumps({"experiment_id": "<script>e", "trial_id": "[t](javascript:x)",
                                                 "params": {"lr": "<b>|"}, "rank": "|1|", "seed": "`s`",
                                                 "stage": "x\ny"}))
    alone = fake_darts_retrain(tmp_path / "alone")
    (alone / "result.json").write_text(json.dumps({"test_acc": "<b>x</b>|", "epoch": "2\n|"}))
    for folder in (run, alone):
        report_main([str(folder), "-o", str(tmp_path / f"{folder.name}_report")])
        check_inert((tmp_path / f"{folder.name}_report" / "report.md").read_text(), tmp_path / f"{folder.name}_report")

    protocol = fake_protocol(tmp_path / "protocol`<p>", {0: 0.5, 1: 0.6})
    selection = json.loads((protocol / "selection.json").read_text())
    selection["rule"] = HOSTILE[0] + HOSTILE[2]
    for row in selection["seeds"]:
        row["params"] = HOSTILE[1]
        row["genotype"]["normal"][0][0][0] = "<b>op|x"
    (protocol / "selection.json").write_text(json.dumps(selection))
    settings = json.loads((protocol / "protocol.json").read_text())
    settings["settings"]["search"]["data"] = HOSTILE[3]
    settings["settings"]["select_epochs"] = HOSTILE[4]
    (protocol / "protocol.json").write_text(json.dumps(settings))
    (protocol / "final_arch.json").write_text(json.dumps(selection["seeds"][0]["genotype"]))
    report_main([str(protocol), "-o", str(tmp_path / "protocol_report")])
    check_inert((tmp_path / "protocol_report" / "report.md").read_text(), tmp_path / "protocol_report")

    nas = _fake_experiment(tmp_path / "nas<b>", "classic_nas", [
        {"id": f"n{i}xyz", "params": {f"skip{k}": (i >> (k - 1)) & 1 for k in range(1, 7)}, "curve": [0.1 + i / 10],
         "final": 0.1 + i / 10, "status": "SUCCEEDED",
         "extra": {"optimizer": HOSTILE[1], "lr": HOSTILE[3], "from_hpo": str(hpo), "hpo_trial": "h6abc"}}
        for i in range(3)], images=1000)
    report_main(["--study", str(hpo), str(nas), str(protocol), str(run), "-o", str(tmp_path / "study")])
    text = (tmp_path / "study" / "report.md").read_text()
    check_inert(text, tmp_path / "study")
    assert "**The classic-NAS experiment took this study's HPO winner**" in text
    # the HPO winner's ties name trials and their parameters; the cell check names files
    assert "**The HPO winner it took was tied with" in text and "h3abc (a\\|b a\\|b 1 0.001, 0.3300)" in text
    assert "**No: the retrain trained another cell (from &lt;a&gt;\\|\\`x\\`)" in text
    assert "(seed 1, " in text and "protocol\\`&lt;p&gt;/final_arch.json)" in text


# --- file names made from data ---------------------------------------------------------------------

def _report_files(out: Path) -> tuple[str, list[str]]:
    """The Markdown of the report in ``out`` and the files its marker lists, checked: ``out`` holds
    plain files only (nothing went into a subfolder), exactly those, and every link names one."""
    text = (out / "report.md").read_text()
    listed = json.loads((out / ".report.json").read_text())["files"]
    assert all(p.is_file() and not p.is_symlink() for p in out.iterdir()), sorted(out.iterdir())
    assert {p.name for p in out.iterdir()} == {*listed, ".report.json"}
    for target in re.findall(r"\]\(([^)]*)\)", text):
        assert "/" not in unquote(target) and (out / unquote(target)).is_file(), target
    return text, listed


def test_file_names_made_from_data_stay_in_the_report_folder_and_apart(tmp_path, monkeypatch):
    """Parameter names and experiment ids holding ``/``, ``..`` or characters a file name cannot
    hold name figures and exports (``effect_<param>.png``, ``<id>_trials.csv``) and the study's
    default folder through one function, report.markdown.file_part: every file is written into the
    report folder, two values never share a file (``a/b`` and ``a_b``), and each link names the file."""
    from report.markdown import file_part

    assert file_part("lr") == "lr" and file_part("a_b") == "a_b" and file_part("a/b") != "a_b"
    assert file_part("a/b").startswith("a_b-") and file_part("..") not in ("", ".", "..")
    assert len(file_part("x" * 300)) <= 80 and re.fullmatch(r"[A-Za-z0-9._-]+", file_part("é/\x00:*?"))
    assert file_part(file_part("a/b")) != file_part("a/b")   # a name shaped like a hashed one is hashed too

    _no_drawing(monkeypatch)
    keys = ["lr/../../x", "lr_.._.._x", "..", "a\x00b*"]      # the first two map to one name but for the hash
    trials = [{"id": f"f{i}abc", "params": {k: (i + j) % 2 for j, k in enumerate(keys)}, "curve": [0.3 + i / 100],
               "final": 0.3 + i / 100, "status": "SUCCEEDED"} for i in range(4)]
    exps = []
    for folder, exp_id in (("exp0names", "../a/b"), ("exp0plain", "a_b")):
        exp = _fake_experiment(tmp_path / "exps" / folder, "hpo", trials, images=1000)
        con = sqlite3.connect(exp / "db" / "nni.sqlite")
        con.execute("UPDATE ExperimentProfile SET id = ?", (exp_id,))
        con.commit()
        con.close()
        exps.append(exp)

    report_main([str(exps[0]), "-o", str(tmp_path / "one")])
    text, listed = _report_files(tmp_path / "one")
    effects = [f for f in listed if f.startswith("effect_")]
    assert len(effects) == len(keys) and all(f"]({quote(f)})" in text for f in effects), effects
    assert "(trials.csv)" in text

    report_main([*map(str, exps), "-o", str(tmp_path / "both")])
    text, listed = _report_files(tmp_path / "both")
    exports = sorted(f for f in listed if f.endswith("_trials.csv"))
    assert len(exports) == 2 and "a_b_trials.csv" in exports and all(f"]({quote(f)})" in text for f in exports)
    assert len([f for f in listed if f.endswith("_trials.png")]) == 2
    shutil.copytree(exps[1], tmp_path / "exps" / "exp0copy")             # one id twice: each its own files
    report_main([str(exps[1]), str(tmp_path / "exps" / "exp0copy"), "-o", str(tmp_path / "copies")])
    text, listed = _report_files(tmp_path / "copies")
    assert len([f for f in listed if f.endswith("_trials.csv")]) == 2 and "a_b_trials.csv" not in listed

    monkeypatch.setenv("CIFAR_AUTOML_RUNS", str(tmp_path / "runs"))
    path = report_main(["--study", str(exps[0])])
    assert path.parent.parent == tmp_path / "runs" and path.parent.name == f"study-{file_part('../a/b')}"
    _report_files(path.parent)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["both", "copies", "exps", "one", "runs"]
