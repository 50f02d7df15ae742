"""One classic-NAS trial: train the architecture NNI's tuner picked and report validation accuracy.

Run by ``nnictl create --config classic_nas/config.yml`` (the tuner's parameters are an
architecture ``{"skip1": 0 or 1, ...}``), or by hand on one architecture file::

    python classic_nas/trial.py --arch best_arch.json --data fake --epochs 1 --max-batches 2

Training goes through the shared core (:func:`core.runner.train`); every epoch reports the
validation accuracy to NNI as an intermediate result and the final result's ``default`` is the
last epoch's validation accuracy (a trial whose loss becomes NaN reports 0.0 with ``diverged: 1``
and exits cleanly). The test split is never evaluated here: model selection only looks at the
validation split carved from the training data. Under NNI the run folder is the trial's own
output folder (``NNI_OUTPUT_DIR``), so the experiment keeps each trial's config, log and metrics
beside NNI's files (the checkpoint is deleted at the end unless ``--keep-checkpoint``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

from core.checkpoint import atomic_write_text
from core.config import TrainConfig, add_config_arguments, config_from_args
from core.errors import UserError, cli_main
from core.run import CHECKPOINT_FILE
from core.runner import RESULT_FILE, train
from core.train import TrainingDiverged

STAGE = "classic_nas"


@dataclasses.dataclass
class TrialConfig(TrainConfig):
    """Training options of one search trial (the core's, with a shorter default schedule)."""

    epochs: int = dataclasses.field(default=10, metadata={"help": "training epochs per trial"})
    run_name: str = dataclasses.field(default="classic_nas_trial", metadata={
        "help": "run folder name prefix outside NNI (under NNI the trial folder is used)"})
    keep_checkpoint: bool = dataclasses.field(default=False, metadata={
        "help": "keep checkpoint.pt after the trial (about 37 MB; the retrain starts from scratch)"})

    def validate(self) -> None:
        super().validate()
        if self.val_fraction <= 0:
            raise UserError(f"val_fraction: {self.val_fraction} is not allowed for a search trial; it must be "
                            "in (0, 1), because architectures are ranked by validation accuracy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python classic_nas/trial.py", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", metavar="JSON", help="architecture file {\"skip1\": 0 or 1, ...}; only "
                        "outside NNI (under nnictl the tuner chooses the architecture)")
    add_config_arguments(parser, TrialConfig)
    return parser


def under_nni() -> bool:
    """True when this process is a trial launched by an NNI manager."""
    return bool(os.environ.get("NNI_PLATFORM")) and bool(os.environ.get("NNI_TRIAL_JOB_ID"))


def final_metrics(result: dict[str, Any], arch: dict[str, int]) -> dict[str, Any]:
    """What a trial reports as its final result: ``default`` is the validation accuracy.

    The architecture the trial really trained is repeated (``skip1`` ... ``skip6``): with several
    trials starting at once NNI 3.0 can record another trial's parameters for a trial (NNI issue
    #5726), and the export reads these keys first.
    """
    return {"default": float(result["val_acc"]), "val_acc": float(result["val_acc"]),
            "val_loss": float(result["val_loss"]), "train_acc": float(result["train_acc"]),
            "epochs": int(result["epoch"]), "params": int(result["params"]), **arch}


@cli_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from classic_nas.space import arch_name, build_model, read_arch, validate_arch

    args = build_parser().parse_args(argv)
    cfg = config_from_args(TrialConfig, args)
    nni_trial = under_nni()
    if nni_trial:
        import nni

        if args.arch:
            raise UserError("--arch: not allowed under nnictl, where the tuner chooses the architecture")
        arch = validate_arch(nni.get_next_parameter(), source="NNI parameters")
        run_dir = os.environ.get("NNI_OUTPUT_DIR") or None

        def report(metrics: dict[str, Any]) -> None:
            nni.report_intermediate_result(metrics["val_acc"])
    else:
        if not args.arch:
            raise UserError("--arch: an architecture file is required outside nnictl "
                            "(e.g. one written by python -m classic_nas.export)")
        arch = read_arch(args.arch)
        run_dir, report = None, None

    print(f"architecture {arch_name(arch)}: {json.dumps(arch)}", flush=True)
    try:
        result = train(cfg, lambda num_classes: build_model(arch, num_classes), name=STAGE, run_dir=run_dir,
                       arch=arch, eval_splits=("val",), final_test=False, on_epoch=report)
    except TrainingDiverged as exc:
        # A diverged architecture is a result of the search, not a crash: it scores 0.0, flagged.
        final = {"default": 0.0, "diverged": 1, **arch}
        print(f"trial stopped: {exc}; reporting validation accuracy 0.0", flush=True)
        if run_dir is not None:
            atomic_write_text(Path(run_dir) / RESULT_FILE, json.dumps({**final, "reason": str(exc)}, indent=2) + "\n")
            (Path(run_dir) / CHECKPOINT_FILE).unlink(missing_ok=True)
        result = final
    else:
        final = final_metrics(result, arch)
        if not cfg.keep_checkpoint:
            (Path(result["run_dir"]) / CHECKPOINT_FILE).unlink(missing_ok=True)
    if nni_trial:
        nni.report_final_result(final)
    print(json.dumps(final), flush=True)
    return result


if __name__ == "__main__":
    main()
