"""TensorBoard scalars of an NNI trial, where the web UI's TensorBoard button looks for them.

NNI 3.0's button (trial list -> select trials -> TensorBoard) starts
``tensorboard --logdir_spec=<No.>-<trial>:<dir>`` with ``dir`` =
``<experiment folder>/trials/<trial>/output/tensorboard`` (``nni_node/extensions/
nniTensorboardManager.js`` and ``getTrialOutputLocalPath`` in ``training_service/v3/compat.js``),
while the local training service runs the trial in
``<experiment folder>/environments/<env>/trials/<trial>/`` (``NNI_OUTPUT_DIR``). So the trial
writes its scalars into ``<run folder>/tensorboard/`` and links the folder the button reads to it.

Writing is one event file per trial, a few scalars per epoch (``torch.utils.tensorboard``).
"""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any

from experiments.folder import exp_dir_of_trial, trial_output_dir

TB_DIR = "tensorboard"


def nni_button_dir(run_dir: Path, trial_id: str | None = None) -> Path | None:
    """Where NNI 3.0's TensorBoard button reads a trial's logs: ``<exp>/trials/<id>/output/tensorboard``,
    for a trial folder ``<exp>/environments/<env>/trials/<id>``; None for any other folder."""
    exp_dir = exp_dir_of_trial(run_dir)
    if exp_dir is None:
        return None
    return trial_output_dir(exp_dir, trial_id or Path(run_dir).name) / "output" / TB_DIR


class ScalarWriter:
    """Per-epoch numeric metrics of a run as TensorBoard scalars in ``run_dir/tensorboard``."""

    def __init__(self, run_dir: str | os.PathLike, trial_id: str | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(run_dir) / TB_DIR
        self._writer = SummaryWriter(log_dir=str(self.dir), flush_secs=30)
        link = nni_button_dir(Path(run_dir), trial_id)
        if link is not None and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):     # the manager may have made it meanwhile
                link.symlink_to(self.dir, target_is_directory=True)

    def add_epoch(self, metrics: dict[str, Any]) -> None:
        """Every finite number of ``metrics`` (``val_acc`` as ``val/acc``, ...) at step ``epoch``."""
        step = int(metrics.get("epoch", 0))
        for key, value in metrics.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self._writer.add_scalar(key.replace("_", "/", 1), value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
