"""``--top K`` (experiments/top_k.py, through hpo/retrain.py): one folder per retrained trial, reused
only with the options it was trained with, one process per folder, nothing removed that it did not
write, and one line per line under torchrun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import BIN, RETRAIN, cli, one_error_line, run, state
from tests.test_report import HPO_TRIALS, _fake_experiment


def test_top_k_removes_nothing_it_did_not_write(tmp_path):
    exp = _fake_experiment(tmp_path / "exp0mine", "hpo", HPO_TRIALS)
    folder = tmp_path / "runs" / "hpo_retrain-exp0mine-aaaaa"     # the retrain's name, but someone else's files
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("mine\n")
    before = state(tmp_path / "runs")
    one_error_line(run(["hpo/retrain.py", "--experiment", str(exp), "--top", "1", *RETRAIN, "--out-dir",
                        str(tmp_path / "runs")]), "holds metrics.jsonl but no config.yaml: not a retrain folder")
    assert state(tmp_path / "runs") == before


@pytest.mark.parametrize("writing", ["", ".config.yaml.x1y2z3.tmp"], ids=["locked", "writing its config"])
def test_a_retrain_folder_held_by_another_process_is_left_to_it(tmp_path, writing):
    from filelock import FileLock

    exp = _fake_experiment(tmp_path / "exp0lock", "hpo", HPO_TRIALS)
    runs = tmp_path / "runs"
    folder = runs / "hpo_retrain-exp0lock-aaaaa"
    folder.mkdir(parents=True)
    if writing:    # the other process is caught between its lock and its config.yaml (its atomic write's file)
        (folder / writing).write_text("seed: 0\n")
    lock = FileLock(str(folder / ".lock"))
    lock.acquire()                               # another --top K is training trial aaaaa right now
    try:
        proc = cli(["hpo/retrain.py", "--experiment", exp, "--top", "1", *RETRAIN, "--out-dir", runs])
    finally:
        lock.release()
    assert proc.returncode == 0, proc.stderr
    assert "trial aaaaa: another process is retraining it" in proc.stdout and "skipped here" in proc.stdout
    assert json.loads(proc.stdout.splitlines()[-2])[0]["action"] == "busy"
    assert sorted(p.name for p in folder.iterdir()) == sorted({".lock", writing} - {""}), \
        "it wrote into the other process's folder"


def test_two_top_k_started_together_never_mix_a_folder(tmp_path):
    exp = _fake_experiment(tmp_path / "exp0twice", "hpo", HPO_TRIALS)
    runs = tmp_path / "runs"
    args = [sys.executable, "hpo/retrain.py", "--experiment", str(exp), "--top", "2", *RETRAIN, "--epochs", "2",
            "--out-dir", str(runs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    for trial in ("aaaaa", "ddddd"):
        folder = runs / f"hpo_retrain-exp0twice-{trial}"
        epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2], f"{folder}: epochs {epochs} (two processes trained into it)"
        assert (folder / "train.log").read_text().count("run folder") == 1
    trained = [line for out, _ in outs for line in out.splitlines() if "retraining in" in line]
    assert len(trained) == 2, trained          # each trial trained once, by one of the two


def test_rerun_with_other_options_is_an_error_naming_them_or_a_new_folder(tmp_path):
    from hpo import retrain

    exp = _fake_experiment(tmp_path / "exp0opts", "hpo", HPO_TRIALS)
    runs = tmp_path / "runs"
    base = ["--experiment", str(exp), "--top", "1", *RETRAIN, "--out-dir", str(runs)]
    assert retrain.main(base)[0]["action"] == "started"
    folder = runs / "hpo_retrain-exp0opts-aaaaa"
    before = state(runs)
    proc = cli(["hpo/retrain.py", *base, "--epochs", "2", "--lr", "0.05"])
    one_error_line(proc, "trial aaaaa was retrained in", "epochs 1 there, 2 now", "lr 0.001 there, 0.05 now",
                   "--new-folder")
    assert state(runs) == before
    # the same options: reused; options that say only how it runs (device, threads, progress): reused too
    assert retrain.main([*base, "--threads", "1"])[0]["action"] == "skipped"
    # --new-folder: a second folder with the new options, and each is reused with its own options
    rows = retrain.main([*base, "--epochs", "2", "--new-folder"])
    assert rows[0]["action"] == "started" and rows[0]["run_dir"] == str(folder) + "-2"
    assert retrain.main([*base, "--epochs", "2"])[0]["run_dir"] == str(folder) + "-2"
    assert retrain.main(base)[0]["run_dir"] == str(folder)
    # a killed retrain is resumed only with its own options, never silently with other ones
    (folder / "result.json").unlink()
    before = state(runs)
    one_error_line(run(["hpo/retrain.py", *base, "--weight-decay", "0.01"]), "weight_decay 0.0005 there, 0.01 now")
    assert state(runs) == before
    assert retrain.main(base)[0]["action"] == "resumed"


def check_top_k_under_torchrun(exp_dir: Path, out_dir: Path, k: int = 1) -> None:
    """``--top K`` of the experiment ``exp_dir`` under real ``torchrun`` with two processes: every
    line once, one folder per trial, its epochs once each."""
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "hpo/retrain.py", "--experiment",
                           str(exp_dir), "--top", str(k), *RETRAIN, "--epochs", "2", "--out-dir", str(out_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), f"lines printed twice:\n{proc.stdout}"
    for folder in out_dir.iterdir():
        epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2], (folder, epochs)


@pytest.mark.e2e
def test_top_k_under_torchrun_prints_each_line_once(tmp_path):
    check_top_k_under_torchrun(_fake_experiment(tmp_path / "exp0torchrun", "hpo", HPO_TRIALS), tmp_path / "runs")


@pytest.mark.e2e   # real torchrun process groups
def test_top_k_refused_under_torchrun_is_one_line_and_writes_nothing(tmp_path):
    """``--top K`` under torchrun decides about each folder on rank 0 (experiments.top_k): when a folder
    was retrained with other options, every rank stops with rank 0's check, so there is one
    ``error:`` line (rank 0's), no rank's traceback, and nothing is written."""
    exp = _fake_experiment(tmp_path / "exp0torchrun", "hpo", HPO_TRIALS)
    out = tmp_path / "runs"
    args = ["hpo/retrain.py", "--experiment", str(exp), "--top", "1", "--data", "fake", "--max-batches", "1",
            "--batch-size", "16", "--eval-batch-size", "100", "--no-progress", "--device", "cpu", "--out-dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run([sys.executable, *args, "--epochs", "1"], env=env, cwd=REPO, capture_output=True,
                           text=True, timeout=240)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    res = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", *args, "--epochs", "2"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert res.returncode != 0 and res.stdout == "", res.stdout[-2000:]
    lines = res.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "with other options (epochs 1 there, 2 now)" in errors[0], res.stderr[-3000:]
    assert not any(line.startswith("[rank") for line in lines), res.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
