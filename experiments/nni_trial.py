"""The NNI side of a trial, shared by every stage: the tuner's parameters, the trial's output
folder, per-epoch and final reports, and what a diverged trial reports.

Outside NNI (no ``NNI_PLATFORM`` in the environment) a trial is inert: no parameters, no output
folder (the run gets its own under ``out_dir``) and reports go nowhere, so the same script also
runs on its own. The training engine (torch) is imported by :func:`run_search_trial` alone, so a
trial checks its flags and parameters (``--help``, ``--print-config``, a bad value) before that.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

from core.files import atomic_write_text
from core.errors import UserError
from core.run_folder import CHECKPOINT_FILE, RESULT_FILE, to_json, write_record

def quiet_nni_imports() -> None:
    """NNI 3.0 wraps every torch.nn class at import and warns about the few newer torch versions
    added that are not modules (Buffer, ...): noise, not the user's concern. Call before importing
    ``nni.nas``."""
    warnings.filterwarnings("ignore", message=r".*is found to be not a nn\.Module.*", category=RuntimeWarning)


#: Numbers copied from a run's metrics into NNI's final-result dict, beside ``default``.
#: (``val_images``, ``test_images``: how many images an accuracy was measured on, for its standard error;
#: ``classes``: how many classes the data has, for its chance level)
REPORTED = ("val_acc", "val_loss", "test_acc", "test_loss", "train_acc", "train_loss", "epoch", "params",
            "val_images", "test_images", "classes")


#: Written into an NNI trial's folder: the command line the trial ran, as the shell expanded it.
COMMAND_FILE = "trial_command.json"


def record_command(run_dir: Path) -> None:
    """Write :data:`COMMAND_FILE` into the trial's folder: its arguments (``sys.argv``, the flags of
    ``CIFAR_AUTOML_TRIAL_FLAGS`` expanded in them) and that variable's value, so that a report can
    show the command as the trial ran it rather than the experiment's ``${CIFAR_AUTOML_TRIAL_FLAGS:-}``.
    A folder that cannot be written is left as it is (NNI's own files tell the rest)."""
    import sys

    from core.paths import TRIAL_FLAGS_ENV

    record = {"argv": list(sys.argv), "trial_flags": os.environ.get(TRIAL_FLAGS_ENV, "")}
    try:
        write_record(run_dir / COMMAND_FILE, record)
    except (OSError, UserError):
        pass


class NniTrial:
    """This process's NNI trial, if it is one."""

    def __init__(self, active: bool):
        self.active = active
        self.params: dict[str, Any] = {}
        self.run_dir: Path | None = None
        if active:
            import nni

            self._nni = nni
            self.params = dict(nni.get_next_parameter() or {})
            out = os.environ.get("NNI_OUTPUT_DIR")  # NNI 3.0 has no API for it; it sets the variable
            self.run_dir = Path(out) if out else None
            if self.run_dir is not None:
                record_command(self.run_dir)

    @classmethod
    def from_environment(cls) -> "NniTrial":
        """Active when NNI started this process, inert otherwise."""
        return cls(bool(os.environ.get("NNI_PLATFORM")))

    @classmethod
    def required(cls, how_to_start: str) -> "NniTrial":
        """For an explicit ``--nni`` flag: an error, not an inert trial, outside NNI."""
        if not os.environ.get("NNI_PLATFORM") or not os.environ.get("NNI_OUTPUT_DIR"):
            raise UserError("--nni: this is not an NNI trial (no NNI_PLATFORM / NNI_OUTPUT_DIR in the environment); "
                            + how_to_start)
        return cls(True)

    def epoch_reporter(self, key: str = "val_acc", extra: tuple[str, ...] = ()) -> Callable[[dict[str, Any]], None]:
        """An ``on_epoch`` callback sending ``metrics[key]`` as an intermediate result (a plain
        number, which assessors such as Medianstop compare; with ``extra`` keys a dict of
        ``default`` and those numbers, which the web UI shows as fields and assessors read through
        ``default``), and every number of the epoch as a TensorBoard scalar for the web UI's
        TensorBoard button (:mod:`experiments.tensorboard`)."""
        writer = None

        def report(metrics: dict[str, Any]) -> None:
            nonlocal writer
            if self.active:
                if self.run_dir is not None:   # first: an assessor may stop the trial once it has the result
                    from experiments.tensorboard import ScalarWriter

                    writer = writer or ScalarWriter(self.run_dir, os.environ.get("NNI_TRIAL_JOB_ID"))
                    writer.add_epoch(metrics)
                value = float(metrics[key])
                self._nni.report_intermediate_result(
                    {"default": value, **{k: metrics[k] for k in extra if k in metrics}} if extra else value)
        return report

    def send_final(self, final: dict[str, Any]) -> None:
        """Send the final result (see :func:`final_metrics`)."""
        if self.active:
            self._nni.report_final_result(final)


def final_metrics(result: dict[str, Any], key: str = "val_acc", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """NNI's final-result dict: ``default`` is ``result[key]``; the other numbers of
    :data:`REPORTED` and ``extra`` (the parameters trained, say) ride along for reading back."""
    final: dict[str, Any] = {"default": float(result[key])}
    for name in REPORTED:
        value = result.get(name)
        if name != key and isinstance(value, (int, float)) and not isinstance(value, bool):
            final[name] = value
    if key != "default":
        final[key] = float(result[key])
    return {**final, **(extra or {})}


def run_search_trial(cfg: Any, build_model: Callable[[int], Any], trial: NniTrial, *, name: str,
                     extra: dict[str, Any], arch: dict[str, Any] | None = None, final_test: bool = False,
                     keep_checkpoint: bool = False) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Train one candidate of a search with the core and report it to NNI; returns the final dict
    that was reported and the run's result (``None`` when the trial diverged).

    Validation accuracy is reported every epoch and is the final ``default``; ``extra`` (the
    parameters or architecture really trained) is repeated in the final dict, because NNI 3.0
    can record another trial's parameters for a trial when several start at once. A trial whose
    network no longer computes (:class:`core.trainer.TrainingDiverged`: a non-finite training loss,
    or a non-finite loss or output when a split is evaluated) reports ``default`` 0.0 with
    ``diverged`` 1 and ends cleanly: a diverged candidate is a result of the search, not a crash,
    and never a ranked one. The checkpoint is deleted at the end
    unless ``keep_checkpoint`` (retraining starts from scratch).
    """
    from core.run_training import train
    from core.trainer import TrainingDiverged

    try:
        result = train(cfg, build_model, name=name, run_dir=trial.run_dir, arch=arch, final_test=final_test,
                       on_epoch=trial.epoch_reporter("val_acc"))
    except TrainingDiverged as exc:
        print(f"trial stopped: {exc}; reporting validation accuracy 0.0", flush=True)
        final = {"default": 0.0, "diverged": 1, **extra}
        if trial.run_dir is not None:
            atomic_write_text(trial.run_dir / RESULT_FILE, to_json({**final, "reason": str(exc)}, indent=2) + "\n")
            (trial.run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
        trial.send_final(final)
        return final, None
    if not keep_checkpoint:
        (Path(result["run_dir"]) / CHECKPOINT_FILE).unlink(missing_ok=True)
    final = final_metrics(result, "val_acc", extra)
    trial.send_final(final)
    return final, result
