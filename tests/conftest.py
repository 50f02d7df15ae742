"""Shared fixtures: where the real JPEG CIFAR-10 copy lives, and a decoded-image cache per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from core.paths import DATA_ROOT_ENV, RUNS_ENV

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One data root (decoded-image cache) for the whole session, so the JPEG copy decodes once."""
    return tmp_path_factory.mktemp("data_root")


@pytest.fixture(scope="session")
def cifar_jpeg() -> Path:
    if not SHARED_CIFAR.exists():
        pytest.skip(f"real-data check: {SHARED_CIFAR} is absent")
    return SHARED_CIFAR


@pytest.fixture(scope="session", autouse=True)
def hermetic_defaults(tmp_path_factory):
    """Runs and downloads that a test does not place itself go to temporary folders, not into the
    repository's runs/ and data/ (commands and trials started by tests inherit this)."""
    mp = pytest.MonkeyPatch()
    mp.setenv(RUNS_ENV, str(tmp_path_factory.mktemp("runs")))
    mp.setenv(DATA_ROOT_ENV, str(tmp_path_factory.mktemp("default_data_root")))
    yield
    mp.undo()
