"""notebooks/colab.ipynb, run headless in a real Jupyter kernel with its offline parameters.

The parameters cell (tag ``parameters``) is followed by an injected cell, as papermill does:
``OFFLINE = True``, ``BUDGET = "smoke"``, a ``LAB_DIR``, a ``WORK_DIR`` and a free port. Every cell
then runs: the install (``pip install -e .``, the project's version ranges, already satisfied here),
the plan, and the lab's six stages at their smallest through ``python -m lab`` (lab/): each stage's
estimate, the HPO and classic-NAS experiments created with nnictl and waited for, the two retrains,
the DARTS protocol and the study report, each stage's table and figures shown inline. ``LAB_DIR``
stands for Google Drive and ``WORK_DIR`` for the runtime's local disk: the lab works in ``WORK_DIR``
and mirrors it to ``LAB_DIR``, as on Colab with Drive mounted. HOME (where nnictl keeps its
experiment list) is a temporary folder; afterwards no process started under it may be left.

The disconnect test kills a first run mid-way, during the classic-NAS experiment (the kernel and
every process started under its HOME, NNI's manager and trials included), wipes HOME and ``WORK_DIR``
as a runtime reset would, and runs the notebook again with a new HOME and the same folders: the
second run must finish the lab without starting a finished stage over. tests/test_colab_env.py runs
the whole notebook uninterrupted in a Colab-shaped Python 3.13 environment, where the install
really installs.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import threading
import time
from importlib.metadata import version
from pathlib import Path

import nbformat
import psutil
import pytest
from nbclient import NotebookClient

from lab.plan import EXPERIMENT_STAGES, STAGES
from tests.conftest import REPO
from tests.helpers import BIN
from tests.nni_harness import free_port, processes_under

NOTEBOOK = REPO / "notebooks" / "colab.ipynb"


def test_the_parameters_cell_is_tagged_and_the_stages_run_in_the_labs_order():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    params = nb.cells[tagged[0]].source
    for name, value in (("OFFLINE", "False"), ("BUDGET", '"quick"'), ("LAB_DIR", '""'), ("PORT", r"\d+")):
        assert re.search(rf"^{name} = {value}(\s|$)", params, re.M), name
    # Colab's own modules only where OFFLINE is not set: the proxy window and the Drive mount
    for cell in (c.source for c in nb.cells if "google.colab" in c.source):
        assert re.search(r"if (not )?OFFLINE", cell), cell
    assert any("serve_kernel_port_as_window(PORT)" in c.source for c in nb.cells)
    assert any("drive.mount(" in c.source for c in nb.cells)
    runs = [m.group(1) for c in nb.cells for m in re.finditer(r'lab\("run", "(\w+)"\)', c.source)]
    assert runs == list(STAGES)
    for cell in (c.source for c in nb.cells if 'lab("run"' in c.source):
        stage = re.search(r'lab\("run", "(\w+)"\)', cell).group(1)
        assert f'show("{stage}")' in cell
        if stage != "study":
            assert cell.index(f'lab("estimate", "{stage}")') < cell.index(f'lab("run", "{stage}")')
        if stage in EXPERIMENT_STAGES:
            assert cell.index(f'lab("start", "{stage}")') < cell.index("web_ui()") < cell.index('lab("run"')


def offline_notebook(lab_dir: Path, work_dir: Path, port: int) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell(f'# Parameters\nOFFLINE = True\nBUDGET = "smoke"\nLAB_DIR = "{lab_dir}"\n'
                                         f'WORK_DIR = "{work_dir}"\nPORT = {port}\n')
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(at + 1, injected)
    return nb


def kill_under(home: Path) -> list[str]:
    """Kill every process started under ``home`` (by pid); returns what was running."""
    left = processes_under(str(home))
    described = []
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            described.append(" ".join(proc.cmdline())[:200])
            proc.kill()
    psutil.wait_procs(left, timeout=30)
    return described


def outputs_text(nb) -> str:
    return "\n".join("".join(o.get("text", "") for o in c.get("outputs", [])) for c in nb.cells
                     if c.cell_type == "code")


def run_offline(tmp_path: Path, kernel_name: str = "python3", env: dict[str, str] | None = None, *,
                lab_dir: Path | None = None, work_dir: Path | None = None, home: Path | None = None):
    """Runs the notebook with its offline parameters in the kernel ``kernel_name``, HOME ``home``
    (default ``tmp_path/home``); fails if a cell fails or a process started under that HOME is left.
    Returns the executed notebook, the text of its outputs, and the lab folder."""
    lab_dir = lab_dir or tmp_path / "drive" / "lab"
    work_dir = work_dir or tmp_path / "local" / "work"
    home = home or tmp_path / "home"
    home.mkdir(parents=True)
    nb = offline_notebook(lab_dir, work_dir, free_port())
    env = dict(env or os.environ, HOME=str(home))
    env.pop("NNI_PLATFORM", None)
    client = NotebookClient(nb, timeout=600, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(REPO / "notebooks")}})
    started = time.monotonic()
    try:
        client.execute(env=env)
    finally:
        took = time.monotonic() - started
        (tmp_path / f"executed-{home.name}.ipynb").write_text(nbformat.writes(nb))
        left = kill_under(home)
    print(f"notebook ran in {took:.0f} s")
    assert not left, f"processes left after the notebook: {left}"
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code"), "a cell did not run"
    return nb, outputs_text(nb), lab_dir


def check_offline_outputs(nb, text: str, lab_dir: Path, versions: dict[str, str]) -> None:
    """What a finished offline run must show: the versions line of the install cell (torch,
    torchvision, numpy as in ``versions``), every stage done in ``LAB_DIR``'s record with the study
    report there, and every stage's table and figures."""
    # the version a module reports may carry a local suffix that its package's metadata lacks (+cu130)
    line = ", ".join(f"{name} {re.escape(versions[name])}(\\+\\w+)?" for name in ("torch", "torchvision", "numpy"))
    assert re.search(line + r", NNI 3\.0, CUDA available: (True|False)", text), (line, text[-3000:])
    record = json.loads((lab_dir / "lab.json").read_text())
    assert {s: record["stages"][s]["status"] for s in STAGES} == dict.fromkeys(STAGES, "done")
    study = (lab_dir / "reports" / "study" / "report.md").read_text()
    assert "## This study beside the lab's and the DARTS paper's" in study
    for cell in nb.cells:
        match = re.search(r'show\("(\w+)"\)', cell.source) if cell.cell_type == "code" else None
        if match:
            images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
            assert images, f"no figure shown for {match.group(1)}"
    assert "this runtime has been up" in text


def experiment_trials(lab_dir: Path, exp_dir: str) -> dict[str, str]:
    """{trial id: last status} of an experiment's database in the lab folder."""
    con = sqlite3.connect(f"file:{lab_dir / exp_dir / 'db' / 'nni.sqlite'}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT trialJobId, event FROM TrialJobEvent ORDER BY timestamp").fetchall()
    finally:
        con.close()
    return {trial: event for trial, event in rows}


@pytest.mark.e2e   # real nnictl experiments, twice
def test_a_run_killed_mid_way_and_reset_finishes_on_its_second_run_without_repeating_finished_work(tmp_path):
    lab_dir, work_dir = tmp_path / "drive" / "lab", tmp_path / "local" / "work"   # Drive; the runtime's disk
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    home1 = tmp_path / "home1"
    home1.mkdir()
    nb = offline_notebook(lab_dir, work_dir, free_port())
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "notebooks")}})
    ended: list[BaseException | None] = []

    def first_run():
        try:
            client.execute(env={**env, "HOME": str(home1)})
            ended.append(None)
        except BaseException as exc:   # noqa: BLE001 - the kill ends it (DeadKernelError)
            ended.append(exc)

    runner = threading.Thread(target=first_run, daemon=True)
    runner.start()
    # the cut: once classic NAS has a finished trial in LAB_DIR (what a reset keeps), mid-experiment
    deadline, nas = time.monotonic() + 480, None
    try:
        while time.monotonic() < deadline and runner.is_alive():
            with contextlib.suppress(OSError, ValueError, KeyError, sqlite3.Error):
                nas = json.loads((lab_dir / "lab.json").read_text())["stages"]["classic_nas"]
                if "SUCCEEDED" in experiment_trials(lab_dir, nas["experiment_dir"]).values():
                    break
            time.sleep(0.3)
        else:
            pytest.fail(f"the first run did not reach classic NAS's first finished trial: {ended}\n"
                        f"{outputs_text(nb)[-3000:]}")
    finally:
        killed = kill_under(home1)               # the kernel, nnictl's manager, the trials
        runner.join(60)
    (tmp_path / "executed-home1.ipynb").write_text(nbformat.writes(nb))
    assert any("ipykernel" in k for k in killed) and any("nni_node" in k for k in killed), killed
    first = json.loads((lab_dir / "lab.json").read_text())
    assert first["stages"]["classic_nas"]["status"] == "running" and "darts_protocol" not in first["stages"]
    hpo_trials = experiment_trials(lab_dir, first["stages"]["hpo"]["experiment_dir"])
    nas_done = {t for t, s in experiment_trials(lab_dir, nas["experiment_dir"]).items() if s == "SUCCEEDED"}
    retrain = lab_dir / first["stages"]["hpo_retrain"]["source"]
    retrain_files = {name: (retrain / name).read_bytes() for name in ("metrics.jsonl", "result.json", "train.log")}

    shutil.rmtree(home1)                         # the reset: HOME and the runtime's disk are gone
    shutil.rmtree(work_dir)
    nb2, text, _ = run_offline(tmp_path, env=env, lab_dir=lab_dir, work_dir=work_dir, home=tmp_path / "home2")

    check_offline_outputs(nb2, text, lab_dir, {name: version(name) for name in ("torch", "torchvision", "numpy")})
    assert re.search(rf"restored \d+ files from {re.escape(str(lab_dir))}", text)
    record = json.loads((lab_dir / "lab.json").read_text())["stages"]
    for stage in ("hpo", "hpo_retrain"):             # finished before the cut: read, not run
        assert f"{stage}: finished earlier" in text
        assert record[stage]["attempts"] == 1 and record[stage]["finished"] == first["stages"][stage]["finished"]
    assert experiment_trials(lab_dir, record["hpo"]["experiment_dir"]) == hpo_trials
    assert {name: (retrain / name).read_bytes() for name in retrain_files} == retrain_files
    # the cut experiment resumed: the same experiment, its finished trials kept
    assert record["classic_nas"]["experiment"] == nas["experiment"] and record["classic_nas"]["attempts"] == 2
    assert f"classic_nas: resuming experiment {nas['experiment']}" in text
    after = experiment_trials(lab_dir, nas["experiment_dir"])
    assert all(after[t] == "SUCCEEDED" for t in nas_done)
    assert record["darts_retrain"]["attempts"] == 1
