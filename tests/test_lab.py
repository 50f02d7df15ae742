"""The lab driver (``python -m lab``, lab/): the budgets' sizes against what each command resolves, the
nnictl configs it writes, its record, the mirror to a lab folder on a FUSE mount and the restore after a
reset, the DARTS retrain's resume rule, the estimate and its warning, the timing probe, the figures
shown. The whole lab in the notebook, killed and reset mid-way: tests/test_notebook.py."""
from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from core.config import add_config_arguments, config_from_args
from core.errors import UserError
from experiments.nni_config import check_experiment_config
from lab import estimate as est
from lab import mirror as mirroring
from lab import plan
from lab.show import figures, show
from lab.stages import DARTS_RETRAIN, retrain_command, run_stage, write_config
from lab.state import RECORD, Lab
from tests.conftest import REPO

FAKE_TRAIN, FAKE_TEST = 2000, 500


def open_lab(tmp_path: Path, budget: str = "smoke", work: Path | None = None) -> Lab:
    return Lab(tmp_path / "lab", work).open(budget, None)


# --- the budgets: what the commands resolve is what the estimate counts ----------------------------

def resolve(cls: type, argv: list[str], base: dict | None = None):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, cls)
    args, _ = parser.parse_known_args(argv)
    return config_from_args(cls, args, base=base)


def train_images(cfg, data: str) -> tuple[int, int, int]:
    """Training images per epoch, validation images and test images of ``cfg`` on ``data``."""
    n, test = (FAKE_TRAIN, FAKE_TEST) if data == "fake" else (plan.CIFAR10_TRAIN, plan.CIFAR10_TEST)
    val = round(n * cfg.val_fraction) if cfg.val_fraction > 0 else 0
    train = cfg.subset or n - val
    return train, (cfg.val_subset or val), test


def trial_argv(exp: plan.Experiment) -> tuple[list[str], Path]:
    """An experiment's trial command (after ``python3 trial.py``) with the budget's trial flags, absolute."""
    config = yaml.safe_load((REPO / exp.config).read_text())
    code = (REPO / exp.config).parent / config["trialCodeDirectory"]
    words = config["trialCommand"].replace("${CIFAR_AUTOML_TRIAL_FLAGS:-}", " ".join(exp.size.flags())).split()[2:]
    if "--config" in words:
        i = words.index("--config") + 1
        words[i] = str((code / words[i]).resolve())
    return words, code


def check_size(cfg, size: plan.Size, data: str, eval_images: int | None = None) -> None:
    assert (cfg.epochs, cfg.batch_size, cfg.max_batches) == (size.epochs, size.batch_size, size.max_batches)
    train, val, _test = train_images(cfg, data)
    assert train == size.train_images
    evaluated = val if eval_images is None else eval_images
    if cfg.max_batches:
        evaluated = min(evaluated, cfg.max_batches * cfg.eval_batch_size)
    assert evaluated == size.eval_images


@pytest.mark.parametrize("name", plan.BUDGETS)
def test_each_budget_states_the_sizes_its_commands_resolve(name, monkeypatch):
    from classic_nas.trial import TrialConfig
    from hpo.retrain import RetrainConfig as HpoRetrainConfig
    from hpo.trial import HpoTrialConfig
    from oneshot_darts.retrain import RetrainConfig
    from oneshot_darts.search_trainer import SearchConfig

    monkeypatch.chdir(REPO)                 # the lab runs its commands in the repository
    b = plan.BUDGETS[name]
    data = b.data
    hpo_words, _ = trial_argv(b.hpo)
    check_size(resolve(HpoTrialConfig, [*hpo_words, "--data", data]), b.hpo.size, data)
    nas_words, _ = trial_argv(b.classic_nas)
    check_size(resolve(TrialConfig, [*nas_words, "--data", data]), b.classic_nas.size, data)
    check_size(resolve(HpoRetrainConfig, [*b.hpo_retrain.flags(), "--data", data]), b.hpo_retrain, data, eval_images=0)
    search = resolve(SearchConfig, [*b.search.flags(), "--data", data])
    check_size(search, b.search, data)
    select_argv = [*(["--config", b.select_config] if b.select_config else []), "--data", data,
                   "--epochs", str(b.select.epochs), "--max-batches", str(search.max_batches),
                   "--eval-batch-size", str(search.eval_batch_size)]
    # as the protocol builds it: its validation split under the YAML, the search's batches and data
    select = resolve(RetrainConfig, select_argv, base={"val_fraction": 0.1})
    check_size(select, b.select, data)
    retrain = resolve(RetrainConfig, [*b.retrain.flags(), "--data", data])
    check_size(retrain, b.retrain, data, eval_images=train_images(retrain, data)[2])
    assert all(plan.describe(b, s) for s in plan.STAGES)


@pytest.mark.parametrize("name", plan.BUDGETS)
def test_the_experiment_configs_it_writes_pass_nnis_checks_with_absolute_paths(tmp_path, name):
    lab = open_lab(tmp_path, name)
    for stage in plan.EXPERIMENT_STAGES:
        path = write_config(lab, stage)
        config = check_experiment_config(path)
        exp = getattr(lab.budget, stage)
        assert config["experimentWorkingDirectory"] == str(lab.experiments)
        assert (config["maxTrialNumber"], config["trialConcurrency"]) == (exp.trials, exp.concurrency)
        assert Path(config["trialCodeDirectory"]).is_absolute() and Path(config["trialCodeDirectory"]).is_dir()
        if "searchSpaceFile" in config:
            assert Path(config["searchSpaceFile"]).is_file()
        for key, value in exp.overrides.items():
            assert config.get(key) == value if value is not None else key not in config
    lab.close()


def test_the_lab_grid_and_the_smoke_space(tmp_path):
    lab = open_lab(tmp_path, "lab")
    config = yaml.safe_load(write_config(lab, "hpo").read_text())
    space = json.loads((REPO / "hpo" / "search_space.json").read_text())
    grid = 1
    for choice in space.values():
        grid *= len(choice["_value"])
    assert config["tuner"] == {"name": "GridSearch"} and "assessor" not in config and config["maxTrialNumber"] == grid
    lab.close()
    smoke = open_lab(tmp_path / "s", "smoke")
    config = yaml.safe_load(write_config(smoke, "hpo").read_text())
    assert config["searchSpace"]["model"]["_value"] == list(plan.FAST_MODELS) and "searchSpaceFile" not in config
    smoke.close()


# --- the record ----------------------------------------------------------------------------------

def test_a_lab_folder_keeps_its_budget_and_refuses_foreign_folders_and_a_second_command(tmp_path):
    with open_lab(tmp_path) as lab:
        assert json.loads((tmp_path / "lab" / RECORD).read_text())["budget"] == "smoke"
        with pytest.raises(UserError, match="another lab command is running"):
            Lab(tmp_path / "lab").open(None, None)
    with pytest.raises(UserError, match="started with 'smoke'"):
        Lab(tmp_path / "lab").open("quick", None)
    with pytest.raises(UserError, match="synthetic data"):
        Lab(tmp_path / "other").open("smoke", "cifar10")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="holds other files"):
        Lab(tmp_path / "mine").open("smoke", None)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]          # nothing written there
    with pytest.raises(UserError, match="--work-dir: .* holds other files"):
        Lab(tmp_path / "drive", tmp_path / "mine").open("smoke", None)
    with pytest.raises(UserError, match="--budget: required"):
        Lab(tmp_path / "new").open(None, None)
    with Lab(tmp_path / "lab").open(None, None) as lab:      # later commands may leave the budget out
        assert lab.budget.name == "smoke"


def test_a_stage_waits_for_the_stages_it_needs(tmp_path):
    with open_lab(tmp_path) as lab:
        with pytest.raises(UserError, match="needs hpo finished first"):
            run_stage(lab, "classic_nas", 8080)
        lab.stage("hpo").update(status="done", report="reports/hpo", finished="then")
        run_stage(lab, "hpo", 8080)     # finished: read, not run (no nnictl, no port)


def test_cli_mistakes_are_one_line(tmp_path):
    for argv, message in ((["start", "hpo_retrain"], "only the experiment stages"), (["run"], "name a stage"),
                          (["run", "hpo", "--no-such-flag"], "unrecognized arguments: --no-such-flag (see python -m lab "
                                                             "--help)")):
        proc = subprocess.run([sys.executable, "-m", "lab", "--lab-dir", str(tmp_path / "l"), "--budget", "smoke",
                               *argv], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and message in proc.stderr
        assert "Traceback" not in proc.stderr


# --- the mirror ----------------------------------------------------------------------------------

def test_mirror_copies_what_changed_removes_what_went_and_restores_a_wiped_folder(tmp_path):
    src, dst = tmp_path / "work", tmp_path / "drive"
    (src / "runs" / "a").mkdir(parents=True)
    (src / "runs" / "a" / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (src / "reports" / "hpo").mkdir(parents=True)
    (src / "reports" / "hpo" / "old.png").write_bytes(b"png")
    (src / "runs" / "a" / ".lock").write_text("")
    (src / "runs" / "a" / ".checkpoint.pt.x.tmp").write_text("half")
    (src / "runs" / "link").symlink_to(src / "runs" / "a")
    (src / "data" / ".cifar-10-download-x").mkdir(parents=True)   # a download under way
    (src / "data" / ".cifar-10-download-x" / "part").write_bytes(b"half")
    assert mirroring.mirror(src, dst).copied == 2
    assert not (dst / "data").exists()
    assert not (dst / "runs" / "a" / ".lock").exists() and not (dst / "runs" / "link").exists()
    assert not (dst / "runs" / "a" / ".checkpoint.pt.x.tmp").exists()
    first = mirroring.mirror(src, dst)
    assert first.copied == 0                                    # nothing changed
    (dst / mirroring.MANIFEST).write_text("{}")
    assert mirroring.mirror(src, dst, first.manifest).copied == 0   # the manifest kept in memory is used
    (dst / mirroring.MANIFEST).write_text(json.dumps(first.manifest))
    with open(src / "runs" / "a" / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2}\n')
    (src / "reports" / "hpo" / "old.png").unlink()              # a report replaced as a whole
    done = mirroring.mirror(src, dst)
    assert (done.copied, done.removed) == (1, 1)
    assert (dst / "runs" / "a" / "metrics.jsonl").read_text().count("epoch") == 2
    assert not (dst / "reports").exists()                       # emptied folders go too
    mtime = (src / "runs" / "a" / "metrics.jsonl").stat().st_mtime_ns
    wiped = tmp_path / "new-runtime"
    assert mirroring.restore(dst, wiped) == 1
    assert (wiped / "runs" / "a" / "metrics.jsonl").stat().st_mtime_ns == mtime
    assert mirroring.mirror(wiped, dst).copied == 0             # restored files are not copied back


def _db(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("CREATE TABLE IF NOT EXISTS t (i INTEGER, pad TEXT)")
    return con


def test_a_database_copied_while_another_process_writes_it_is_consistent_and_the_writer_never_fails(tmp_path):
    src, dst = tmp_path / "work", tmp_path / "drive"
    (src / "db").mkdir(parents=True)
    _db(src / "db" / "nni.sqlite").close()
    stop, errors, started = threading.Event(), [], threading.Event()

    def write():                             # as NNI 3.0's manager: node-sqlite3's 1 s busy timeout
        con = _db(src / "db" / "nni.sqlite")
        con.execute("PRAGMA busy_timeout = 1000")
        k = 0
        while not stop.is_set():
            k += 1
            try:                             # a transaction of many pages: a copy taken meanwhile tears it
                con.execute("BEGIN")
                for j in range(40):
                    con.execute("INSERT INTO t VALUES (?, ?)", (k * 100 + j, "x" * 4000))
                    con.execute("INSERT INTO t VALUES (?, ?)", (-(k * 100 + j), "y" * 4000))
                con.execute("COMMIT")
            except sqlite3.Error as exc:     # SQLITE_BUSY: a reader held its lock too long
                errors.append(exc)
                con.execute("ROLLBACK")
            started.set()
            time.sleep(0.001)
        con.close()

    writer = threading.Thread(target=write)
    writer.start()
    started.wait(10)
    copies = 0
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            copies += mirroring.mirror(src, dst).copied
            if (dst / "db" / "nni.sqlite").is_file():
                check = sqlite3.connect(f"file:{dst / 'db' / 'nni.sqlite'}?mode=ro", uri=True)
                assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                pos, neg = check.execute("SELECT SUM(i > 0), SUM(i < 0) FROM t").fetchone()
                assert pos == neg                # both rows of every transaction, or neither
                check.close()
    finally:
        stop.set()
        writer.join()
    assert not errors and copies >= 2


def test_on_fuse_reads_the_mount_of_the_path():
    mounts = ("overlay / overlay rw 0 0\n/dev/sda1 /content ext4 rw 0 0\n"
              "drive /content/drive fuse.drive rw 0 0\n")
    assert mirroring.on_fuse("/content/drive/MyDrive/lab", mounts)
    assert not mirroring.on_fuse("/content/lab", mounts) and not mirroring.on_fuse("/content/drivelab", mounts)


def test_a_lab_on_drive_works_in_a_local_folder():
    from lab.state import LOCAL_WORK

    lab = Lab("/content/drive/MyDrive/cifar-automl-lab")
    assert lab.mirrored and lab.work.parent == LOCAL_WORK and lab.work.name.startswith("cifar-automl-lab-")


def test_a_lab_on_a_mirrored_folder_restores_its_working_folder_after_a_reset(tmp_path):
    drive, work = tmp_path / "drive", tmp_path / "local"
    with Lab(drive, work).open("smoke", None) as lab:
        lab.stage("hpo").update(status="done", report="reports/hpo")
        (work / "reports" / "hpo").mkdir(parents=True)
        (work / "reports" / "hpo" / "report.md").write_text("# r\n")
        lab.save()
    assert json.loads((drive / RECORD).read_text())["stages"]["hpo"]["status"] == "done"
    import shutil

    shutil.rmtree(work)                                          # the reset
    with Lab(drive, work).open("smoke", None) as lab:
        assert lab.status("hpo") == "done" and (work / "reports" / "hpo" / "report.md").read_text() == "# r\n"


# --- resuming the DARTS retrain -------------------------------------------------------------------

def test_the_darts_retrain_resumes_a_cut_run_from_its_checkpoint(tmp_path):
    with open_lab(tmp_path) as lab:
        argv, _ = retrain_command(lab)
        assert "--resume" not in argv and argv[argv.index("--arc") + 1].endswith("darts-protocol/final_arch.json")
        base = lab.runs / DARTS_RETRAIN
        (base / f"{DARTS_RETRAIN}-20260101-000000").mkdir(parents=True)      # cut before its first epoch
        cut = base / f"{DARTS_RETRAIN}-20260101-000100"
        cut.mkdir()
        (cut / "checkpoint.pt").write_bytes(b"x")
        argv, what = retrain_command(lab)
        assert argv[-2:] == ["--resume", str(cut / "checkpoint.pt")] and "continuing" in what


# --- the estimate --------------------------------------------------------------------------------

def test_seconds_counts_start_up_steps_and_evaluation():
    size = plan.Size(epochs=3, batch_size=10, train_images=100, eval_images=30)
    work = est.Work("x", runs=4, size=size, concurrency=2)
    assert est.seconds(work, est.Timing(step_s=0.5, other_s=7)) == pytest.approx(4 * (7 + 3 * (10 + 1) * 0.5) / 2)


def test_the_estimate_warns_when_the_runtime_ends_first_and_counts_only_what_is_left(tmp_path, monkeypatch):
    with open_lab(tmp_path / "smoke") as lab:
        monkeypatch.setattr(est, "runtime_age", lambda: 60.0)
        assert est.estimate(lab, "hpo") == (None, ["hpo: the smoke budget takes seconds per stage; not timed",
                                                   "this runtime has been up 1 min 00 s; Colab ends a runtime after "
                                                   "at most 12 h (an idle one sooner)"])
    with open_lab(tmp_path / "quick", "quick") as lab:
        monkeypatch.setattr(est, "timings", lambda lab_, todo: {est._key(w): est.Timing(0.1, 0.0) for w in todo})
        monkeypatch.setattr(est, "runtime_age", lambda: 11.95 * 3600)     # 3 minutes left
        total, lines = est.estimate(lab, "darts_retrain")
        assert total == pytest.approx(5 * (521 + 10_000 / 96 / 3) * 0.1)   # about 4.6 minutes
        assert any(line.startswith("this runtime has been up 11 h 57 min") for line in lines)
        assert any(line.startswith("warning: darts_retrain will not finish") for line in lines)
        monkeypatch.setattr(est, "runtime_age", lambda: 60.0)
        assert not any("warning" in line for line in est.estimate(lab, "darts_retrain")[1])
        hpo_total = est.estimate(lab, "hpo")[0]
        # half of the HPO trials finished: half the estimate
        monkeypatch.setattr(est, "left", lambda lab_, stage, work: 0.5)
        assert est.estimate(lab, "hpo")[0] == pytest.approx(hpo_total / 2)
        lab.stage("hpo")["status"] = "done"
        assert est.estimate(lab, "hpo")[0] is None

        def fails(lab_, todo):
            raise UserError("the timing probe `x` failed (exit 2):\nerror: out of memory")

        monkeypatch.setattr(est, "timings", fails)                # a failed probe: no estimate, the lab goes on
        assert est.estimate(lab, "darts_retrain")[1][0].startswith("darts_retrain: no estimate: the timing probe")


def test_left_counts_the_epochs_a_cut_retrain_finished(tmp_path):
    with open_lab(tmp_path, "quick") as lab:
        run = lab.runs / DARTS_RETRAIN / f"{DARTS_RETRAIN}-1"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')   # a line cut by the kill
        work = est.works(lab, "darts_retrain")[0]
        assert est.left(lab, "darts_retrain", work) == pytest.approx(1 - 2 / lab.budget.retrain.epochs)


def test_the_probe_times_steps_of_the_stages_command(tmp_path):
    with open_lab(tmp_path) as lab:
        work = est.works(lab, "hpo_retrain")[0]
        times = est.timings(lab, [work])
        timing = times[est._key(work)]
        assert timing.step_s > 0 and timing.other_s > 0
        cached = json.loads((lab.work / est.PROBES).read_text())[est.device_name()]
        assert cached[est._key(work)]["step_s"] == timing.step_s
        assert est.timings(lab, [work]) == times                  # cached: not timed again


# --- what the notebook shows -----------------------------------------------------------------------

def test_show_lists_the_key_figures_in_the_reports_order(tmp_path):
    with open_lab(tmp_path) as lab:
        report = lab.report_dir("hpo")
        report.mkdir(parents=True)
        for name in ("budget.png", "trials.png", "effect_lr.png"):
            (report / name).write_bytes(b"png")
        (report / "report.md").write_text("![a](trials.png)\n![b](effect_lr.png)\n![c](budget.png)\n![d](curves.png)\n")
        (report / "trials.csv").write_text("rank,trial_id,final,final_se,params_lr\n"
                                           "2,b,0.1,0.01,0.1\n1,a,0.2,0.01,0.01\n")
        assert figures(report, "hpo") == [report / "trials.png", report / "budget.png"]
        lab.stage("hpo").update(status="done", report="reports/hpo", experiment="e1")
        text = show(lab, "hpo")
        assert text.index("   1  a") < text.index("   2  b") and "lr=0.01" in text
        assert text.splitlines()[-2:] == [f"figure: {report / 'trials.png'}", f"figure: {report / 'budget.png'}"]


@pytest.mark.parametrize("name", plan.BUDGETS)
def test_every_probe_command_is_a_valid_command_line(tmp_path, name):
    """The timing probes of the stage commands (the HPO models' probe: the test above) take their flags."""
    with open_lab(tmp_path, name) as lab:
        for stage in plan.STAGES:
            for work in est.works(lab, stage):
                if work.probe.startswith("model:"):
                    continue
                argv = est.probe_command(lab, work, tmp_path)
                proc = subprocess.run([*argv, "--print-config"], cwd=REPO, env=lab.env(), capture_output=True,
                                      text=True, timeout=300)
                assert proc.returncode == 0, (argv, proc.stderr[-2000:])
                cfg = yaml.safe_load(proc.stdout)
                assert (cfg["epochs"], cfg["max_batches"]) == (2, min(est.PROBE_STEPS, work.size.max_batches or 3))
                assert cfg["batch_size"] == work.size.batch_size and cfg["out_dir"] == str(tmp_path)


def test_a_mirror_removes_nothing_outside_its_folder_whatever_its_manifest_says(tmp_path):
    """The manifest names what the mirror copied; one edited to name a path outside the mirror
    (``..``, absolute) never makes it remove that file."""
    from lab.mirror import MANIFEST, mirror

    src, dst = tmp_path / "src", tmp_path / "lab" / "dst"
    src.mkdir()
    dst.mkdir(parents=True)
    outside = tmp_path / "lab" / "notes.txt"          # beside the mirror; nothing of that name in src's parent
    outside.write_text("the user's")
    (dst / MANIFEST).write_text(json.dumps({"../notes.txt": [1, 1], str(outside): [1, 1]}))
    mirror(src, dst)
    assert outside.read_text() == "the user's"
