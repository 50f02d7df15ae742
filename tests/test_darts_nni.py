"""The nnictl wrappers of the DARTS search and retrain: a real experiment on a free port, on fake
data, reaches DONE with one intermediate result per epoch (what the web UI plots; the search's
also carries the collapse counts of its derived normal cell)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.run_folder import Run
from report.cli import main as report_main
from tests.conftest import REPO
from tests.helpers import decode_json
from tests.nni_harness import nni_experiment
from tests.test_report import check_report

pytestmark = pytest.mark.e2e   # real nnictl experiments: not in the fast suite (pytest -m "not e2e")

SMOKE = "--device cpu --no-progress --data-root {root}"


def _trial_dir(exp) -> Path:
    dirs = [p.parent for p in exp.exp_dir.glob("environments/*/trials/*/config.yaml")]
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.mark.parametrize("stage", ["search", "retrain"])
def test_nnictl_wrapper_reports_every_epoch(tmp_path, stage):
    config = REPO / "oneshot_darts" / ("config.yml" if stage == "search" else "config_retrain.yml")
    command = yaml.safe_load(config.read_text())["trialCommand"]
    yaml_name = f"darts_{stage}.yml"
    assert yaml_name in command
    command = command.replace(yaml_name, f"darts_{stage}_smoke.yml") + " " + SMOKE.format(root=tmp_path / "data")
    key = "val_acc" if stage == "search" else "test_acc"
    with nni_experiment(config, tmp_path, timeout=90, overrides={"trialCommand": command},
                        env={"CIFAR_AUTOML_DATA": "fake", "OMP_NUM_THREADS": "1"}) as exp:
        status = exp.wait_done(timeout=240)
        assert status["status"] == "DONE", (status, exp.logs())
        trials = exp.trials()
        assert [t["status"] for t in trials] == ["SUCCEEDED"], exp.logs()
        metrics = exp.metrics()
        intermediate = [decode_json(m["data"]) for m in metrics if m["type"] == "PERIODICAL"]
        final = [decode_json(m["data"]) for m in metrics if m["type"] == "FINAL"]
        run = Run(_trial_dir(exp))
        epochs = run.read_metrics()
        assert [m["epoch"] for m in epochs] == [1, 2]  # the smoke config's two epochs
        if stage == "search":  # the web UI's fields: validation accuracy (default) and the collapse counts
            assert intermediate == [{"default": m[key], "normal_param_free": m["normal_param_free"],
                                     "normal_skip_connect": m["normal_skip_connect"]} for m in epochs]
        else:
            assert intermediate == [m[key] for m in epochs]  # plain numbers, as assessors expect
        assert len(final) == 1 and final[0]["default"] == epochs[-1][key]
        if stage == "search":
            assert (run.dir / "final_arch.json").is_file() and (run.dir / "arch_weights.json").is_file()
    # the experiment's report holds its one trial and, for the search, the operation weights per
    # edge over the epochs and the derived cells
    text = check_report(report_main([str(exp.exp_dir)]), [t["trialJobId"] for t in trials])
    if stage == "search":
        for name in ("edge_weights_normal", "edge_weights_reduce", "cell_normal", "cell_reduce"):
            assert f"(best_trial_{name}.png)" in text
