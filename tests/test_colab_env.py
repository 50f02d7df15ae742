"""The notebook as a Colab user runs it today.

A Python 3.13 virtual environment holding Colab's versions of torch, torchvision, numpy, the
Jupyter kernel and the rest of what the project touches (``tests/colab_runtime.txt``; its torch is
the oldest the project supports) stands in for Colab's runtime. notebooks/colab.ipynb runs in a
kernel of that environment with its offline parameters, its own install cell included, to the end;
then the project's test tools (``.[test]``) are installed there too. Neither install may replace a
package the runtime has, except the two that NNI 3.0 pins below Colab's versions.

The environment must be fresh (the project not yet installed in it); building it downloads about
2 GB (torch's CUDA wheel and libraries), so the test does not build it. Build it and run the test
(``.ci/run`` does both, the build in the background while the 3.11 suite runs):

    PY313 -m venv DIR && DIR/bin/pip install -r tests/colab_runtime.txt
    CIFAR_AUTOML_COLAB_VENV=DIR python -m pytest -q tests/test_colab_env.py

Without ``CIFAR_AUTOML_COLAB_VENV`` the test is skipped. pytest and nbclient run in this Python;
only the kernel (and everything the notebook starts) runs in DIR's Python.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from tests.conftest import REPO
from tests.test_notebook import check_offline_outputs, run_offline

COLAB_ENV = "CIFAR_AUTOML_COLAB_VENV"
RUNTIME = Path(__file__).with_name("colab_runtime.txt")
#: NNI 3.0's own pins, below Colab's versions: the only packages of the runtime an install may replace
REPLACED_BY_NNI = {"filelock": SpecifierSet("<3.12"), "typeguard": SpecifierSet(">=3.0.0,<4.1.3")}
KERNEL = "colab-python313"

pytestmark = pytest.mark.e2e   # a real nnictl experiment in the notebook


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_pins() -> dict[str, str]:
    pins = {}
    for line in RUNTIME.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version
    return pins


def installed(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
                         capture_output=True, text=True, check=True).stdout
    return {canonical(p["name"]): p["version"] for p in json.loads(out)}


def replaced(pins: dict[str, str], now: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """Runtime packages whose version changed, {name: (runtime's, now)}; fails on any that NNI's
    pins do not explain."""
    changed = {name: (version, now.get(name)) for name, version in pins.items() if now.get(name) != version}
    unexplained = {name: v for name, v in changed.items()
                   if name not in REPLACED_BY_NNI or v[1] is None or v[1] not in REPLACED_BY_NNI[name]}
    assert not unexplained, f"the install replaced packages of the Colab-shaped runtime: {unexplained}"
    return changed


@pytest.fixture
def colab_python() -> Path:
    venv = os.environ.get(COLAB_ENV)
    if not venv:
        pytest.skip(f"needs {COLAB_ENV}: a fresh Python 3.13 environment built from tests/colab_runtime.txt "
                    "(about 2 GB of downloads; see this file's docstring)")
    python = Path(venv).resolve() / "bin" / "python"
    assert python.is_file(), f"{COLAB_ENV}={venv} has no bin/python"
    return python


def test_notebook_installs_into_colab_shaped_python_313_keeping_its_packages(colab_python, tmp_path, monkeypatch):
    python = colab_python
    pyver = subprocess.run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert pyver == "3.13", f"{python} is Python {pyver}, not Colab's 3.13"
    pins, before = runtime_pins(), installed(python)
    assert {name: before.get(name) for name in pins} == pins, \
        f"{python} does not hold tests/colab_runtime.txt's versions: rebuild it (this file's docstring)"
    assert "cifar-automl" not in before and "nni" not in before, \
        f"{python}'s environment is not fresh (the project is installed): rebuild it"

    # a kernel spec that starts that environment's Python with its own (Colab's) ipykernel
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab-shaped Python 3.13", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"   # as on Colab: its python3 first
    env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))  # HOME is a temporary folder there

    nb, text, lab_dir = run_offline(tmp_path, kernel_name=KERNEL, env=env)
    install = next(i for i, c in enumerate(nb.cells) if '"pip", "install"' in c.source)
    timing = nb.cells[install].metadata.get("execution", {})
    if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
        took = (datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
                - datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00")))
        print(f"the notebook's install cell took {took.total_seconds():.0f} s")
    check_offline_outputs(nb, text, lab_dir, pins)

    after = installed(python)
    assert "cifar-automl" in after and after.get("nni") == "3.0"
    changed = replaced(pins, after)
    print("the notebook's install replaced only", changed or "nothing",
          f"and kept {', '.join(f'{n} {pins[n]}' for n in pins if n not in changed)}")

    # the test tools, as a contributor on such a runtime installs them (.ci/run's 3.13 leg then runs
    # fast tests there): Colab's pytest, nbclient, nbformat, ipykernel and psutil are kept too
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", f"{REPO}[test]"], env=env, check=True)
    assert replaced(pins, installed(python)) == changed
