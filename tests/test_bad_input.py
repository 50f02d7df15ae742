"""No silent wrong result, no traceback for bad input.

Each command-line case asserts the exit status, that stderr is one line with no traceback, and
that nothing half-written or stale is left behind.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from core import data as data_mod
from core.checkpoint import load_checkpoint, save_checkpoint
from core.config import TrainConfig, from_dict, read_yaml
from core.data import load_source
from core.errors import UserError
from core.run_folder import Run
from tests.conftest import REPO
from tests.helpers import FAST, image_folder, one_error_line, run


# --- an epoch that trains on no image --------------------------------------------------------

def test_training_set_smaller_than_one_batch_is_an_error_not_a_result(tmp_path):
    out = tmp_path / "runs"
    proc = run(["-m", "core.train_model", "--model", "shufflenetg2", "--data", "fake", "--subset", "100",
                "--epochs", "2", "--max-batches", "2", "--out-dir", str(out), "--device", "cpu"])
    one_error_line(proc, "batch_size: 128 is more than the 100 training images", "lower --batch-size")
    assert not out.exists()
    # the DARTS search: a batch larger than its architecture half (fake data: 2,000 images, half 1,000... of 64)
    proc = run(["oneshot_darts/search.py", "--config", "configs/darts_search_smoke.yml", "--subset", "40",
                "--val-subset", "10", "--batch-size", "16", "--out-dir", str(out)])
    one_error_line(proc, "batch_size: 16 is more than the 10 architecture-half images")
    assert not out.exists()


# --- the decode cache follows the images, not their names -------------------------------------

def test_overwritten_images_are_decoded_again(tmp_path):
    folder = image_folder(tmp_path / "d", seed=0)
    first, _, _ = load_source(str(folder), str(tmp_path / "root"))
    image_folder(folder, seed=1)      # the same names, other pixels
    second, _, _ = load_source(str(folder), str(tmp_path / "root"))
    assert not torch.equal(first.images, second.images), "the stale cache was used"
    fresh, _, _ = load_source(str(folder), str(tmp_path / "other_root"))
    assert torch.equal(second.images, fresh.images)


# --- two layouts in one archive or folder ------------------------------------------------------

@pytest.mark.parametrize("kind", ["folder", "archive"])
def test_two_data_sets_under_different_prefixes_are_an_error(tmp_path, kind):
    image_folder(tmp_path / "both" / "copy_a")
    image_folder(tmp_path / "both" / "copy_b")
    source = tmp_path / "both"
    if kind == "archive":
        source = tmp_path / "both.tar.gz"
        with tarfile.open(source, "w:gz") as tar:
            tar.add(tmp_path / "both", arcname="both")
    with pytest.raises(UserError, match=r"more than one train/ and test/ layout \('both/copy_a', 'both/copy_b'\)"
                       if kind == "archive" else r"more than one train/ and test/ layout \('copy_a', 'copy_b'\)"):
        load_source(str(source), str(tmp_path / "root"))
    assert not (tmp_path / "root" / "cache").exists()


# --- NaN and infinities -------------------------------------------------------------------------

@pytest.mark.parametrize("flag,value", [("--momentum", "nan"), ("--lr", "inf"), ("--weight-decay", "-inf"),
                                        ("--grad-clip", "nan"), ("--val-fraction", "nan")])
def test_non_finite_floats_are_refused(tmp_path, flag, value):
    proc = run(["-m", "core.train_model", *FAST, f"{flag}={value}", "--out-dir", str(tmp_path / "runs")])
    one_error_line(proc, f"{flag[2:].replace('-', '_')}: {float(value)!r} is not allowed; it must be a finite number")
    assert not (tmp_path / "runs").exists()


def test_result_files_are_strict_json():
    from core.run_folder import to_json

    assert json.loads(to_json({"val_loss": float("nan"), "x": [float("inf"), 1.0]})) == {"val_loss": None,
                                                                                         "x": [None, 1.0]}


# --- two runs at the same instant ------------------------------------------------------------

def test_runs_created_at_the_same_instant_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-000000")
    folders: list[Path] = []
    barrier = threading.Barrier(8)

    def create():
        barrier.wait()
        folders.append(Run.create(tmp_path, "same", {"seed": 0}).dir)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(folders)) == 8 and all((f / "config.yaml").is_file() for f in folders)


# --- checkpoints that are edited or belong to another command ---------------------------------

def _smoke_run(tmp_path, *extra):
    out = tmp_path / "runs"
    proc = run(["-m", "core.train_model", "--model", "shufflenetg2", *FAST, "--out-dir", str(out), *extra])
    assert proc.returncode == 0, proc.stderr
    return next(out.iterdir())


def test_edited_or_foreign_checkpoints_are_refused_before_anything_is_written(tmp_path):
    run_dir = _smoke_run(tmp_path)
    checkpoint = run_dir / "checkpoint.pt"
    state = load_checkpoint(checkpoint)
    state["config"]["epochs"] = 3                 # an edit: the schedule was built for 1
    edited = tmp_path / "edited" / "checkpoint.pt"
    save_checkpoint(edited, state)
    proc = run(["-m", "core.train_model", "--resume", str(edited)])
    one_error_line(proc, "its config says epochs 3 but its schedule was built for 1")
    assert sorted(p.name for p in edited.parent.iterdir()) == ["checkpoint.pt"]
    log_before = (run_dir / "train.log").read_text()
    proc = run(["hpo/retrain.py", "--resume", str(checkpoint)])   # core.train_model's checkpoint
    one_error_line(proc, "was written by another command (core.config.ModelConfig)", "hpo.retrain.RetrainConfig")
    assert (run_dir / "train.log").read_text() == log_before, "a false line was appended to the other run's log"


# --- damaged caches and checkpoints ------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "empty", "wrong_shape", "other_data_set"])
def test_a_damaged_decode_cache_is_rebuilt(tmp_path, capsys, damage):
    folder = image_folder(tmp_path / "d")
    good, _, _ = load_source(str(folder), str(tmp_path / "root"))
    cache = next((tmp_path / "root" / "cache").iterdir())
    blob = cache.read_bytes()
    if damage == "truncated":
        cache.write_bytes(blob[: len(blob) // 2])
    elif damage == "empty":
        cache.write_bytes(b"")
    elif damage == "wrong_shape":
        state = torch.load(cache, weights_only=True)
        state["train_images"] = state["train_images"][:, :, :16]
        save_checkpoint(cache, state)
    else:
        save_checkpoint(cache, {"something": torch.zeros(3)})
    capsys.readouterr()
    again, _, _ = load_source(str(folder), str(tmp_path / "root"))
    assert torch.equal(good.images, again.images)
    err = capsys.readouterr().err
    assert f"the decode cache at {cache} is damaged" in err and "rebuilding it" in err and "checkpoint" not in err
    assert load_source(str(folder), str(tmp_path / "root"))[0].images.shape == good.images.shape


def test_an_empty_checkpoint_is_one_line(tmp_path):
    empty = tmp_path / "r" / "checkpoint.pt"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    proc = run(["-m", "core.train_model", "--resume", str(empty)])
    one_error_line(proc, f"checkpoint {str(empty)!r} cannot be read")


# --- file modes and read-only data roots -------------------------------------------------------

def test_written_files_get_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        import importlib

        import core.files as ck
        importlib.reload(ck)
        ck.atomic_write_text(tmp_path / "f.txt", "x")
        assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
        importlib.reload(ck)


def test_a_data_root_that_cannot_be_written_decodes_without_a_cache(tmp_path):
    folder = image_folder(tmp_path / "d")
    unwritable = "/proc/cifar-automl-cache"     # even root cannot create a folder in /proc
    proc = run(["-m", "core.train_model", "--data", str(folder), "--data-root", unwritable, "--epochs", "1",
                "--batch-size", "4", "--val-fraction", "0.25", "--out-dir", str(tmp_path / "runs"), "--device", "cpu",
                "--model", "shufflenetg2", "--no-progress"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"data_root {unwritable!r} is not writable: decoding without writing "
                                                "the cache"]


# --- temporary files of a killed checkpoint write -----------------------------------------------

def test_leftover_temporary_files_are_removed_when_the_run_resumes(tmp_path):
    run_dir = _smoke_run(tmp_path)
    left = run_dir / ".checkpoint.pt.abc123.tmp"
    left.write_bytes(b"half a checkpoint")
    proc = run(["-m", "core.train_model", "--resume", str(run_dir / "checkpoint.pt")])
    assert proc.returncode == 0, proc.stderr
    assert not left.exists()
    assert "removed 1 temporary file(s) a killed write left: .checkpoint.pt.abc123.tmp" in (run_dir / "train.log").read_text()


# --- archives and run names --------------------------------------------------------------------

def test_archives_read_only_images_within_limits(tmp_path, monkeypatch):
    folder = image_folder(tmp_path / "d")
    (folder / "notes.bin").write_bytes(os.urandom(4096))        # not an image: never read
    archive = tmp_path / "d.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="d")
    train, test, classes = load_source(str(archive), str(tmp_path / "root"))
    assert (len(train), len(test), classes) == (8, 8, ["a", "b"])
    monkeypatch.setattr(data_mod, "MAX_IMAGE_BYTES", 100)          # a member larger than the limit
    with pytest.raises(UserError, match=r"d/test/a/0.png' is .* bytes; an image may have at most 100"):
        load_source(str(archive), str(tmp_path / "root2"))


def test_a_decompression_bomb_is_refused(tmp_path):
    folder = image_folder(tmp_path / "d")
    Image.new("L", (9000, 9000)).save(folder / "train" / "a" / "bomb.png")   # 81 M pixels in ~80 kB
    with pytest.raises(UserError, match="cannot decode image 'train/a/bomb.png'"):
        load_source(str(folder), str(tmp_path / "root"))


@pytest.mark.parametrize("name", ["../outside", "a/b", ".hidden"])
def test_run_names_stay_inside_out_dir(tmp_path, name):
    proc = run(["-m", "core.train_model", *FAST, "--run-name", name, "--out-dir", str(tmp_path / "runs")])
    one_error_line(proc, f"run_name: {name!r} is not allowed")
    assert not any(tmp_path.iterdir())


# --- divergence --------------------------------------------------------------------------------

def test_divergence_is_one_line_with_what_to_try(tmp_path):
    proc = run(["-m", "core.train_model", "--model", "shufflenetg2", "--data", "fake", "--epochs", "1",
                "--max-batches", "3", "--batch-size", "16", "--lr", "1e30", "--scheduler", "none", "--device", "cpu",
                "--out-dir", str(tmp_path / "runs"), "--no-progress"])
    one_error_line(proc, "training diverged: the loss became", "in epoch 1 by batch", "try a lower --lr (it is 1e+30)")


# --- Ctrl-C --------------------------------------------------------------------------------------

def test_ctrl_c_says_where_to_resume(tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "core.train_model", "--model", "shufflenetg2", "--data", "fake",
                             "--epochs", "50", "--max-batches", "2", "--batch-size", "16", "--eval-batch-size", "50",
                             "--out-dir", str(out), "--no-progress", "--device", "cpu"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not list(out.glob("*/checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    checkpoint = next(out.glob("*/checkpoint.pt"))
    done = load_checkpoint(checkpoint)["epoch"]
    lines = stderr.strip().splitlines()
    # one line, and the process dies by the SIGINT it got (as Python's own Ctrl-C does)
    assert proc.returncode == -signal.SIGINT and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert f"the last checkpoint is {checkpoint} (after epoch {done})" in lines[0]
    assert f"--resume {checkpoint}" in lines[0]


def test_a_trial_nni_stops_says_so_without_error_or_resume(tmp_path):
    """NNI stops a trial (its assessor's early stop, the experiment's stop) with SIGINT: the trial says
    it was stopped by NNI, in one line that is neither an ``error:`` (which the reports would show as
    the trial's error) nor a ``--resume`` to run (NNI runs its trials), and dies by that SIGINT."""
    out = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "core.train_model", "--model", "shufflenetg2", "--data", "fake",
                             "--epochs", "50", "--max-batches", "2", "--batch-size", "16", "--eval-batch-size", "50",
                             "--out-dir", str(out), "--no-progress", "--device", "cpu"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "NNI_PLATFORM": "local"})
    deadline = time.monotonic() + 120
    while not list(out.glob("*/checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    lines = stderr.strip().splitlines()
    assert proc.returncode == -signal.SIGINT and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("stopped by NNI in epoch ") and "--resume" not in lines[0], lines
    assert f"run folder {next(out.iterdir())}" in lines[0]


# --- tracebacks that must be one line -----------------------------------------------------------

def _bad_file(tmp_path, name, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("case", ["binary_config", "nested_arc", "huge_int_arc", "out_dir_file", "seed",
                                  "image_size_small", "image_size_large", "crop_padding", "threads", "cuda"])
def test_bad_values_are_one_line_and_write_nothing(tmp_path, case):
    out = tmp_path / "runs"
    if case == "binary_config":
        args, needle = ["-m", "core.train_model", "--config", str(_bad_file(tmp_path, "c.yml", b"\xff\xfe\x00\x01"))], \
            "is not a text file"
    elif case == "nested_arc":
        args, needle = ["oneshot_darts/retrain.py", "--arc", str(_bad_file(tmp_path, "a.json", b"[" * 100000))], \
            "not valid JSON (nested too deeply)"
    elif case == "huge_int_arc":
        args, needle = ["classic_nas/retrain.py", "--arc", str(_bad_file(tmp_path, "a.json", b"1" * 5000))], \
            "not valid JSON"
    elif case == "out_dir_file":
        args, needle = ["-m", "core.train_model", *FAST, "--out-dir", str(_bad_file(tmp_path, "f", b"x"))], \
            "is a file, not a folder"
    elif case == "seed":
        args, needle = ["-m", "core.train_model", *FAST, "--seed", str(2**63)], "seed: 9223372036854775808"
    elif case == "image_size_small":
        args, needle = ["-m", "core.train_model", *FAST, "--image-size", "8"], "image_size: 8 is not allowed"
    elif case == "image_size_large":
        args, needle = ["-m", "core.train_model", *FAST, "--image-size", "100000"], "image_size: 100000 is not allowed"
    elif case == "crop_padding":
        args, needle = ["-m", "core.train_model", *FAST, "--crop-padding", "40"], "crop_padding: 40 is not allowed"
    elif case == "threads":
        args, needle = ["hpo/trial.py", *FAST, "--threads", "100000"], "threads: 100000 is not allowed"
    else:
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
        args, needle = ["-m", "core.train_model", *FAST[:-2], "--device", "cuda"], "no CUDA GPU is available"
    proc = run([*args, "--out-dir", str(out)] if case not in ("out_dir_file",) else args)
    one_error_line(proc, needle)
    assert not out.exists()


def test_malformed_csv_export_is_one_line(tmp_path):
    csv_file = _bad_file(tmp_path, "e.csv", b'trialJobId,default,lr\n"a,0.5\nb,0.4,0.01,extra\n')
    proc = run(["hpo/results.py", str(csv_file)])
    one_error_line(proc, "export file")
    binary = _bad_file(tmp_path, "b.csv", b"\xff\xfe\x00\x01" * 10)
    one_error_line(run(["hpo/results.py", str(binary)]), "is not an `nnictl experiment export --type csv` table")


def test_malformed_search_space_file_is_out_of_date(tmp_path):
    for content in (b"{not json", b"\xff\xfe\x00", b"[" * 100000):
        bad = _bad_file(tmp_path, "space.json", content)
        proc = run(["-m", "classic_nas.export_space", "--check", "--out", str(bad)])
        assert proc.returncode == 1 and "out of date" in proc.stderr and "Traceback" not in proc.stderr


def test_export_out_that_is_a_folder(tmp_path):
    proc = run(["-m", "classic_nas.export", "abc123", "--out", str(tmp_path)])
    one_error_line(proc, f"--out: {str(tmp_path)!r} is a folder")


# --- the usual workflow ----------------------------------------------------------------------------

def _running_experiment(folder: Path) -> Path:
    """An experiment folder whose one trial has intermediate results but no final result yet."""
    db = folder / "db" / "nni.sqlite"
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE TrialJobEvent (timestamp, trialJobId, event, data, logPath, sequenceId)")
    con.execute("CREATE TABLE MetricData (timestamp, trialJobId, parameterId, type, sequence, data)")
    params = json.dumps({"parameter_id": 0, "parameters": {"lr": 0.01, "optimizer": "Adam", "model": "vgg"}})
    con.execute("INSERT INTO TrialJobEvent VALUES (1, 'AAAAA', 'WAITING', ?, NULL, 0)", (params,))
    con.execute("INSERT INTO TrialJobEvent VALUES (2, 'AAAAA', 'RUNNING', NULL, NULL, 0)")
    con.execute("INSERT INTO MetricData VALUES (3, 'AAAAA', '0', 'PERIODICAL', 0, '\"0.25\"')")
    con.commit()
    con.close()
    return folder


def test_results_of_a_running_experiment_show_the_table(tmp_path):
    proc = run(["hpo/results.py", str(_running_experiment(tmp_path / "exp"))])
    assert proc.returncode == 0, proc.stderr
    assert "AAAAA" in proc.stdout and "RUNNING" in proc.stdout and "no trial of the 1 has a final result yet" in proc.stdout
    one_error_line(run(["hpo/results.py", str(tmp_path / "exp"), "--top", "-1"]), "--top: -1 is not allowed")


def test_yaml_floats_in_exponent_notation_are_numbers(tmp_path):
    config = tmp_path / "c.yml"
    config.write_text("lr: 1e-3\nweight_decay: 5e-4\n")
    cfg = from_dict(TrainConfig, read_yaml(config))
    assert (cfg.lr, cfg.weight_decay) == (0.001, 0.0005)


def test_a_folder_where_a_file_is_expected_is_named_as_such(tmp_path):
    one_error_line(run(["-m", "core.train_model", "--config", str(tmp_path)]), "is a folder, not a file")
    one_error_line(run(["oneshot_darts/retrain.py", "--arc", str(tmp_path)]), "is a folder, not a file")
    one_error_line(run(["-m", "core.train_model", "--resume", str(tmp_path)]), "is a folder")


def test_empty_classes_are_an_error_and_hidden_folders_are_skipped(tmp_path):
    folder = image_folder(tmp_path / "d")
    (folder / "train" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (32, 32)).save(folder / "train" / ".ipynb_checkpoints" / "x.png")
    train, _, classes = load_source(str(folder), str(tmp_path / "root"))
    assert classes == ["a", "b"] and len(train) == 8
    (folder / "train" / "c").mkdir()
    (folder / "test" / "c").mkdir()
    with pytest.raises(UserError, match=r"the class folder\(s\) test/c, train/c hold no image"):
        load_source(str(folder), str(tmp_path / "root2"))
