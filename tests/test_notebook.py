"""notebooks/colab.ipynb, run headless in a real Jupyter kernel with its offline parameters.

The parameters cell (tag ``parameters``) is followed by an injected cell with ``OFFLINE = True``
and a free port, as papermill does; every cell then runs: the install (``pip install -e .``, the
project's version ranges, already satisfied here), ``nnictl create`` of the smoke experiment on synthetic data, the progress
loop until DONE, the results table, a two-batch retrain of the best trial and ``nnictl stop``. HOME
(where nnictl keeps its experiment list and NNI its experiments) is a temporary folder; afterwards
no process started under it may be left. tests/test_colab_env.py runs the same notebook in a
Colab-shaped Python 3.13 environment, where the install really installs.
"""
from __future__ import annotations

import contextlib
import os
import re
import time
from importlib.metadata import version
from pathlib import Path

import nbformat
import psutil
import pytest
from nbclient import NotebookClient

from tests.nni_harness import BIN, free_port, processes_under

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "colab.ipynb"

pytestmark = pytest.mark.e2e   # a real nnictl experiment: not in the fast suite (pytest -m "not e2e")


def test_the_parameters_cell_is_tagged_and_offline_skips_only_the_colab_proxy():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    params = nb.cells[tagged[0]].source
    assert re.search(r"^OFFLINE = False\b", params, re.M) and re.search(r"^PORT = \d+", params, re.M)
    colab = [c.source for c in nb.cells if "google.colab" in c.source]
    assert len(colab) == 1 and "if OFFLINE:" in colab[0] and "serve_kernel_port_as_window(PORT)" in colab[0]


def run_offline(tmp_path: Path, kernel_name: str = "python3", env: dict[str, str] | None = None):
    """Runs the notebook with its offline parameters in the kernel ``kernel_name``, HOME in
    ``tmp_path``; fails if a cell fails or a process started under that HOME is left. Returns the
    executed notebook, the text of its outputs by cell index, and that HOME."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    port = free_port()
    injected = nbformat.v4.new_code_cell(f"# Parameters\nOFFLINE = True\nPORT = {port}\nWAIT_MINUTES = 8\n")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(at + 1, injected)

    home = tmp_path / "home"
    home.mkdir()
    env = dict(env or os.environ, HOME=str(home))
    env.pop("NNI_PLATFORM", None)
    client = NotebookClient(nb, timeout=600, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(REPO / "notebooks")}})
    started = time.monotonic()
    try:
        client.execute(env=env)
    finally:
        took = time.monotonic() - started
        (tmp_path / "executed.ipynb").write_text(nbformat.writes(nb))
        left = processes_under(str(home))
        for proc in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
    print(f"notebook ran in {took:.0f} s")
    assert not left, f"processes left after the notebook: {[' '.join(p.cmdline())[:200] for p in left]}"
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code"), "a cell did not run"
    outputs = {i: "".join(o.get("text", "") for o in c.get("outputs", [])) for i, c in enumerate(nb.cells)
               if c.cell_type == "code"}
    return nb, outputs, home


def check_offline_outputs(text: str, home: Path, versions: dict[str, str]) -> None:
    """What the offline run must show: the smoke experiment DONE with its 4 trials, no Colab proxy,
    the versions line of the install cell (torch, torchvision, numpy as in ``versions``), the
    retrain's test accuracy, the experiment's database under HOME."""
    exp_id = re.search(r"experiment (\w+): configs/hpo_smoke.yml, data fake", text).group(1)
    done = re.search(r"\] DONE: (.*)", text)
    assert done and sum(int(n) for n in re.findall(r"(\d+) [a-z_]+", done.group(1).split(";")[0])) == 4, text
    assert "no Colab proxy window" in text
    # the version a module reports may carry a local suffix that its package's metadata lacks (+cu130)
    line = ", ".join(f"{name} {re.escape(versions[name])}(\\+\\w+)?" for name in ("torch", "torchvision", "numpy"))
    assert re.search(line + r", NNI 3\.0, CUDA available: (True|False)", text), (line, text)
    assert f"{exp_id}" in text and "test_acc" in text
    assert (home / "nni-experiments" / exp_id / "db" / "nni.sqlite").is_file()


def test_notebook_runs_offline_in_a_real_kernel_and_leaves_no_nni_process(tmp_path):
    # the kernel "python3" is this venv's Python; nnictl and the trials run it too
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    _, outputs, home = run_offline(tmp_path, env=env)
    check_offline_outputs("\n".join(outputs.values()), home,
                          {name: version(name) for name in ("torch", "torchvision", "numpy")})
