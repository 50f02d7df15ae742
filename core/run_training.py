"""The path every training command shares: config -> data -> run folder -> train -> final report.

A stage supplies only what is special to it: how to build its network (``build_model``), and
optionally a loss, an epoch hook and a per-epoch callback (the NNI report, say). Resuming takes
the config and architecture from the checkpoint, nanoGPT-style, and continues in the same folder.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from core import distributed
from core.chance import CLASSES_KEY
from core.checkpoint import load_checkpoint
from core.files import atomic_write_text
from core.config import TrainConfig, from_dict
from core.data import Splits, make_splits
from core.errors import Interrupted, StoppedByNni, UserError, under_nni
from core.run_folder import RESULT_FILE, TRAINED_ARCH_FILE, Run, to_json, write_record
from core.speed import ModelNotes
from core.trainer import EpochCallback, LossFn, Trainer, config_id, cross_entropy, seed_everything
from core.words import count



def load_splits(cfg: TrainConfig) -> Splits:
    return make_splits(cfg.data, cfg.data_root, val_fraction=cfg.val_fraction, subset=cfg.subset,
                       val_subset=cfg.val_subset, image_size=cfg.image_size)


def config_from_checkpoint(cls: type, path: str | Path) -> tuple[Any, dict[str, Any]]:
    """The config a checkpoint was written with (so a resume needs nothing but the checkpoint),
    after checking the checkpoint belongs to this command and is consistent: all before anything
    is written into its run folder."""
    state = load_checkpoint(path)
    where = f"checkpoint {str(path)!r}"
    missing = [k for k in ("config", "epoch", "model", "optimizer", "scheduler", "rng") if k not in state]
    if missing:
        raise UserError(f"{where} is not a training checkpoint of this project (no {', '.join(missing)})")
    writer = state.get("writer")
    if writer != config_id(cls):
        raise UserError(f"{where} was written by another command ({writer or 'unknown'}), not by this one "
                        f"({config_id(cls)}); resume it with the command that wrote it")
    cfg = from_dict(cls, state["config"], source=where)
    t_max = state["scheduler"].get("T_max")
    if t_max is not None and t_max != cfg.epochs:
        raise UserError(f"{where}: its config says epochs {cfg.epochs} but its schedule was built for {t_max}; a "
                        "checkpoint's config cannot be edited: start a new run (or resume the original)")
    if not 0 <= state["epoch"] <= cfg.epochs:
        raise UserError(f"{where}: epoch {state['epoch']} is outside its run of {count(cfg.epochs, 'epoch')}")
    return cfg, state





def open_run(cfg: Any, name: str, *, run_dir: str | Path | None = None,
             resume: str | Path | None = None) -> Run:
    """The run folder: the checkpoint's when resuming, else ``run_dir`` (an NNI trial's output
    folder), else a new ``cfg.out_dir/<run_name or name>-<time>``; the resolved config is written."""
    if resume:
        run = Run(Path(resume).parent)
        left = run.remove_temp_files()
        if left:
            run.log(f"removed {len(left)} temporary file(s) a killed write left: {', '.join(p.name for p in left)}")
        return run
    if run_dir is not None:
        run = Run(run_dir)
        run.write_config(cfg)
        return run
    return Run.create(cfg.out_dir, cfg.run_name or name, cfg)


def train(cfg: TrainConfig, build_model: Callable[[int], nn.Module], *, name: str,
          run_dir: str | Path | None = None, resume: str | Path | None = None,
          arch: dict[str, Any] | None = None, eval_splits: Sequence[str] = ("val",), final_test: bool = True,
          loss_fn: LossFn = cross_entropy, epoch_start: Callable[[int], None] | None = None,
          on_epoch: EpochCallback | None = None, setup: Callable[[nn.Module], Any] | None = None,
          trainer_cls: type[Trainer] = Trainer, describe: Callable[[Trainer], str] | None = None,
          notes: ModelNotes | None = None) -> dict[str, Any]:
    """Train ``build_model(num_classes)`` with ``cfg`` and return the final result.

    The run folder is ``run_dir`` if given (an NNI trial's output folder, say), the checkpoint's
    folder when resuming, else a new ``cfg.out_dir/<name>-<time>``; it is created only after the
    data loaded and the trainer was built, so bad input leaves nothing behind. ``setup(model)``
    may return the ``epoch_start`` hook that needs the built model (a drop-path schedule).
    ``trainer_cls`` is the engine (a specialisation of :class:`Trainer`, such as the DARTS
    search), ``notes`` what the stage knows of its network for the speed choices
    (:class:`core.speed.ModelNotes`) and ``describe(trainer)`` the first log line. The result (last epoch's metrics,
    parameter count, what the trainer's ``finish`` adds, and test accuracy when ``final_test``)
    is written to ``result.json`` in the run folder.

    Under ``torchrun`` every rank runs this with the same arguments (:mod:`core.distributed`): the
    trainer joins the process group, rank 0 alone opens and writes the run folder and tells the
    others its path, and every rank returns the same result.
    """
    state = config_from_checkpoint(type(cfg), resume)[1] if resume else None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    splits = load_splits(cfg)
    seed_everything(cfg.seed)
    model = build_model(splits.num_classes)
    if setup is not None:
        epoch_start = setup(model) or epoch_start
    trainer = trainer_cls(model, cfg, splits, eval_splits=eval_splits, arch=arch, loss_fn=loss_fn,
                          epoch_start=epoch_start, notes=notes)
    # under torchrun rank 0 alone opens and writes the run folder; the others learn its path
    run = trainer.run = open_run(cfg, name, run_dir=run_dir, resume=resume) if distributed.is_main() else None
    run_path = distributed.broadcast(str(run.dir) if run else None)
    log = run.log if run else (lambda message: None)
    if arch is not None and run:
        write_record(run.dir / TRAINED_ARCH_FILE, arch, indent=2)
    n_params = sum(p.numel() for p in trainer.parameters())
    log((describe(trainer) if describe else f"{name}: {n_params:,} parameters, {len(splits.train):,} training "
         f"images, device {trainer.device.type}") + f"; run folder {run_path}"
        + (f"; {distributed.world_size()} processes (data-parallel)" if distributed.world_size() > 1 else ""))
    if state is not None:
        with trainer.out_of_memory("resume"):
            trainer.load_state_dict(state)
        log(f"resumed from {resume} after epoch {state['epoch']}")
    try:
        history = trainer.fit(on_epoch=on_epoch)
    except KeyboardInterrupt:
        if under_nni():    # NNI's SIGINT: an assessor's early stop, or the experiment's stop
            raise StoppedByNni(stopped_by_nni_message(run, trainer)) from None
        raise Interrupted(interrupted_message(run, trainer) if run else "interrupted") from None
    except OSError as exc:     # a checkpoint or metrics line that cannot be written: a full disk, say
        if run is None or exc.filename is None or not Path(exc.filename).is_relative_to(run.dir):
            raise
        raise UserError(write_failed_message(run, trainer, exc)) from None
    result: dict[str, Any] = {**(history[-1] if history else {}), "params": n_params, "run_dir": run_path,
                              CLASSES_KEY: splits.num_classes}
    result.update(trainer.finish())
    if final_test:
        with trainer.out_of_memory("the final test"):
            test = trainer.evaluate("test")
        result["test_acc"], result["test_loss"], result["test_images"] = test["acc"], test["loss"], test["images"]
        log(f"final test accuracy {test['acc']:.4f}")
    if run:
        atomic_write_text(run.dir / RESULT_FILE, to_json(result, indent=2) + "\n")
    return result


def stopped_by_nni_message(run: Run | None, trainer: Trainer) -> str:
    """What a trial NNI stopped says (to its trial.stderr): when, and where its run folder is."""
    return (f"stopped by NNI in epoch {trainer.start_epoch + 1}, after {count(trainer.start_epoch, 'completed epoch')} "
            "(an assessor's early stop, or the experiment was stopped)" + (f"; run folder {run.dir}" if run else ""))


def interrupted_message(run: Run, trainer: Trainer) -> str:
    """Where an interrupted run can be continued from, and the command that does it."""
    return "interrupted in epoch " + _where_to_continue(run, trainer)


def write_failed_message(run: Run, trainer: Trainer, exc: OSError) -> str:
    """A file of the run that could not be written (no space left, a read-only file system, an I/O
    error): which, why, and the intact checkpoint to continue from once that is fixed."""
    return (f"cannot write {exc.filename!r} ({exc.strerror or type(exc).__name__}) in epoch "
            + _where_to_continue(run, trainer))


def _where_to_continue(run: Run, trainer: Trainer) -> str:
    done = trainer.start_epoch
    if not done or not run.checkpoint_path.exists():
        return f"{done + 1} before any epoch was saved; run folder {run.dir}"
    command = f"python {sys.argv[0]} --resume {run.checkpoint_path}" if sys.argv and sys.argv[0] else "--resume"
    return f"{done + 1}; the last checkpoint is {run.checkpoint_path} (after epoch {done}); continue with: {command}"
