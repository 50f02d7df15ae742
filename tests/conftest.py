"""Shared fixtures: where the real JPEG CIFAR-10 copy lives, and a decoded-image cache per session."""
from __future__ import annotations

from pathlib import Path

import pytest

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
