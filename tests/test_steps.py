"""core/steps.py: a sequence of trainings in a folder, each step resumable, the folder locked while a
command works in it; one set of rules for both users, the ``--top K`` retrains
(experiments/top_k.py) and the DARTS protocol (oneshot_darts/protocol.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from core.config import TrainConfig, from_dict
from core.errors import UserError
from core.run_folder import (CHECKPOINT_FILE, LOCK_FILE, METRICS_FILE, PROTOCOL_FILE, RESULT_FILE, read_result,
                             write_protocol, write_record)
from core.steps import FolderBusy, claim_step, lock_folder, run_step
from tests.conftest import REPO
from tests.helpers import one_error_line, run

#: A protocol at its smallest (it never trains in these tests: each stops before its first step).
TINY_PROTOCOL = ["--data", "fake", "--subset", "40", "--val-subset", "16", "--batch-size", "8", "--channels", "2",
                 "--layers", "3", "--n-nodes", "2", "--epochs", "1", "--max-batches", "1", "--no-progress",
                 "--device", "cpu", "--seeds", "0", "--select-epochs", "1",
                 "--select-config", str(REPO / "configs" / "darts_select_smoke.yml")]


def _never(what: str):
    def call(path: Path):
        raise AssertionError(f"{what} called with {path}")
    return call


def test_a_done_step_is_skipped_a_half_done_one_resumed_and_the_others_started(tmp_path):
    lines: list[str] = []
    done = tmp_path / "done"
    done.mkdir()
    (done / RESULT_FILE).write_text('{"val_acc": 0.5}')
    (done / CHECKPOINT_FILE).write_bytes(b"a checkpoint beside the result")
    (done / ".result.json.k1.tmp").write_text("{")                    # what a killed atomic write left
    assert run_step(done, "[1] step", _never("start"), _never("resume"), lines.append) == {"val_acc": 0.5}
    assert lines[-1] == f"[1] step: finished before ({done}), skipped"
    assert not (done / ".result.json.k1.tmp").exists()

    half = tmp_path / "half"
    half.mkdir()
    (half / CHECKPOINT_FILE).write_bytes(b"epoch 1")
    (half / METRICS_FILE).write_text('{"epoch": 1}\n')
    got = run_step(half, "[2] step", _never("start"), lambda ck: {"resumed": str(ck)}, lines.append)
    assert got == {"resumed": str(half / CHECKPOINT_FILE)}
    assert lines[-1] == f"[2] step: resuming {half / CHECKPOINT_FILE}"
    assert (half / METRICS_FILE).exists()                               # a resume keeps its metrics

    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / METRICS_FILE).write_text('{"epoch": 1}\n')               # a start killed before its first checkpoint
    got = run_step(killed, "[3] step", lambda d: {"started": str(d)}, _never("resume"), lines.append)
    assert got == {"started": str(killed)} and lines[-1] == f"[3] step: starting in {killed}"
    assert not (killed / METRICS_FILE).exists()
    assert claim_step(tmp_path / "new") == "started" and read_result(tmp_path / "new") is None


def test_a_step_record_is_written_atomically(tmp_path):
    write_record(tmp_path / "origin.json", {"trial": "a"}, indent=2)
    write_record(tmp_path / "origin.json", {"trial": "b"})
    assert json.loads((tmp_path / "origin.json").read_text()) == {"trial": "b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["origin.json"]     # no temporary file left


def test_a_locked_folder_is_busy_for_a_second_command(tmp_path):
    first = lock_folder(tmp_path)
    assert first is not None and (tmp_path / LOCK_FILE).is_file()
    assert lock_folder(tmp_path) is None                                 # a caller that goes on with the next step
    with pytest.raises(FolderBusy, match="busy here"):
        lock_folder(tmp_path, busy="busy here")
    first.release()
    with lock_folder(tmp_path) as again:                                 # let go: the next command takes it
        assert again is not None


def test_a_symlinked_lock_or_folder_is_refused(tmp_path):
    victim = tmp_path / "someone_elses_file"
    victim.write_text("theirs")
    folder = tmp_path / "steps"
    folder.mkdir()
    (folder / LOCK_FILE).symlink_to(victim)
    with pytest.raises(UserError, match="is a symbolic link"):
        lock_folder(folder)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(UserError, match="is a symbolic link"):
        lock_folder(link)
    assert victim.read_text() == "theirs" and not (tmp_path / "elsewhere" / LOCK_FILE).exists()


# --- both users: the --top K retrains and the DARTS protocol ---------------------------------------

def _retrain_top(out_dir: Path, train_one):
    from experiments.reader import Trial
    from experiments.top_k import retrain_top

    trial = Trial("aaaaa", "SUCCEEDED", {"lr": 0.1}, final=0.5, intermediates=[0.5])
    return retrain_top([trial], 1, out_dir=out_dir, stage="hpo_retrain", experiment_id="exp", experiment_dir=out_dir,
                       origin_extra=lambda t: {}, config_for=lambda t: from_dict(TrainConfig, {"lr": 0.1}),
                       train_one=train_one, log=lambda line: None)


def test_top_k_refuses_a_symlinked_lock_and_leaves_a_locked_folder_to_its_holder(tmp_path):
    victim = tmp_path / "someone_elses_file"
    victim.write_text("theirs")
    folder = tmp_path / "runs" / "hpo_retrain-exp-aaaaa"
    folder.mkdir(parents=True)
    (folder / LOCK_FILE).symlink_to(victim)
    with pytest.raises(UserError, match=f"{LOCK_FILE}' is a symbolic link"):
        _retrain_top(tmp_path / "runs", lambda *a: pytest.fail("trained through a symlinked lock"))
    assert victim.read_text() == "theirs" and sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]

    (folder / LOCK_FILE).unlink()
    holder = lock_folder(folder)                                         # another --top K works in it
    try:
        done = _retrain_top(tmp_path / "runs", lambda *a: pytest.fail("trained in a locked folder"))
    finally:
        holder.release()
    assert [d.action for d in done] == ["busy"]
    def train_one(cfg, trial, run_dir, resume):                         # a retrain that records its config and ends
        from core.run_folder import Run

        Run(run_dir).write_config(cfg)
        (run_dir / RESULT_FILE).write_text('{"test_acc": 0.5}')
        return {"test_acc": 0.5}
    done = _retrain_top(tmp_path / "runs", train_one)
    assert [d.action for d in done] == ["started"]
    done = _retrain_top(tmp_path / "runs", lambda *a: pytest.fail("a done step trained again"))
    assert [d.action for d in done] == ["skipped"]


def _protocol_folder(tmp_path: Path, capsys) -> tuple[Path, list[str]]:
    """A protocol folder as its first command leaves it before the first step (its record), and the
    command's flags."""
    from oneshot_darts.protocol import main

    args = [*TINY_PROTOCOL, "--out-dir", str(tmp_path / "runs")]
    with pytest.raises(SystemExit):
        main([*args, "--print-config"])
    folder = tmp_path / "runs" / "darts-protocol"
    folder.mkdir(parents=True)
    write_protocol(folder, {"settings": yaml.safe_load(capsys.readouterr().out), "steps": {}})
    return folder, args


def test_protocol_refuses_a_symlinked_lock_or_folder_and_a_folder_another_command_holds(tmp_path, capsys):
    folder, args = _protocol_folder(tmp_path, capsys)
    record = (folder / PROTOCOL_FILE).read_bytes()
    holder = lock_folder(folder)                                         # a second command while one works
    try:
        line = one_error_line(run(["oneshot_darts/protocol.py", *args]))
    finally:
        holder.release()
    assert "another process is running this protocol" in line and f"holds {LOCK_FILE} there" in line

    victim = tmp_path / "someone_elses_file"
    victim.write_text("theirs")
    (folder / LOCK_FILE).unlink()
    (folder / LOCK_FILE).symlink_to(victim)
    one_error_line(run(["oneshot_darts/protocol.py", *args]), f"{str(folder / LOCK_FILE)!r} is a symbolic link")
    assert victim.read_text() == "theirs"

    (folder / LOCK_FILE).unlink()
    real = tmp_path / "real"
    folder.rename(real)
    folder.symlink_to(real, target_is_directory=True)
    one_error_line(run(["oneshot_darts/protocol.py", *args]), f"{str(folder)!r} is a symbolic link")
    assert sorted(p.name for p in real.iterdir()) == [PROTOCOL_FILE] and (real / PROTOCOL_FILE).read_bytes() == record
