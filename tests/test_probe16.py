"""Nothing lost, nothing mixed, no image misread: one test (or a few) per point of issue 16.

``test_16_<point>_...``: the point each test checks. Where a point is about a command, the real
command runs as a subprocess (``cli``) and the test asserts exit status 2, one ``error:`` line,
no traceback, and that nothing was written or changed; checks that need many cases call the
command in this process (``run`` of test_bad_input.py), which is much faster.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from core.config import TrainConfig, from_dict, read_yaml
from core.data import load_source
from core.errors import UserError
from tests.conftest import REPO
from tests.helpers import FAST, cli, image_folder, one_error_line, report, run, state
from tests.test_download import archive, load_here, server, spec  # noqa: F401  (fixtures of the download test)
from tests.test_report import HPO_TRIALS, _fake_experiment

RETRAIN = ["--data", "fake", "--epochs", "1", "--max-batches", "1", "--batch-size", "16", "--eval-batch-size", "100",
           "--no-progress", "--device", "cpu"]


# --- 1. -o replaces only a report this command wrote ------------------------------------------------


def test_16_1_a_download_keeps_an_incomplete_copy_it_did_not_make(tmp_path, load_here, archive):
    """The class of point 1 beyond the report: the CIFAR-10 download used to delete an incomplete
    cifar-10-batches-py it found (maybe the user's) after downloading a complete one."""
    root = tmp_path / "data"
    mine = root / "cifar-10-batches-py"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("the user's\n")
    (mine / "data_batch_1").write_bytes(b"half")
    rc, out, err = load_here(root)
    assert rc == 0, err
    kept = list(root.glob("cifar-10-batches-py.incomplete-*"))
    assert len(kept) == 1 and (kept[0] / "notes.txt").read_text() == "the user's\n", "the incomplete copy was deleted"
    assert f"was moved to {str(kept[0])!r}" in err


# --- 2. one process per retrain folder ----------------------------------------------------------------


# --- 3. a retrain is reused only with the options it was trained with ----------------------------------


# --- 4. the report keeps only retrains of the experiment's own trials -------------------------------


# --- 5. invalid numbers -----------------------------------------------------------------------------


# --- 6. images: every mode by its value range, EXIF orientation, ImageFolder's rules ----------------


# --- 7. one class ----------------------------------------------------------------------------------


# --- 8. ranges and relations ----------------------------------------------------------------------


# --- 9. repeated JSON keys -------------------------------------------------------------------------


# --- 10. never through a symlink -------------------------------------------------------------------


# --- 11. tracebacks that become one line -----------------------------------------------------------


# --- 12. --threads, --print-config, torchrun -------------------------------------------------------


