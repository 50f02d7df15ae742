"""HPO stage without the NNI manager: the trial script, the experiment reader, retrain, the NNI fixes."""
from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from core.errors import UserError
from experiments.nni_trial import NniTrial
from core.trainer import build_optimizer
from hpo import results, retrain, trial
from hpo.nni_fixes import RECEIVED_TAG, FixedHyperband, FixedTpe
from tests.conftest import REPO
from tests.helpers import cli, one_error_line
from tests.test_report import HPO_TRIALS, _fake_experiment

FAKE_FLAGS = ["--data", "fake", "--epochs", "1", "--max-batches", "2", "--batch-size", "8",
              "--eval-batch-size", "16", "--threads", "1"]


class Recorder(NniTrial):
    """Stands in for NNI: records what the trial reports."""

    def __init__(self, output_dir: Path | None = None):
        super().__init__(active=False)
        self.run_dir, self.intermediates, self.finals = output_dir, [], []

    def epoch_reporter(self, key="val_acc"):
        return lambda metrics: self.intermediates.append(float(metrics[key]))

    def send_final(self, final):
        self.finals.append(final)


def test_an_nni_trial_records_its_command_as_the_shell_expanded_it(tmp_path, monkeypatch):
    import nni

    from experiments.nni_trial import COMMAND_FILE

    monkeypatch.setattr(nni, "get_next_parameter", lambda: {"lr": 0.01})
    monkeypatch.setattr(sys, "argv", ["trial.py", "--epochs", "30", "--seed", "7"])
    monkeypatch.setenv("NNI_PLATFORM", "local")
    monkeypatch.setenv("NNI_OUTPUT_DIR", str(tmp_path))
    monkeypatch.setenv("CIFAR_AUTOML_TRIAL_FLAGS", "--seed 7")
    assert NniTrial.from_environment().params == {"lr": 0.01}
    assert json.loads((tmp_path / COMMAND_FILE).read_text()) == {"argv": ["trial.py", "--epochs", "30", "--seed", "7"],
                                                                 "trial_flags": "--seed 7"}


def _config(argv, params=None) -> trial.HpoTrialConfig:
    return trial.resolve_config(trial.build_parser().parse_args(argv), params or {})


# --- the search space and the trial's parameters ------------------------------------------------

def test_search_space_is_two_lrs_four_optimizers_and_eight_models():
    space = json.loads((REPO / "hpo/search_space.json").read_text())
    assert space == {
        "lr": {"_type": "choice", "_value": [0.01, 0.001]},
        "optimizer": {"_type": "choice", "_value": ["Adadelta", "Adagrad", "Adam", "Adamax"]},
        "model": {"_type": "choice", "_value": ["vgg", "resnet18", "googlenet", "densenet121", "mobilenet",
                                                 "dpn92", "shufflenetg2", "senet18"]},
    }


@pytest.mark.parametrize("name, cls", [("Adadelta", torch.optim.Adadelta), ("Adagrad", torch.optim.Adagrad),
                                       ("Adam", torch.optim.Adam), ("Adamax", torch.optim.Adamax)])
def test_each_optimizer_choice_builds_that_torch_class(name, cls):
    cfg = _config(["--data", "fake"], {"optimizer": name, "lr": 0.01, "model": "mobilenet"})
    assert cfg.optimizer == name
    opt = build_optimizer(cfg.optimizer, nn.Linear(2, 2).parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
    assert type(opt) is cls                      # exactly that class (NNI's example built Adam for Adamax)
    assert opt.defaults["lr"] == 0.01


def test_tuner_parameters_override_flags_and_budget_becomes_epochs():
    cfg = _config(["--lr", "0.5", "--epochs", "7", "--model", "vgg"],
                  {"lr": 0.001, "model": "resnet18", "optimizer": "Adagrad", "TRIAL_BUDGET": 3})
    assert (cfg.lr, cfg.model, cfg.optimizer, cfg.epochs) == (0.001, "resnet18", "Adagrad", 3)
    assert _config(["--epochs", "7"]).epochs == 7       # standalone: flags as given


@pytest.mark.parametrize("params, message", [
    ({"model": "resnet1000"}, "model: unknown value 'resnet1000'; allowed: densenet121, dpn92"),
    ({"optimizer": "Nadam"}, "optimizer: unknown value 'Nadam'; allowed: SGD, Adadelta, Adagrad, Adam, Adamax"),
    ({"lr": 0}, "lr: 0.0 is not allowed"),
    ({"lr": -0.01}, "lr: -0.01 is not allowed"),
    ({"TRIAL_BUDGET": 0}, "TRIAL_BUDGET: 0 is not allowed"),
    ({"momentun": 0.9}, "NNI parameter 'momentun' is not a config field"),
])
def test_bad_tuner_parameters_are_one_clear_error(params, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _config(["--data", "fake"], params)


@pytest.mark.parametrize("flags, named", [(["--model", "nope"], "model: unknown value 'nope'"),
                                          (["--optimizer", "Nadam"], "optimizer: unknown value 'Nadam'"),
                                          (["--lr", "0"], "lr: 0.0 is not allowed")])
def test_bad_parameter_fails_at_once_with_one_line(tmp_path, capsys, flags, named):
    with pytest.raises(SystemExit) as exit_:
        trial.main([*FAKE_FLAGS, *flags, "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and named in err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())                                  # nothing half-written


def test_bad_parameter_as_a_process_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "hpo/trial.py"), *FAKE_FLAGS, "--model", "resnet1000",
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: model: unknown value 'resnet1000'; allowed: densenet121, dpn92, googlenet, "
                                   "mobilenet, resnet18, senet18, shufflenetg2, vgg")
    assert not list(tmp_path.iterdir())


def test_wide_space_draws_valid_trials_and_the_nni_example_recipe_resolves():
    wide = yaml.safe_load((REPO / "hpo/config_wide.yml").read_text())
    space = wide["searchSpace"]
    assert space["lr"] == {"_type": "loguniform", "_value": [0.0001, 1.0]}
    assert space["optimizer"]["_value"] == ["SGD", "Adadelta", "Adagrad", "Adam", "Adamax"]
    assert space["model"] == json.loads((REPO / "hpo/search_space.json").read_text())["model"]
    tuner = FixedTpe(optimize_mode="maximize", seed=0, include_intermediate_results=False)
    tuner.update_search_space(space)
    drawn = [tuner.generate_parameters(i) for i in range(30)]
    lrs = [p["lr"] for p in drawn]
    assert all(1e-4 <= lr <= 1.0 for lr in lrs) and min(lrs) < 1e-3 and max(lrs) > 0.1   # log-uniform spread
    for params in drawn[:5]:                        # every drawn set is a valid trial configuration
        cfg = _config(["--data", "fake"], params)
        assert (cfg.optimizer, cfg.lr) == (params["optimizer"], params["lr"])
    # NNI's example recipe: what its nnictl config's trials resolve to
    command = yaml.safe_load((REPO / "hpo/config_nni_example.yml").read_text())["trialCommand"]
    assert "--config ../configs/recipe_nni_example.yml" in command
    nni_cfg = _config(["--config", str(REPO / "configs/recipe_nni_example.yml"), "--data", "fake"])
    default = _config(["--data", "fake"])
    assert (nni_cfg.weight_decay, nni_cfg.scheduler) == (0.0, "none")
    assert (default.weight_decay, default.scheduler) == (5e-4, "cosine")
    same = ("batch_size", "crop_padding", "flip", "cutout", "momentum", "epochs", "val_fraction", "lr_min")
    assert {k: getattr(nni_cfg, k) for k in same} == {k: getattr(default, k) for k in same}   # only the two differ


@pytest.mark.parametrize("text", ["see http://x", "a#b"])
def test_nni_cannot_read_back_a_parameter_with_a_comment_mark(text):
    """Why such a search space is refused: the message that ends a trial carries its parameters,
    and NNI 3.0's dispatcher reads it with comments stripped (NNI's own reader, as its websocket
    connection calls it)."""
    import nni

    hyper_params = json.dumps({"parameter_id": 0, "parameters": {"optimizer": text}, "parameter_index": 0})
    message = json.dumps({"type": "EN", "content": json.dumps({"trial_job_id": "a", "hyper_params": hyper_params})})
    with pytest.raises(ValueError):
        nni.load(message)
    plain = message.replace(text, "Adam")
    assert nni.load(nni.load(nni.load(plain)["content"])["hyper_params"])["parameters"] == {"optimizer": "Adam"}


@pytest.mark.parametrize("where, space, named", [
    ("file", {"optimizer": {"_type": "choice", "_value": ["Adam", "see http://x"]}},
     "search space optimizer._value[1]: 'see http://x' contains '//'"),
    ("inline", {"optimizer": {"_type": "choice", "_value": ["Adam", "a#b"]}},
     "search space optimizer._value[1]: 'a#b' contains '#'"),
    ("inline", {"lr#2": {"_type": "choice", "_value": [0.1]}}, "search space lr#2: 'lr#2' contains '#'"),
    ("file", {"net": {"_type": "choice", "_value": [{"_name": "a", "note": "x // y"}]}},
     "search space net._value[0].note: 'x // y' contains '//'"),
])
def test_a_search_space_string_with_a_comment_mark_is_refused_before_nnictl_create(tmp_path, capsys, where, space,
                                                                                  named):
    from experiments import nni_config

    config = yaml.safe_load((REPO / "hpo/config_smoke.yml").read_text())
    config["trialCodeDirectory"] = config["tuner"]["codeDirectory"] = str(REPO / "hpo")
    if where == "file":
        (tmp_path / "space.json").write_text(json.dumps(space))
        config["searchSpaceFile"] = str(tmp_path / "space.json")
    else:
        del config["searchSpaceFile"]
        config["searchSpace"] = space
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_:
        nni_config.main([str(path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: nnictl config {str(path)!r}: {named}, which NNI's message reader strips"), err
    assert "stay RUNNING" in err
    text = json.dumps(space).replace("#", "-").replace("//", "/")        # the same space, without the marks
    if where == "file":
        (tmp_path / "space.json").write_text(text)
    else:
        path.write_text(yaml.safe_dump({**config, "searchSpace": json.loads(text)}))
    assert nni_config.main([str(path)]) == 0


def test_quick_nni_example_config_is_the_quick_experiment_with_the_other_recipe():
    """hpo/config_quick_nni_example.yml is hpo/config_quick.yml (space, budget, tuner, assessor,
    data sizes, epochs, batch) with NNI's example recipe: its trials differ from the quick
    experiment's in weight decay and schedule only, the two settings that make the recipes differ."""
    import shlex

    from core.config import to_dict

    quick = yaml.safe_load((REPO / "hpo/config_quick.yml").read_text())
    other = yaml.safe_load((REPO / "hpo/config_quick_nni_example.yml").read_text())
    keys = set(quick) - {"experimentName", "trialCommand"}
    assert set(other) == set(quick) and {k: other[k] for k in keys} == {k: quick[k] for k in keys}

    def resolved(config: dict) -> dict:
        words = shlex.split(config["trialCommand"].replace("${CIFAR_AUTOML_TRIAL_FLAGS:-}", ""))
        assert words[:2] == ["python3", "trial.py"]
        args = [str((REPO / "hpo" / w).resolve()) if w.startswith("../") else w for w in words[2:]]
        return to_dict(_config([*args, "--data", "fake"], {"model": "mobilenet", "optimizer": "Adam", "lr": 0.01}))
    a, b = resolved(quick), resolved(other)
    assert {k for k in a if a[k] != b[k]} == {"weight_decay", "scheduler"}
    assert (b["weight_decay"], b["scheduler"], b["batch_size"], b["epochs"], b["subset"]) == (0.0, "none", 64, 2, 2000)


# --- running trials -----------------------------------------------------------------------------

def test_trial_standalone_from_repo_root_and_from_hpo(tmp_path):
    """`python hpo/trial.py` from the repo root, and `python trial.py` inside hpo/."""
    for cwd, script, epochs in ((REPO, "hpo/trial.py", 2), (REPO / "hpo", "trial.py", 1)):
        out = tmp_path / cwd.name
        proc = subprocess.run([sys.executable, script, *FAKE_FLAGS, "--model", "shufflenetg2", "--epochs", str(epochs),
                               "--out-dir", str(out)], cwd=cwd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        final = json.loads(proc.stdout.strip().splitlines()[-1])
        assert 0.0 <= final["default"] == final["val_acc"] <= 1.0
        assert (final["model"], final["optimizer"], final["epoch"]) == ("shufflenetg2", "Adam", epochs)
        assert 0.0 <= final["test_acc"] <= 1.0
        (run,) = out.iterdir()
        assert {"config.yaml", "metrics.jsonl", "train.log", "result.json"} <= {p.name for p in run.iterdir()}
        assert not (run / "checkpoint.pt").exists()           # dropped at the end unless --keep-checkpoint
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [m["epoch"] for m in metrics] == list(range(1, epochs + 1))
        assert all("test_acc" not in m for m in metrics)                  # test only at the end


def test_trial_reports_every_epoch_into_nni_output_dir(tmp_path):
    cfg = _config([*FAKE_FLAGS, "--epochs", "2", "--keep-checkpoint"], {"model": "mobilenet", "lr": 0.01,
                                                                          "optimizer": "Adamax"})
    reporter = Recorder(tmp_path / "trial")
    final = trial.run_trial(cfg, reporter)
    assert len(reporter.intermediates) == 2 and reporter.finals == [final]
    assert final["default"] == reporter.intermediates[-1]                  # final = last validation accuracy
    assert (final["model"], final["optimizer"], final["lr"]) == ("mobilenet", "Adamax", 0.01)
    assert {"config.yaml", "metrics.jsonl", "checkpoint.pt", "result.json"} <= {p.name for p in (tmp_path / "trial").iterdir()}


def test_diverging_trial_reports_a_minimal_result_and_returns(tmp_path):
    class Exploding(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.fc = nn.Linear(3 * 32 * 32, n)

        def forward(self, x):
            return self.fc(x.flatten(1)) * float("nan")

    cfg = _config([*FAKE_FLAGS, "--epochs", "3"])
    reporter = Recorder(tmp_path / "trial")
    final = trial.run_trial(cfg, reporter, build_model=Exploding)
    assert final["default"] == 0.0 and final["diverged"] == 1
    assert reporter.finals == [final] and reporter.intermediates == []
    saved = json.loads((tmp_path / "trial" / "result.json").read_text())
    assert saved["default"] == 0.0 and "became nan" in saved["reason"]


def test_a_trial_whose_evaluation_no_longer_computes_is_diverged_from_that_epoch(tmp_path):
    """BatchNorm can keep the training loss finite while the evaluated network is NaN (vgg, SGD, lr
    1e10): that epoch is not a result; the trial ends diverged as for a NaN training loss."""
    class NanOnceEvaluatedTwice(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.fc = nn.Linear(3 * 32 * 32, n)
            self.evaluations = 0

        def train(self, mode=True):
            self.evaluations += not mode
            return super().train(mode)

        def forward(self, x):
            out = self.fc(x.flatten(1))
            return out * float("nan") if not self.training and self.evaluations >= 2 else out

    cfg = _config([*FAKE_FLAGS, "--epochs", "3"])
    reporter = Recorder(tmp_path / "trial")
    final = trial.run_trial(cfg, reporter, build_model=NanOnceEvaluatedTwice)
    assert final["default"] == 0.0 and final["diverged"] == 1
    assert len(reporter.intermediates) == 1 and reporter.finals == [final]      # epoch 1 only
    saved = json.loads((tmp_path / "trial" / "result.json").read_text())
    assert "no longer computes on the validation split in epoch 2" in saved["reason"]


def test_trial_on_real_jpeg_subset(tmp_path, cifar_jpeg, data_root):
    proc = subprocess.run([sys.executable, str(REPO / "hpo/trial.py"), "--data", str(cifar_jpeg), "--data-root",
                           str(data_root), "--subset", "256", "--val-subset", "256", "--epochs", "1", "--batch-size", "32",
                           "--max-batches", "4", "--model", "mobilenet", "--no-final-test", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    final = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0.0 <= final["val_acc"] <= 1.0 and "test_acc" not in final
    (run,) = tmp_path.iterdir()
    assert "256 training images" in (run / "train.log").read_text()


# --- the experiment reader ----------------------------------------------------------------------

def _fake_db(path: Path) -> Path:
    """An experiment database as NNI 3.0 writes it, with two concurrent trials whose recorded
    parameters are swapped (what NNI 3.0's local training service does) and one failed trial."""
    path.mkdir(parents=True)
    db = path / "nni.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE TrialJobEvent (timestamp integer, trialJobId text, event text, data text, "
                "logPath text, sequenceId integer, message text, environmentId text)")
    con.execute("CREATE TABLE MetricData (timestamp integer, trialJobId text, parameterId text, type text, "
                "sequence integer, data text)")

    def params(pid, **p):
        return json.dumps({"parameter_id": pid, "parameter_source": "algorithm", "parameters": p, "parameter_index": 0})

    rows = [(1, "AAAAA", "WAITING", None, None, 0), (2, "AAAAA", "RUNNING", params(0, lr=0.01, x=0), str(path / "A"), 0),
            (3, "BBBBB", "RUNNING", params(1, lr=0.001, x=1), str(path / "B"), 1),
            (9, "AAAAA", "SUCCEEDED", None, None, 0), (10, "BBBBB", "USER_CANCELED", None, None, 1),
            (11, "CCCCC", "RUNNING", params(2, lr=-1.0, x=2), str(path / "C"), 2),
            (12, "CCCCC", "FAILED", None, None, 2)]
    con.executemany("INSERT INTO TrialJobEvent VALUES (?,?,?,?,?,?,NULL,'local-env')", rows)
    metric = lambda v: json.dumps(json.dumps(v))  # noqa: E731  (NNI's double encoding)
    con.executemany("INSERT INTO MetricData VALUES (?,?,?,?,?,?)", [
        (4, "AAAAA", "1", "PERIODICAL", 1, metric(0.3)), (5, "AAAAA", "1", "PERIODICAL", 0, metric(0.2)),
        (6, "BBBBB", "0", "PERIODICAL", 0, metric(0.1)),
        (8, "AAAAA", "1", "FINAL", 0, metric({"default": 0.3, "test_acc": 0.25}))])
    con.commit()
    con.close()
    (path / "C").mkdir()
    (path / "C" / "trial.stderr").write_text("error: lr: -1.0 is not allowed; the learning rate must be positive\n")
    return db


def test_reader_takes_parameters_from_what_trials_reported(tmp_path):
    db = _fake_db(tmp_path / "exp" / "db")
    for source in (db, tmp_path / "exp"):
        a, b, c = results.load_experiment(source)
        assert (a.trial_id, a.status, a.final, a.intermediates) == ("AAAAA", "SUCCEEDED", 0.3, [0.2, 0.3])
        assert a.params == {"lr": 0.001, "x": 1} and a.params_source == "metrics"     # not the recorded x=0
        assert b.params == {"lr": 0.01, "x": 0} and b.final is None and b.early_stopped
        assert c.status == "FAILED" and c.epochs_run == 0 and "lr: -1.0" in c.error
        assert results.best_trial([a, b, c]).trial_id == "AAAAA"
        budget = results.epoch_budget([a, b, c], full_epochs=2)
        assert budget == {"trials": 3, "configurations": 2, "epochs_run": 3, "epochs_if_all_ran_to_end": 4,
                          "epochs_saved": 1}


def test_hyperband_savings_count_a_promoted_configuration_once():
    def t(pid, budget, epochs):
        return results.Trial(trial_id=pid, status="SUCCEEDED", params={"TRIAL_BUDGET": budget, "lr": 0.01},
                             parameter_id=pid, intermediates=[0.1] * epochs, final=0.1)

    # bracket 0-1: configs 0, 1, 2 for 1 epoch, config 2 promoted to 3; bracket 0-0: configs 3, 4 for 3
    trials = [t("0-1_0_0", 1, 1), t("0-1_0_1", 1, 1), t("0-1_0_2", 1, 1), t("0-0_0_3", 3, 3), t("0-0_0_4", 3, 3),
              t("0-1_1_2", 3, 3)]
    assert results.epoch_budget(trials, full_epochs=3) == {
        "trials": 6, "configurations": 5, "epochs_run": 12, "epochs_if_all_ran_to_end": 15, "epochs_saved": 3}


def test_reader_finds_an_experiment_by_id(tmp_path, monkeypatch):
    _fake_db(tmp_path / "work" / "abcd1234" / "db")
    home = tmp_path / "home"
    (home / "nni-experiments").mkdir(parents=True)
    (home / "nni-experiments" / ".experiment").write_text(json.dumps({"abcd1234": {"logDir": str(tmp_path / "work")}}))
    monkeypatch.setenv("HOME", str(home))
    assert results.best_trial(results.load_experiment("abcd1234")).trial_id == "AAAAA"
    assert len(results.load_experiment("abcd1234", experiments_dir=tmp_path / "work")) == 3
    with pytest.raises(UserError, match="experiment 'zzzz9999': no folder"):
        results.load_experiment("zzzz9999")


def test_every_reader_ranks_only_valid_accuracies_of_trials_that_did_not_diverge(tmp_path, capsys, monkeypatch):
    """One rule (experiments.reader.rank_problem): a final edited to 1.5, or a trial that diverged, is
    never best for hpo/results.py, retrain --experiment, --top K or --from-hpo."""
    from experiments.reader import rank_problem
    from experiments.from_hpo import hpo_winner
    from tests.test_report import HPO_TRIALS, RETRAIN, _fake_experiment

    exp = _fake_experiment(tmp_path / "exp0edited", "hpo", [*HPO_TRIALS, {
        "id": "zzzzz", "params": {"model": "vgg", "optimizer": "Adagrad", "lr": 0.01}, "curve": [0.6], "final": 1.5,
        "status": "SUCCEEDED"}, {
        "id": "yyyyy", "params": {"model": "vgg", "optimizer": "Adamax", "lr": 0.001}, "curve": [0.9], "final": 0.9,
        "status": "SUCCEEDED", "extra": {"diverged": 1}}])
    trials = results.load_experiment(exp)
    assert [t.trial_id for t in results.ranked(trials)] == ["aaaaa", "ddddd", "ccccc"]
    why = {t.trial_id: rank_problem(t) for t in trials}
    assert why["zzzzz"] == "final result 1.5 is invalid (an accuracy lies in [0, 1])" and why["yyyyy"] == "diverged"
    assert results.main([str(exp), "--json"]).trial_id == "aaaaa"
    capsys.readouterr()
    results.main([str(exp), "--top", "1"])
    out = capsys.readouterr().out
    assert "best: trial aaaaa" in out and "zzzzz" not in out
    results.main([str(exp)])
    assert "[not ranked: final result 1.5 is invalid" in capsys.readouterr().out
    assert hpo_winner(exp).lr == 0.001                                        # --from-hpo
    with pytest.raises(SystemExit) as exit_:                                  # retrain --experiment
        retrain.main(["--experiment", str(exp), "--print-config"])
    assert exit_.value.code == 0 and yaml.safe_load(capsys.readouterr().out)["model"] == "mobilenet"
    trained = []
    monkeypatch.setattr("core.run_training.train", lambda cfg, *a, **k: trained.append(cfg.model) or {"test_acc": 0.1})
    rows = retrain.main(["--experiment", str(exp), "--top", "1", *RETRAIN, "--out-dir", str(tmp_path / "runs")])
    assert [r["trial_id"] for r in rows] == ["aaaaa"] and trained == ["mobilenet"]


def test_reader_reads_nnictl_exports(tmp_path):
    # nnictl's export pairs NNI's recorded parameters (maybe another trial's) with the value;
    # our trials repeat theirs in the value, and the reader prefers those.
    value = {"default": 0.61, "test_acc": 0.6, "model": "vgg", "optimizer": "Adam", "lr": 0.001}
    records = [{"parameter": {"lr": 0.01, "optimizer": "Adagrad", "model": "dpn92"}, "value": json.dumps(value),
                "trialJobId": "T1", "intermediate": ["0.5", "0.61"]},
               {"parameter": {"lr": 0.01, "optimizer": "Adam", "model": "vgg"}, "value": "0.4", "trialJobId": "T2"}]
    (tmp_path / "e.json").write_text(json.dumps(records))
    best = results.best_trial(results.load_experiment(tmp_path / "e.json"))
    assert (best.trial_id, best.final, best.intermediates) == ("T1", 0.61, [0.5, 0.61])
    assert results.searched_params(best) == {"lr": 0.001, "optimizer": "Adam", "model": "vgg"}
    (tmp_path / "e.csv").write_text("lr,optimizer,model,default,test_acc,trialJobId\n"
                                    "0.001,Adam,vgg,0.61,0.6,T1\n0.01,Adagrad,dpn92,0.4,0.39,T2\n")
    best = results.best_trial(results.load_experiment(tmp_path / "e.csv"))
    assert (best.trial_id, best.final, best.params["model"], best.params["lr"]) == ("T1", 0.61, "vgg", 0.001)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="not an `nnictl experiment export` list"):
        results.load_experiment(tmp_path / "bad.json")


def test_results_command_and_bad_source(tmp_path):
    _fake_db(tmp_path / "exp" / "db")
    proc = subprocess.run([sys.executable, str(REPO / "hpo/results.py"), str(tmp_path / "exp"), "--epochs", "2"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "best: trial AAAAA final 0.3000" in proc.stdout and '"epochs_saved": 1' in proc.stdout
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line[:5] in ("AAAAA", "BBBBB")}
    assert lines["BBBBB"].split()[1] == "EARLY_STOPPED" and "USER_CANCELED" not in proc.stdout   # the reports' word
    proc = subprocess.run([sys.executable, str(REPO / "hpo/results.py"), str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_results_table_marks_results_at_chance():
    def t(tid, final, images=1000, classes=10):
        return results.Trial(trial_id=tid, status="SUCCEEDED", params={"lr": 0.01}, final=final, intermediates=[final],
                             final_metrics={"default": final, "val_images": images, "classes": classes})

    # 10 classes, 1,000 validation images: at chance up to 0.1 + 2 x 0.0095
    table = {line.split()[0]: line for line in results.format_table([t("LOW01", 0.1), t("EDGE1", 0.118),
                                                                      t("ABOVE", 0.121), t("UNKNW", 0.1, classes=None)]
                                                                     ).splitlines()[1:]}
    assert table["LOW01"].endswith("(at chance)") and table["EDGE1"].endswith("(at chance)")
    assert "at chance" not in table["ABOVE"] and "at chance" not in table["UNKNW"]    # classes unknown: not said


# --- retrain ------------------------------------------------------------------------------------

def test_retrain_the_best_of_an_export_on_the_full_training_split(tmp_path):
    value = {"default": 0.7, "model": "shufflenetg2", "optimizer": "Adamax", "lr": 0.01}
    export = tmp_path / "export.json"
    export.write_text(json.dumps([{"parameter": {"lr": 0.001, "optimizer": "Adam", "model": "vgg", "TRIAL_BUDGET": 3},
                                   "value": json.dumps(value), "trialJobId": "BEST"},
                                  {"parameter": {"lr": 0.001, "optimizer": "Adam", "model": "vgg"},
                                   "value": "0.2", "trialJobId": "WORSE"}]))
    result = retrain.main(["--export", str(export), "--data", "fake", "--epochs", "1", "--max-batches", "2",
                           "--batch-size", "8", "--out-dir", str(tmp_path / "runs")])
    run = Path(result["run_dir"])
    config = (run / "config.yaml").read_text()
    assert "model: shufflenetg2" in config and "optimizer: Adamax" in config and "lr: 0.01" in config
    assert "val_fraction: 0.0" in config and "epochs: 1" in config
    assert "val_acc" not in result and 0.0 <= result["test_acc"] <= 1.0
    origin = json.loads((run / "hpo_best.json").read_text())
    # the parameters the trial repeated in its result, without Hyperband's budget
    assert origin["trial_id"] == "BEST" and origin["params"] == {"lr": 0.01, "optimizer": "Adamax", "model": "shufflenetg2"}


def test_retrain_defaults_to_the_long_schedule():
    cfg = retrain.RetrainConfig()
    assert (cfg.epochs, cfg.val_fraction) == (200, 0.0)


def test_retrain_bad_input_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "hpo/retrain.py"), "--export", str(tmp_path / "none.json")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: export file {str(tmp_path / 'none.json')!r} does not exist"


# --- the NNI 3.0 fixes, unit level --------------------------------------------------------------

SPACE = json.loads((REPO / "hpo/search_space.json").read_text())


def test_fixed_tpe_accepts_a_result_whose_parameters_were_ended_under_another_trial():
    tuner = FixedTpe(optimize_mode="maximize", seed=0, include_intermediate_results=False)   # no global switch
    tuner.update_search_space(SPACE)
    p0, p1 = tuner.generate_parameters(0), tuner.generate_parameters(1)
    tuner.trial_end(0, False)                 # NNI ends trial "0" (which really ran parameters 1)...
    tuner.receive_trial_result(0, p0, {"default": 0.5})   # ...then the trial that ran 0 reports: no KeyError
    tuner.receive_trial_result(1, p1, 0.4)
    assert tuner._running_params == {}


def _new_jobs(sent):
    import nni

    return [nni.load(data) for command, data in sent if command.name == "NewTrialJob"]


def test_fixed_hyperband_handles_string_ids_and_books_trial_ends_by_reported_id(monkeypatch):
    import nni
    from nni.runtime import msg_dispatcher_base

    # NNI's own unit-test channel address: the advisor is built without connecting to a manager
    monkeypatch.setattr(msg_dispatcher_base, "dispatcher_env_vars", msg_dispatcher_base.dispatcher_env_vars._replace(
        NNI_TUNER_COMMAND_CHANNEL="ws://_unittest_placeholder_"))
    advisor = FixedHyperband(optimize_mode="maximize", R=3, eta=3)
    sent = []
    advisor.send = lambda command, data: sent.append((command, data))   # no dispatcher channel here
    advisor.handle_initialize(SPACE)
    advisor.handle_request_trial_jobs(5)      # bracket 0-1: 3 configs x 1 epoch; bracket 0-0: 2 configs x 3
    jobs = _new_jobs(sent)
    assert [j["parameters"]["TRIAL_BUDGET"] for j in jobs] == [1, 1, 1, 3, 3]
    assert not advisor.is_created_in_previous_exp(jobs[0]["parameter_id"])      # NNI 3.0: TypeError

    def report_and_end(trial_id, ran, recorded, value):
        advisor.handle_report_metric_data({"parameter_id": ran["parameter_id"], "trial_job_id": trial_id,
                                           "type": "FINAL", "sequence": 0, "value": nni.dump({"default": value})})
        advisor.handle_trial_end({"trial_job_id": trial_id, "event": "SUCCEEDED", "hyper_params": nni.dump(recorded)})

    # NNI recorded T2 with job 2 and T3 with job 3, but they ran each other's parameters
    report_and_end("T0", jobs[0], jobs[0], 0.1)
    report_and_end("T1", jobs[1], jobs[1], 0.2)
    report_and_end("T2", jobs[3], jobs[2], 0.3)
    bracket = advisor.brackets["0-1"]
    assert bracket.num_finished_configs[0] == 2 and bracket.i == 1     # job 2 has not finished: no promotion yet
    report_and_end("T3", jobs[2], jobs[3], 0.9)
    advisor.handle_request_trial_jobs(1)
    (promoted,) = _new_jobs(sent)[5:]
    assert promoted["parameters"]["TRIAL_BUDGET"] == 3 and promoted["parameter_id"].startswith("0-1_1_")
    assert promoted["parameter_id"].split("_")[-1] == jobs[2]["parameter_id"].split("_")[-1]  # the 0.9 one


# --- the tuner learns from early-stopped trials -------------------------------------------------

def _nnictl_configs_with_assessor() -> list[Path]:
    configs = [p for p in sorted({*REPO.glob("*/config*.yml"), *REPO.glob("configs/*.yml")})
               if "trialCommand" in (loaded := yaml.safe_load(p.read_text()) or {}) and loaded.get("assessor")]
    assert REPO / "hpo/config.yml" in configs and len(configs) >= 6
    return configs


@pytest.mark.parametrize("config", _nnictl_configs_with_assessor(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_with_an_assessor_has_a_tuner_that_learns_from_early_stops(config, monkeypatch):
    """Built the way NNI's dispatcher builds it (class from codeDirectory, classArgs as given), the
    tuner switches the dispatcher's NNI_INCLUDE_INTERMEDIATE_RESULTS on: nothing to set in the shell."""
    from nni.runtime import env_vars, msg_dispatcher
    from nni.tools.package_utils import create_customized_class_instance

    off = env_vars.dispatcher_env_vars._replace(NNI_INCLUDE_INTERMEDIATE_RESULTS="false")  # what NNI 3.0's manager sets
    monkeypatch.setattr(env_vars, "dispatcher_env_vars", off)
    monkeypatch.setattr(msg_dispatcher, "dispatcher_env_vars", off)
    tuner = yaml.safe_load(config.read_text())["tuner"]
    assert tuner.get("className") == "nni_fixes.FixedTpe", f"{config.name}: NNI's tuners miss early-stopped trials"
    code_dir = (config.parent / tuner["codeDirectory"]).resolve()
    assert code_dir == REPO / "hpo"
    monkeypatch.syspath_prepend(str(code_dir))
    instance = create_customized_class_instance({"codeDirectory": str(code_dir), "className": tuner["className"],
                                                 "classArgs": tuner.get("classArgs")})
    assert instance.include_intermediate_results
    assert msg_dispatcher.dispatcher_env_vars.NNI_INCLUDE_INTERMEDIATE_RESULTS == "true"


class _StopEverything:
    """An assessor that stops every trial at its first intermediate result."""

    def assess_trial(self, trial_job_id, trial_history):
        from nni.assessor import AssessResult

        return AssessResult.Bad

    def trial_end(self, trial_job_id, success):
        pass


def _dispatcher(monkeypatch, include: bool):
    """NNI's own dispatcher (no manager: NNI's unit-test channel) with FixedTpe and an assessor, the
    environment as NNI 3.0's manager sets it."""
    from nni.runtime import env_vars, msg_dispatcher

    off = env_vars.dispatcher_env_vars._replace(NNI_INCLUDE_INTERMEDIATE_RESULTS="false")
    monkeypatch.setattr(env_vars, "dispatcher_env_vars", off)
    monkeypatch.setattr(msg_dispatcher, "dispatcher_env_vars", off)
    tuner = FixedTpe(optimize_mode="maximize", seed=0, include_intermediate_results=include)
    dispatcher = msg_dispatcher.MsgDispatcher("ws://_unittest_placeholder_", tuner, _StopEverything())
    sent = []
    dispatcher.send = lambda command, data: sent.append((command, data))
    dispatcher.handle_initialize(SPACE)
    dispatcher.handle_request_trial_jobs(2)
    return dispatcher, tuner, _new_jobs(sent)


def _drain(dispatcher) -> None:
    """Run what the dispatcher queued for itself (its worker threads are not started here)."""
    while not dispatcher.default_command_queue.empty():
        dispatcher.process_command(*dispatcher.default_command_queue.get_nowait())


def test_dispatcher_hands_an_early_stopped_trial_s_last_result_to_fixed_tpe(monkeypatch, caplog):
    import logging

    import nni

    dispatcher, tuner, (job, other) = _dispatcher(monkeypatch, include=True)
    caplog.set_level(logging.INFO, logger="nni_fixes")
    caplog.set_level(logging.INFO, logger="hpo.nni_fixes")
    dispatcher.handle_report_metric_data({"parameter_id": job["parameter_id"], "trial_job_id": "T0",
                                          "type": "PERIODICAL", "sequence": 0, "value": nni.dump(0.25)})
    _drain(dispatcher)
    key = next(iter(tuner._params[job["parameter_id"]]))
    assert any(record.loss == -0.25 for record in tuner._history[key])        # TPE minimises -accuracy
    assert job["parameter_id"] in tuner._received and job["parameter_id"] not in tuner._running_params
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(RECEIVED_TAG)]
    assert json.loads(line[len(RECEIVED_TAG):]) == {"parameter_id": job["parameter_id"], "trial_job_id": "T0",
                                                     "value": 0.25, "early_stopped": True}
    # the trial was stopped at its last epoch and also sent its own final result: counted once
    dispatcher.handle_trial_end({"trial_job_id": "T0", "event": "USER_CANCELED", "hyper_params": nni.dump(job)})
    dispatcher.handle_report_metric_data({"parameter_id": job["parameter_id"], "trial_job_id": "T0", "type": "FINAL",
                                          "sequence": 0, "value": nni.dump({"default": 0.25})})
    assert sum(len(records) for records in tuner._history.values()) == len(tuner._params[job["parameter_id"]])
    # a trial that runs to the end is learnt from as before
    dispatcher.handle_report_metric_data({"parameter_id": other["parameter_id"], "trial_job_id": "T1", "type": "FINAL",
                                          "sequence": 0, "value": nni.dump({"default": 0.5, "test_acc": 0.4})})
    assert other["parameter_id"] in tuner._received and not tuner._running_params


def test_without_the_switch_nni_3_s_dispatcher_tells_the_tuner_nothing(monkeypatch):
    import nni

    dispatcher, tuner, (job, _) = _dispatcher(monkeypatch, include=False)
    dispatcher.handle_report_metric_data({"parameter_id": job["parameter_id"], "trial_job_id": "T0",
                                          "type": "PERIODICAL", "sequence": 0, "value": nni.dump(0.25)})
    _drain(dispatcher)
    assert not tuner._received and not any(tuner._history.values())


# --- the two-recipe ranking measurement (benchmarks/recipe_rank.py), smoke size -----------------

def _recipe_rank():
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe_rank", REPO / "benchmarks/recipe_rank.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_rank_ties_use_the_seed_spread_of_its_control():
    recipe_rank = _recipe_rank()
    names = ["a", "b", "c"]
    acc = {("default", 0): [0.60, 0.57, 0.40], ("nni", 0): [0.50, 0.55, 0.45], ("default", 1): [0.56, 0.60, 0.41]}
    noise = recipe_rank.noise_summary(acc, names, 2000, classes=10)
    spread = ((0.04 ** 2 + 0.03 ** 2 + 0.01 ** 2) / 2 / 3) ** 0.5      # pooled over the 3 configurations
    assert noise["seed_sd"] == pytest.approx(spread) and noise["noise"] == pytest.approx(spread)
    assert noise["binomial_se"] == pytest.approx((0.57 * 0.43 / 2000) ** 0.5)       # the largest of the column
    # 0.57 is 0.03 behind 0.60: more than 2 binomial errors (0.022), within 2 seed-to-seed deviations (0.058)
    assert noise["tied_with_best"]["default seed 0"] == ["a", "b"] and "seed-to-seed" in noise["counts"]
    assert noise["best_at_chance"] == {"default seed 0": False, "nni seed 0": False, "default seed 1": False}
    alone = recipe_rank.noise_summary({k: v for k, v in acc.items() if k[1] == 0}, names, 2000)
    assert alone["seed_sd"] is None and alone["tied_with_best"]["default seed 0"] == ["a"]
    assert "validation sampling only" in alone["counts"]
    low = recipe_rank.noise_summary({("default", 0): [0.11, 0.10], ("nni", 0): [0.1, 0.1]}, ["a", "b"], 1000, 10)
    assert low["best_at_chance"]["default seed 0"] is True


def test_recipe_rank_smoke_continues_and_refuses_other_settings(tmp_path, capsys):
    recipe_rank = _recipe_rank()
    assert len(recipe_rank.grid(recipe_rank.read_space(REPO / "hpo/config_quick.yml"))) == 16
    out = tmp_path / "rank"
    argv = ["--data", "fake", "--subset", "64", "--val-subset", "48", "--epochs", "1", "--max-batches", "1",
            "--batch-size", "8", "--limit", "3", "--threads", "1", "--out", str(out)]
    result = recipe_rank.main(argv)
    printed = capsys.readouterr().out
    trials = json.loads((out / "trials.json").read_text())
    assert len(trials) == 9 and {(t["recipe"], t["seed"]) for t in trials} == {
        ("default", 0), ("recipe_nni_example", 0), ("default", 1)}
    runs = {p.name: yaml.safe_load((p / "config.yaml").read_text()) for p in (out / "runs").iterdir()}
    recipes = {(c["weight_decay"], c["scheduler"]) for c in runs.values()}
    assert recipes == {(5e-4, "cosine"), (0.0, "none")}                 # the two recipes really trained
    assert {c["batch_size"] for c in runs.values()} == {8}             # the sizes are the same for both
    assert "Kendall's tau, default vs recipe_nni_example (seed 0): " in printed
    assert "Kendall's tau, default seed 0 vs seed 1 (noise floor): " in printed
    assert set(result) == {"recipes", "seeds", "table", "best", "noise"} and result["recipes"]["n"] == 3
    assert "ties: within 2 x " in printed
    assert json.loads((out / "result.json").read_text()) == result
    from scipy.stats import kendalltau

    table = result["table"]
    expected = kendalltau([r["default seed 0"] for r in table], [r["recipe_nni_example seed 0"] for r in table])
    assert (result["recipes"]["tau"] is None and math.isnan(expected.statistic)) or \
        result["recipes"]["tau"] == pytest.approx(expected.statistic, abs=1e-4)
    # the same command again: nothing is trained twice
    assert recipe_rank.main(argv) == result
    assert "(9 already done)" in capsys.readouterr().out and len(list((out / "runs").iterdir())) == 9
    # other settings into the same folder: one error line, nothing changed
    with pytest.raises(SystemExit) as exit_:
        recipe_rank.main([*argv[:-2], "--epochs", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: --out: ") and "(epochs)" in err
    with pytest.raises(SystemExit):
        recipe_rank.main([*argv[:-2], "--space", str(REPO / "hpo/config_wide.yml"), "--out", str(tmp_path / "w")])
    assert "error: --space: lr is not a 'choice' parameter" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_print_config_checks_data(tmp_path):
    proc = cli(["hpo/trial.py", "--data", tmp_path / "nowhere", "--print-config"])
    one_error_line(proc, f"data: {str(tmp_path / 'nowhere')!r} is neither one of cifar10, fake nor an existing path")
    assert proc.stdout == ""


def test_results_print_each_line_once_under_torchrun(tmp_path):
    exp = _fake_experiment(tmp_path / "exp0ranks", "hpo", HPO_TRIALS)
    outputs = [cli(["hpo/results.py", exp], env={"WORLD_SIZE": "2", "RANK": str(r), "LOCAL_RANK": str(r)})
               for r in (0, 1)]                    # the two processes torchrun --nproc_per_node 2 starts
    assert outputs[0].returncode == outputs[1].returncode == 0
    assert "best: trial aaaaa" in outputs[0].stdout and outputs[1].stdout == "" and outputs[1].stderr == ""


def test_trial_concurrency_0_is_one_line_before_nnictl_create(tmp_path):
    from tests.nni_harness import nni_experiment

    (tmp_path / "exp").mkdir()
    config = tmp_path / "hpo_smoke.yml"
    smoke = yaml.safe_load((REPO / "hpo" / "config_smoke.yml").read_text())
    smoke["searchSpaceFile"] = str((REPO / "hpo" / smoke["searchSpaceFile"]).resolve())
    smoke["trialCodeDirectory"] = str((REPO / "hpo" / smoke["trialCodeDirectory"]).resolve())
    config.write_text(yaml.safe_dump({**smoke, "trialConcurrency": 0}))
    one_error_line(cli(["-m", "experiments.nni_config", config]), "trialConcurrency: 0 is not allowed")
    with pytest.raises(pytest.fail.Exception, match="trialConcurrency: 0 is not allowed"):
        with nni_experiment(config, tmp_path / "exp"):     # the harness checks before `nnictl create`
            pass
    assert not (tmp_path / "exp" / "nni-experiments").exists()


def test_every_nnictl_config_of_the_project_passes_the_check():
    configs = sorted(p for p in [*REPO.glob("configs/*.yml"), *REPO.glob("*/config*.yml")]
                     if "trialCommand" in p.read_text() and "remote" not in p.name)   # remote: need a key file
    assert len(configs) >= 8
    proc = cli(["-m", "experiments.nni_config", *configs])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(": ok") == len(configs)
