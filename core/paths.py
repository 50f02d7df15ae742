"""Where things live, the same wherever a command or an NNI trial starts, and the one place that
names the environment variables a user (or an nnictl config) sets.

Defaults are anchored to the repository, not to the working folder: nnictl starts trials inside
the stage's folder (``hpo/``, ``classic_nas/``, ``oneshot_darts/``), and a user may start a script
from anywhere, yet every command and every trial shares one download and one decode cache in
``<repo>/data`` and writes its runs under ``<repo>/runs``. The environment wins over those
defaults, a ``--config`` YAML or a flag wins over the environment; a relative path given by the
user is taken relative to the folder the command was started in, as for any command-line tool.

Every variable has the prefix :data:`ENV_PREFIX`:

========================== ===================================================================
``CIFAR_AUTOML_DATA``      the data source: ``cifar10`` (default), ``fake``, or an image folder /
                           ``.tar.gz`` of one (``train/<class>/*``, ``test/<class>/*``)
``CIFAR_AUTOML_DATA_ROOT`` where CIFAR-10 is downloaded and decoded images are cached
                           (default ``<repo>/data``)
``CIFAR_AUTOML_RUNS``      the parent folder of run folders (default ``<repo>/runs``)
``CIFAR_AUTOML_TRIAL_FLAGS`` extra flags appended to every trial command of every nnictl config
                           (they come last, so they win): ``--max-batches 2 --device cpu``, say
``CIFAR_AUTOML_FROM_HPO``  classic-NAS trials train every architecture with the optimizer and lr
                           of this HPO experiment's best trial (id or folder; the default of the
                           trial's ``--from-hpo``, :mod:`experiments.from_hpo`)
========================== ===================================================================
"""
from __future__ import annotations

import os
from pathlib import Path

#: The repository root (this file is ``<repo>/core/paths.py``; the project installs editable).
REPO_ROOT = Path(__file__).resolve().parents[1]

ENV_PREFIX = "CIFAR_AUTOML_"
DATA_ENV = ENV_PREFIX + "DATA"
DATA_ROOT_ENV = ENV_PREFIX + "DATA_ROOT"
RUNS_ENV = ENV_PREFIX + "RUNS"
TRIAL_FLAGS_ENV = ENV_PREFIX + "TRIAL_FLAGS"   # read by the nnictl configs' trial commands only
FROM_HPO_ENV = ENV_PREFIX + "FROM_HPO"         # read by classic_nas/trial.py

#: Data sources that are names, not paths (core.data loads them); config fields that hold paths.
NAMED_SOURCES = ("cifar10", "fake")
PATH_FIELDS = ("data_root", "out_dir")

DEFAULT_DATA = "cifar10"
DEFAULT_DATA_ROOT = REPO_ROOT / "data"
DEFAULT_RUNS = REPO_ROOT / "runs"


def _from_env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def default_data() -> str:
    """The data source: ``$CIFAR_AUTOML_DATA``, else ``cifar10``."""
    data = _from_env(DATA_ENV, DEFAULT_DATA)
    return data if data in NAMED_SOURCES else resolve(data)


def default_data_root() -> str:
    """Where data is downloaded and cached: ``$CIFAR_AUTOML_DATA_ROOT``, else ``<repo>/data``."""
    return resolve(_from_env(DATA_ROOT_ENV, str(DEFAULT_DATA_ROOT)))


def default_out_dir() -> str:
    """The parent of run folders: ``$CIFAR_AUTOML_RUNS``, else ``<repo>/runs``."""
    return resolve(_from_env(RUNS_ENV, str(DEFAULT_RUNS)))


def default_from_hpo() -> str | None:
    """The HPO experiment whose winner a classic-NAS trial takes over: ``$CIFAR_AUTOML_FROM_HPO``, else none."""
    return _from_env(FROM_HPO_ENV, "") or None


def resolve(path: str | os.PathLike) -> str:
    """A user-given path made absolute against the current folder (``~`` expanded, symlinks kept)."""
    return os.path.abspath(os.path.expanduser(str(path)))


def absolute_paths(values: dict) -> dict:
    """``values`` (config fields) with every path field made absolute: a run's config.yaml then
    says exactly which data and folders it used, wherever it was started."""
    out = dict(values)
    for key in PATH_FIELDS:
        if isinstance(out.get(key), str) and out[key]:
            out[key] = resolve(out[key])
    if isinstance(out.get("data"), str) and out["data"] not in NAMED_SOURCES:
        out["data"] = resolve(out["data"])
    return out
