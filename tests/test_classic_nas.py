"""Classic NAS stage: the search space, the architecture format, the search-space JSON, the nnictl
configs, the trial and the retrain commands (in-process, fake data, a few batches)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from classic_nas import export_space, retrain, trial
from classic_nas.space import (SEARCH_PLAN, SKIP_LABELS, MobileNetSkipSpace, all_archs, build_model,
                               from_nni_sample, search_space_json, skip_blocks, space_choices, to_nni_sample,
                               validate_arch)
from core.config import from_dict, read_yaml
from core.errors import UserError
from experiments.nni_trial import final_metrics
from models.mobilenet import DepthwiseSeparable
from tests.conftest import REPO
from tests import helpers
from tests.helpers import RETRAIN, cli, one_error_line, run
from tests.test_report import _fake_experiment

STAGE = REPO / "classic_nas"
ALL_ON = dict.fromkeys(SKIP_LABELS, 1)
ALL_OFF = dict.fromkeys(SKIP_LABELS, 0)
#: measured: 17 depthwise-separable blocks, stem and classifier at 10 classes; skips add nothing
PARAMS_10_CLASSES = 4_634_826
FAST = ["--data", "fake", "--epochs", "1", "--max-batches", "2", "--batch-size", "8", "--eval-batch-size", "50"]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- the space ------------------------------------------------------------------------------------

def test_space_has_exactly_the_six_skip_choices():
    space = MobileNetSkipSpace()
    choices = space_choices(space)
    assert list(choices) == [f"skip{k}" for k in range(1, 7)] == list(SKIP_LABELS)
    for choice in choices.values():
        assert list(choice.values) == [0, 1] and choice.n_chosen == 1
    # 17 blocks after a 3->32 stem, reusing the foundation's block; skips on blocks 4, 7, 10, 12, 14, 17
    assert len(space.blocks) == len(SEARCH_PLAN) == 17
    assert all(type(b) is DepthwiseSeparable for b in space.blocks)
    assert [b.out_planes for b in space.blocks] == [64, 128, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512,
                                                    512, 512, 1024, 1024, 1024]
    assert [i for i, b in enumerate(space.blocks) if b.stride == 2] == [1, 4, 7, 14]
    assert space.stem[0].in_channels == 3 and space.stem[0].out_channels == 32
    assert skip_blocks() == [3, 6, 9, 11, 13, 16]
    for index in skip_blocks():  # a skip only where the block keeps its shape
        block = space.blocks[index]
        assert block.in_planes == block.out_planes and block.stride == 1
    assert len(list(all_archs())) == 64 and len({json.dumps(a) for a in all_archs()}) == 64


@pytest.mark.parametrize("which", ["all_on", "all_off", "random"])
def test_architectures_build_forward_and_backward(which):
    if which == "random":  # an architecture drawn by NNI from the space itself
        sample = {}
        MobileNetSkipSpace().random(memo=sample, random_state=np.random.RandomState(3))
        arch = from_nni_sample(sample)
    else:
        arch = ALL_ON if which == "all_on" else ALL_OFF
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10)
    assert isinstance(model, MobileNetSkipSpace)
    for index, label in zip(skip_blocks(), SKIP_LABELS):
        assert model.skips[str(index)].chosen == [arch[label]]
    model.train()
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    torch.nn.functional.cross_entropy(out, torch.arange(4)).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing[:5]}"


def test_parameter_count_does_not_depend_on_the_skips():
    counts = {n_params(build_model(a)) for a in (ALL_ON, ALL_OFF, {**ALL_OFF, "skip3": 1})}
    assert counts == {n_params(MobileNetSkipSpace())} == {PARAMS_10_CLASSES}


def test_skips_change_the_function_as_chosen():
    """With the same weights, switching one skip changes the output; the skip adds the block's input."""
    torch.manual_seed(0)
    on, off = build_model({**ALL_OFF, "skip2": 1}), build_model(ALL_OFF)
    off.load_state_dict(on.state_dict())
    seen = {}
    block = skip_blocks()[1]
    on.blocks[block].register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
    on.skips[str(block)].register_forward_hook(lambda m, args, out: seen.update(skip=out))
    x = torch.randn(2, 3, 32, 32)
    on.train(), off.train()
    assert not torch.allclose(on(x), off(x))
    assert torch.equal(seen["skip"], seen["x"])  # candidate 1 is the block's input
    assert off.skips[str(block)].chosen == [0]


def test_space_and_fixed_child_agree_with_nni_freeze():
    space = MobileNetSkipSpace()
    frozen = space.freeze(to_nni_sample({**ALL_OFF, "skip6": 1}))
    assert [frozen.skips[str(i)].chosen for i in skip_blocks()] == [[0]] * 5 + [[1]]
    sample = {}
    space.random(memo=sample)
    assert set(sample) == set(SKIP_LABELS)
    assert from_nni_sample(sample) == {k: v[0] for k, v in sample.items()}


# --- the architecture format ------------------------------------------------------------------------

@pytest.mark.parametrize("arch, message", [
    ({k: v for k, v in ALL_ON.items() if k != "skip4"}, "missing skip label 'skip4'; expected labels: skip1, "),
    ({**ALL_ON, "skip7": 1}, "unknown skip label 'skip7'; expected labels: skip1, skip2"),
    ({**ALL_ON, "conv1": 1}, "unknown skip label 'conv1'"),
    ({**ALL_ON, "skip2": True}, "skip2: true is not allowed; expected the integer 0 (no skip) or 1"),
    ({**ALL_ON, "skip5": [1]}, "skip5: [1] is not allowed"),
    ({**ALL_ON, "skip1": 2}, "skip1: 2 is not allowed"),
    ({**ALL_ON, "skip1": "1"}, "skip1: \"1\" is not allowed"),
    ([1, 0, 1], "expected a JSON object"),
])
def test_bad_architectures_name_the_label(arch, message):
    with pytest.raises(UserError, match=None) as err:
        validate_arch(arch)
    assert message in str(err.value)


def test_bad_arch_file_is_one_line_exit_2_and_writes_nothing(tmp_path):
    bad = tmp_path / "arch.json"
    bad.write_text(json.dumps({**ALL_ON, "skip9": 0}))
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, str(STAGE / "retrain.py"), "--arc", str(bad), "--data", "fake",
                           "--out-dir", str(out)], capture_output=True, text=True, cwd=STAGE)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "Warning" not in line and not line.startswith("  ")]
    assert errors == [f"error: {bad}: unknown skip label 'skip9'; expected labels: skip1, skip2, skip3, skip4, "
                      "skip5, skip6"], proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{\"skip1\": 1,", "not valid JSON"),
    (json.dumps({**ALL_ON, "skip3": None}), "skip3: null is not allowed"),
])
def test_bad_arch_file_in_process(tmp_path, capsys, content, message):
    path = tmp_path / "a.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_:
        retrain.main(["--arc", str(path), "--data", "fake", "--out-dir", str(tmp_path / "runs")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


# --- the search space JSON and the nnictl configs ------------------------------------------------------

def test_search_space_json_is_generated_from_the_model_space():
    on_disk = json.loads(export_space.SEARCH_SPACE_FILE.read_text())
    assert on_disk == search_space_json(), "classic_nas/search_space.json is stale: run python -m classic_nas.export_space"
    assert export_space.SEARCH_SPACE_FILE == STAGE / "search_space.json"


def test_export_space_check_fails_on_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "space.json"
    stale.write_text(json.dumps({label: {"_type": "choice", "_value": [0, 1]} for label in SKIP_LABELS[:5]}))
    with pytest.raises(SystemExit) as exit_:
        export_space.main(["--out", str(stale), "--check"])
    assert exit_.value.code == 1
    assert export_space.main(["--out", str(stale)]) == 0
    assert json.loads(stale.read_text()) == search_space_json()
    assert export_space.main(["--out", str(stale), "--check"]) == 0


@pytest.mark.parametrize("name, tuner", [("config.yml", "Random"), ("config_grid.yml", "GridSearch"),
                                         ("config_small.yml", "Random")])
def test_nnictl_configs_are_valid_and_point_at_the_generated_space(name, tuner):
    from nni.experiment.config import ExperimentConfig

    path = STAGE / name
    raw = yaml.safe_load(path.read_text())
    assert raw["tuner"]["name"] == tuner
    assert (path.parent / raw["searchSpaceFile"]).resolve() == export_space.SEARCH_SPACE_FILE
    assert (path.parent / raw["trialCodeDirectory"]).resolve() == STAGE
    assert raw["trialCommand"].startswith("python3 trial.py --config ../configs/classic_nas")
    config_file = raw["trialCommand"].split()[3]
    from_dict(trial.TrialConfig, read_yaml(STAGE / config_file))  # the trials' YAML parses and validates
    config = ExperimentConfig.load(str(path))  # what nnictl create does, paths relative to the file
    config.validate()
    assert config.canonical_copy().search_space == search_space_json()


def _drain(tuner, limit=100):
    import nni

    seen = []
    for i in range(limit):
        try:
            seen.append(tuner.generate_parameters(i))
        except nni.NoMoreTrialError:
            break
    return seen


def test_grid_tuner_enumerates_all_64_architectures():
    from nni.algorithms.hpo.gridsearch_tuner import GridSearchTuner

    tuner = GridSearchTuner()
    tuner.update_search_space(search_space_json())
    archs = [validate_arch(p) for p in _drain(tuner)]
    assert len(archs) == 64
    assert sorted(map(json.dumps, archs)) == sorted(map(json.dumps, all_archs()))


def test_random_tuner_draws_valid_distinct_architectures():
    from nni.algorithms.hpo.random_tuner import RandomTuner

    tuner = RandomTuner(seed=0)
    tuner.update_search_space(search_space_json())
    archs = [json.dumps(validate_arch(tuner.generate_parameters(i))) for i in range(20)]
    assert len(set(archs)) == 20  # NNI's random tuner deduplicates


# --- trial and retrain, in-process ---------------------------------------------------------------------

def test_trial_outside_nni_trains_one_architecture_on_validation_only(tmp_path, monkeypatch):
    monkeypatch.delenv("NNI_PLATFORM", raising=False)
    arch_file = tmp_path / "arch.json"
    arch = {**ALL_OFF, "skip1": 1, "skip4": 1}
    arch_file.write_text(json.dumps(arch))
    result = trial.main(["--arch", str(arch_file), *FAST, "--epochs", "2", "--out-dir", str(tmp_path / "runs")])
    run = Path(result["run_dir"])
    assert run.parent == tmp_path / "runs" and run.name.startswith("classic_nas_trial-")
    assert json.loads((run / "arch.json").read_text()) == arch
    assert "test_acc" not in result and 0.0 <= result["val_acc"] <= 1.0  # the test split is not looked at
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and all("val_acc" in m for m in metrics)
    final = final_metrics(result, "val_acc", arch)
    assert final["default"] == result["val_acc"] == metrics[-1]["val_acc"]
    assert {k: final[k] for k in SKIP_LABELS} == arch and "test_acc" not in final
    assert not (run / "checkpoint.pt").exists()  # deleted unless --keep-checkpoint
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 2


def test_trial_rejects_a_search_without_validation(tmp_path, capsys):
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(ALL_ON))
    with pytest.raises(SystemExit):
        trial.main(["--arch", str(arch_file), "--data", "fake", "--val-fraction", "0"])
    assert "error: val_fraction: 0.0 is not allowed for a search trial" in capsys.readouterr().err


def test_retrain_trains_then_resumes_from_its_checkpoint(tmp_path):
    arch = {**ALL_ON, "skip2": 0}
    arch_file = tmp_path / "best_arch.json"
    arch_file.write_text(json.dumps(arch))
    result = retrain.main(["--arc", str(arch_file), *FAST, "--val-fraction", "0", "--out-dir", str(tmp_path)])
    run = Path(result["run_dir"])
    assert run.name.startswith("classic_nas_retrain-") and 0.0 <= result["test_acc"] <= 1.0
    assert "val_acc" not in result  # val_fraction 0: trained on the whole training split
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["test_acc"] == result["test_acc"]
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["arch"] == arch and state["epoch"] == 1
    again = retrain.main(["--resume", str(run / "checkpoint.pt")])
    assert again["run_dir"] == str(run) and again["params"] == PARAMS_10_CLASSES


def test_trial_on_real_jpeg_cifar10(tmp_path, cifar_jpeg, data_root):
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(ALL_OFF))
    result = trial.main(["--arch", str(arch_file), "--data", str(cifar_jpeg), "--data-root", str(data_root),
                         "--subset", "64", "--val-subset", "100", "--epochs", "1", "--max-batches", "2",
                         "--batch-size", "16", "--eval-batch-size", "50", "--out-dir", str(tmp_path / "runs")])
    assert result["params"] == PARAMS_10_CLASSES and 0.0 <= result["val_acc"] <= 1.0


def test_a_diverged_trial_reports_zero_flagged_and_exits_cleanly(tmp_path, monkeypatch, capsys):
    from core.config import TrainConfig
    from core.trainer import TrainingDiverged

    def diverge(*args, **kwargs):
        raise TrainingDiverged(0, 20, math.nan, TrainConfig())

    monkeypatch.setattr("core.run_training.train", diverge)     # what run_search_trial calls
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(ALL_ON))
    result = trial.main(["--arch", str(arch_file), "--data", "fake"])
    assert result == {"default": 0.0, "diverged": 1, **ALL_ON}
    assert "trial stopped: training diverged: the loss became nan in epoch 1 by batch 20" in capsys.readouterr().out


# --- export of the best architecture -----------------------------------------------------------------

def _trial(tid, final, params, final_metrics=None, seq=0):
    from experiments.reader import Trial

    return Trial(trial_id=tid, status="SUCCEEDED", params=params, final=final,
                 final_metrics=final_metrics if final_metrics is not None else {"default": final},
                 intermediates=[final] if final is not None else [], sequence_id=seq)


def test_export_ranks_by_validation_accuracy_and_trusts_the_reported_arch(tmp_path):
    from classic_nas.export import load_experiment, trial_arch
    from experiments.reader import ranked

    recorded_wrong = {**ALL_OFF}             # what NNI recorded (another concurrent trial's parameters)
    really_ran = {**ALL_OFF, "skip3": 1}     # what the trial repeated in its final result
    records = [                              # `nnictl experiment export --type json`
        {"trialJobId": "a", "parameter": ALL_ON, "value": 0.30},
        {"trialJobId": "b", "parameter": recorded_wrong, "value": json.dumps({"default": 0.50, **really_ran})},
        {"trialJobId": "c", "parameter": ALL_OFF, "value": json.dumps({"default": 0.0, "diverged": 1})},
        {"trialJobId": "e", "parameter": ALL_ON, "value": 0.50},   # a tie goes to the earlier trial
        {"trialJobId": "f", "parameter": ALL_OFF, "value": 1.5},   # edited: not an accuracy, never ranked
    ]
    export_file = tmp_path / "export.json"
    export_file.write_text(json.dumps(records))
    order = ranked(load_experiment(export_file))
    assert [t.trial_id for t in order] == ["b", "e", "a"]
    assert trial_arch(order[0]) == really_ran and trial_arch(order[2]) == ALL_ON


def test_export_command_errors_in_one_line(tmp_path, monkeypatch, capsys):
    from classic_nas import export

    monkeypatch.setattr(export, "load_experiment", lambda source, experiments_dir=None: [
        _trial("x", 0.0, ALL_ON, {"default": 0.0, "diverged": 1})])
    out = tmp_path / "best_arch.json"
    with pytest.raises(SystemExit) as exit_:
        export.main(["abc123", "--out", str(out)])
    assert exit_.value.code == 2 and not out.exists()
    assert capsys.readouterr().err.strip() == ("error: experiment 'abc123': none of its 1 trials has a final result "
                                               "(that did not diverge) yet")
    monkeypatch.setattr(export, "load_experiment", lambda source, experiments_dir=None: [
        _trial("y", 0.4, {**ALL_ON, "skip9": 1})])
    with pytest.raises(SystemExit):
        export.main(["abc123", "--out", str(out)])
    assert "error: trial y: unknown skip label 'skip9'" in capsys.readouterr().err and not out.exists()
    monkeypatch.setattr(export, "load_experiment", lambda source, experiments_dir=None: [
        _trial("z", 0.4, {**ALL_OFF, "skip6": 1})])
    assert export.main(["abc123", "--out", str(out)]) == {**ALL_OFF, "skip6": 1}
    assert json.loads(out.read_text()) == {**ALL_OFF, "skip6": 1}


# --- --from-hpo: the HPO winner's optimizer and lr ------------------------------------------------

def _hpo_experiment(tmp_path: Path, trials=None) -> Path:
    """An HPO experiment database (tests/test_report.py's builder): best finished trial aaaaa
    (mobilenet, Adam, lr 0.001, 0.5), one early-stopped, one still running."""
    from tests.test_report import HPO_TRIALS, _fake_experiment

    return _fake_experiment(tmp_path / "hpoexp1", "hpo", trials or HPO_TRIALS)


def test_from_hpo_reads_the_best_finished_trial(tmp_path, capsys):
    from experiments.from_hpo import hpo_winner

    exp = _hpo_experiment(tmp_path)
    winner = hpo_winner(exp)
    assert (winner.trial_id, winner.optimizer, winner.lr, winner.model) == ("aaaaa", "Adam", 0.001, "mobilenet")
    assert winner.fields() == {"optimizer": "Adam", "lr": 0.001} and winner.unfinished == 1
    assert winner.provenance() == {"from_hpo": str(exp), "hpo_trial": "aaaaa"}
    err = capsys.readouterr().err    # a trial still runs: the best may change, and the user is told
    assert err.startswith("warning: --from-hpo: experiment") and "1 unfinished trial" in err
    assert hpo_winner(exp / "db" / "nni.sqlite").trial_id == "aaaaa"


def test_trial_from_hpo_trains_with_the_winner_s_optimizer_and_lr(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NNI_PLATFORM", raising=False)
    exp = _hpo_experiment(tmp_path)
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(ALL_ON))
    # the stage's own recipe says SGD 0.1; --from-hpo replaces optimizer and lr, nothing else
    result = trial.main(["--arc", str(arch_file), "--config", str(REPO / "configs/classic_nas.yml"), *FAST,
                         "--out-dir", str(tmp_path / "runs"), "--from-hpo", str(exp)])
    config = yaml.safe_load((Path(result["run_dir"]) / "config.yaml").read_text())
    assert (config["optimizer"], config["lr"], config["weight_decay"], config["scheduler"]) == ("Adam", 0.001, 5e-4,
                                                                                              "cosine")
    out = capsys.readouterr().out
    assert f"training with optimizer Adam, lr 0.001 from HPO experiment {exp} (best trial aaaaa" in out
    final = json.loads(out.strip().splitlines()[-1])
    assert {k: final[k] for k in ("optimizer", "lr", "from_hpo", "hpo_trial")} == {
        "optimizer": "Adam", "lr": 0.001, "from_hpo": str(exp), "hpo_trial": "aaaaa"}
    assert {k: final[k] for k in SKIP_LABELS} == ALL_ON


def test_nnictl_trials_take_the_winner_from_the_environment(tmp_path, monkeypatch, capsys):
    from core.paths import FROM_HPO_ENV

    exp = _hpo_experiment(tmp_path)
    other = _hpo_experiment(tmp_path / "other", [
        {"id": "zzzzz", "params": {"model": "vgg", "optimizer": "Adagrad", "lr": 0.01}, "curve": [0.6], "final": 0.6,
         "status": "SUCCEEDED"}])
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(ALL_OFF))

    def resolved(*extra: str) -> dict:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            trial.main(["--arc", str(arch_file), *FAST, "--config", str(REPO / "configs/classic_nas.yml"), *extra,
                        "--print-config"])
        assert exit_.value.code == 0
        return yaml.safe_load(capsys.readouterr().out)

    assert (resolved()["optimizer"], resolved()["lr"]) == ("SGD", 0.1)               # the stage's own recipe
    monkeypatch.setenv(FROM_HPO_ENV, str(exp))                                       # as nnictl trials inherit it
    assert (resolved()["optimizer"], resolved()["lr"]) == ("Adam", 0.001)
    assert (resolved("--from-hpo", str(other))["optimizer"], resolved("--from-hpo", str(other))["lr"]) == (
        "Adagrad", 0.01)                                                             # the flag wins
    monkeypatch.setenv(FROM_HPO_ENV, "")
    assert resolved()["optimizer"] == "SGD"


def _classic_nas_experiment(tmp_path: Path) -> Path:
    from tests.test_report import _fake_experiment

    return _fake_experiment(tmp_path / "nasexp1", "classic_nas", [
        {"id": "nnnnn", "params": ALL_ON, "curve": [0.3], "final": 0.3, "status": "SUCCEEDED"}])


@pytest.mark.parametrize("case", ["no such id", "no such folder", "nothing finished", "classic-NAS experiment",
                                  "with --lr", "empty", "environment"])
def test_from_hpo_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, case):
    from core.paths import FROM_HPO_ENV

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NNI_PLATFORM", raising=False)
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(ALL_ON))
    source, extra, env = {
        "no such id": lambda: ("zzzz9999", [], None),
        "no such folder": lambda: (str(tmp_path / "gone" / "exp"), [], None),
        "nothing finished": lambda: (str(_hpo_experiment(tmp_path, [
            {"id": "rrrrr", "params": {"model": "vgg", "optimizer": "Adam", "lr": 0.01}, "curve": [0.2],
             "status": "RUNNING"},
            {"id": "fffff", "params": {"model": "vgg", "optimizer": "Adam", "lr": 0.1}, "curve": [],
             "status": "FAILED"}])), [], None),
        "classic-NAS experiment": lambda: (str(_classic_nas_experiment(tmp_path)), [], None),
        "with --lr": lambda: (str(_hpo_experiment(tmp_path)), ["--lr", "0.05"], None),
        "empty": lambda: (" ", [], None),
        "environment": lambda: (None, [], "zzzz9999"),
    }[case]()
    expected = {
        "no such id": "error: --from-hpo: experiment 'zzzz9999': no folder with db/nni.sqlite found",
        "no such folder": f"error: --from-hpo: experiment {str(tmp_path / 'gone' / 'exp')!r}: no such file or folder",
        "nothing finished": "error: --from-hpo: experiment ",
        "classic-NAS experiment": "error: --from-hpo: experiment ",
        "with --lr": "error: --lr: not allowed with --from-hpo, which takes the optimizer and lr",
        "empty": "error: --from-hpo: give an HPO experiment",
        "environment": f"error: {FROM_HPO_ENV}: experiment 'zzzz9999': no folder with db/nni.sqlite found",
    }[case]
    if env:
        monkeypatch.setenv(FROM_HPO_ENV, env)
    runs = tmp_path / "runs"
    argv = ["--arc", str(arch_file), *FAST, "--out-dir", str(runs), *extra]
    argv += ["--from-hpo", source] if source is not None else []
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        trial.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(expected), err
    if case == "nothing finished":
        assert "has no finished trial with a result yet (of its 2 trials)" in err
    if case == "classic-NAS experiment":
        assert "is not an HPO experiment: its best trial nnnnn has no optimizer or lr" in err
    assert not runs.exists()
    if case != "environment":      # the retrain takes --from-hpo the same way
        with pytest.raises(SystemExit) as exit_:
            retrain.main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(expected), err
        assert not runs.exists()


def test_retrain_from_hpo_and_not_with_resume(tmp_path, capsys):
    exp = _hpo_experiment(tmp_path)
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(ALL_OFF))
    result = retrain.main(["--arc", str(arch_file), *FAST, "--val-fraction", "0", "--out-dir", str(tmp_path / "runs"),
                           "--from-hpo", str(exp)])
    run = Path(result["run_dir"])
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["optimizer"], config["lr"]) == ("Adam", 0.001)
    assert "training with optimizer Adam, lr 0.001 from HPO experiment" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        retrain.main(["--resume", str(run / "checkpoint.pt"), "--from-hpo", str(exp)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("error: --from-hpo: not allowed with --resume")


# --- output files the user names -------------------------------------------------------------------

#: each option that names an output file: the command before its --out
OUTPUTS = {"export": ["-m", "classic_nas.export", "EXP"], "export_space": ["-m", "classic_nas.export_space"]}


@pytest.mark.parametrize("command", sorted(OUTPUTS))
def test_an_output_file_the_command_did_not_write_is_never_replaced(tmp_path, monkeypatch, command):
    from classic_nas import export
    monkeypatch.setattr(export, "load_experiment", lambda source, experiments_dir=None: [_trial("t", 0.5, ALL_ON)])
    argv = OUTPUTS[command]
    notes = tmp_path / "notes.txt"
    for content in (b"my notes\n", b"", json.dumps({"skip1": 1, "note": "mine"}).encode(),
                    json.dumps(ALL_ON)[:-1].encode(), b"\xff\xfe"):
        notes.write_bytes(content)
        one_error_line(run([*argv, "--out", str(notes)]),
                       f"--out: {str(notes)!r} exists and does not hold", "add --overwrite to replace it")
        assert notes.read_bytes() == content and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    proc = run([*argv, "--out", str(notes), "--overwrite"])                  # asked for: replaced
    assert proc.returncode == 0, proc.stderr
    written = notes.read_text()
    assert json.loads(written) in (ALL_ON, search_space_json())
    proc = run([*argv, "--out", str(notes)])                                  # its own file: replaced again
    assert proc.returncode == 0 and notes.read_text() == written, proc.stderr
    link = tmp_path / "link.json"
    link.symlink_to(notes)
    one_error_line(run([*argv, "--out", str(link), "--overwrite"]), "is a symbolic link")
    assert notes.read_text() == written and link.is_symlink()


def test_export_space_replaces_a_stale_space_of_this_stage_only(tmp_path):
    hpo_space = tmp_path / "space.json"
    hpo_space.write_text((REPO / "hpo" / "search_space.json").read_text())      # another stage's space
    one_error_line(run(["-m", "classic_nas.export_space", "--out", str(hpo_space)]), "does not hold a search space "
                   "of this stage")
    assert hpo_space.read_text() == (REPO / "hpo" / "search_space.json").read_text()


def test_an_architecture_file_with_a_repeated_key_is_refused(tmp_path):
    arc = tmp_path / "arch.json"
    arc.write_text('{"skip1": 1, "skip1": 0, "skip2": 0, "skip3": 0, "skip4": 0, "skip5": 0, "skip6": 0}')
    proc = cli(["classic_nas/retrain.py", "--arc", arc, *RETRAIN, "--out-dir", tmp_path / "runs"])
    one_error_line(proc, "the key 'skip1' appears more than once")
    assert not (tmp_path / "runs").exists()


def test_the_trial_takes_threads(tmp_path):
    arc = tmp_path / "arch.json"
    arc.write_text(json.dumps({f"skip{k}": 1 for k in range(1, 7)}))
    proc = cli(["classic_nas/trial.py", "--arc", arc, "--threads", "1", "--print-config"])
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["threads"] == 1
    one_error_line(run(["hpo/trial.py", *helpers.FAST, "--threads", "100000"]), "threads: 100000 is not allowed")


def test_export_into_an_unwritable_place(tmp_path):
    trials = [{"id": f"t{i}xyz", "params": {f"skip{k}": (i >> (k - 1)) & 1 for k in range(1, 7)},
               "curve": [0.1 * (i + 1)], "final": 0.1 * (i + 1), "status": "SUCCEEDED"} for i in range(2)]
    exp = _fake_experiment(tmp_path / "nasexp", "classic_nas", trials)
    one_error_line(cli(["-m", "classic_nas.export", exp, "--out", "/proc/cifar-automl/best_arch.json"]),
                   "--out: cannot write '/proc/cifar-automl/best_arch.json'")
