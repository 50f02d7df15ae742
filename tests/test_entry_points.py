"""Every script runs from the repository root (``python stage/script.py``) and from inside its
folder (``cd stage && python script.py``), as NNI's own examples do, with no ``sys.path`` edits."""
from __future__ import annotations

import json

import pytest

from tests.conftest import REPO
from tests.helpers import cli

SCRIPTS = ["hpo/trial.py", "hpo/retrain.py", "hpo/results.py", "classic_nas/trial.py", "classic_nas/retrain.py",
           "classic_nas/export.py", "classic_nas/export_space.py", "oneshot_darts/search.py",
           "oneshot_darts/protocol.py", "oneshot_darts/retrain.py", "benchmarks/bench_loader.py",
           "benchmarks/bench_darts.py", "benchmarks/bench_trial.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_from_root_and_from_its_folder(script):
    folder, name = script.split("/")
    for cwd, path in ((REPO, script), (REPO / folder, name)):
        res = cli([path, "--help"], cwd, project_path=False)
        assert res.returncode == 0 and "usage:" in res.stdout, (cwd, res.stderr[-2000:])


def test_no_script_edits_sys_path():
    offenders = [str(p.relative_to(REPO)) for p in REPO.glob("*/*.py")
                 if not p.is_relative_to(REPO / "tests") and "sys.path" in p.read_text()]
    assert offenders == []


def test_darts_retrain_runs_from_inside_its_folder(tmp_path):
    res = cli(["retrain.py", "--arc", "archs/darts_v2.json", "--config", "../configs/darts_retrain_smoke.yml",
               "--epochs", "1", "--max-batches", "1", "--out-dir", str(tmp_path), "--no-progress"],
              REPO / "oneshot_darts", project_path=False)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["epoch"] == 1 and 0.0 <= result["test_acc"] <= 1.0


#: Commands whose --help, --print-config and flag errors come before torch and NNI are imported
#: (seconds each): what they print then must not wait for the training engine. A ModelConfig command
#: (hpo/, core.train_model) imports torch for --print-config only, to check --model against the registry.
LIGHT = {"hpo/trial.py": ["--help"], "hpo/retrain.py": ["--help"], "hpo/results.py": ["--help"],
         "classic_nas/trial.py": ["--data", "fake", "--print-config"],
         "classic_nas/retrain.py": ["--arc", "best_arch.json", "--data", "fake", "--print-config"],
         "classic_nas/export.py": ["--help"], "classic_nas/export_space.py": ["--help"], "-m report": ["--help"],
         "-m core.train_model": ["--help"], "-m experiments.nni_config": ["--help"], "-m lab": ["--help"]}
_PROBE = """\
import runpy, sys
script, *argv = sys.argv[1:]
sys.argv = [script, *argv]
try:
    if script.startswith("-m "):
        runpy.run_module(script[3:], run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(script, run_name="__main__")
except SystemExit:
    pass
print("HEAVY:", sorted({m.split(".")[0] for m in sys.modules} & {"torch", "torchvision", "nni"}))
"""


@pytest.mark.parametrize("command", sorted(LIGHT))
def test_help_and_flag_checks_come_before_torch_and_nni(command):
    res = cli(["-c", _PROBE, command, *LIGHT[command]], REPO, project_path=False)
    assert "usage:" in res.stdout or "data: fake" in res.stdout, res.stdout + res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "HEAVY: []", res.stdout[-500:]


def test_a_bad_flag_of_a_trial_is_reported_before_torch_loads():
    res = cli(["-c", _PROBE, "classic_nas/trial.py", "--data", "fake", "--lr", "-1"], REPO, project_path=False)
    assert "error: lr" in res.stderr and res.stdout.strip().splitlines()[-1] == "HEAVY: []", res.stdout + res.stderr


#: Every command of the project: each module that runs as a script (``if __name__ == "__main__":``).
COMMANDS = sorted(str(p.relative_to(REPO).with_suffix("")).replace("/", ".") for p in REPO.glob("*/*.py")
                  if not p.is_relative_to(REPO / "tests") and 'if __name__ == "__main__":' in p.read_text())


def test_every_command_is_found():
    assert {"hpo.trial", "report.__main__", "experiments.nni_config", "benchmarks.bench_darts"} <= set(COMMANDS)
    assert len(COMMANDS) >= 17


@pytest.mark.parametrize("module", COMMANDS)
def test_a_bad_flag_is_one_error_line_without_the_usage_block(module, capsys, monkeypatch):
    import importlib

    monkeypatch.syspath_prepend(str(REPO / module.split(".")[0]))    # as a script sees its folder
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_:
        main(["--no-such-flag"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert "usage:" not in err and "--no-such-flag" in err or "required" in err, err
    assert "--help" in err, err
