"""The command line the retrain commands share (``hpo/retrain.py``, ``classic_nas/retrain.py``), and
its one check.

What to retrain is one of: the stage's own source (an architecture file, an export, added by the
command to the group :func:`add_retrain_options` returns), ``--experiment ID_OR_DIR`` (its best,
or with ``--top K`` its K best, each in its own resumable run folder: :mod:`experiments.top_k`) or
``--resume CHECKPOINT``. ``--new-folder`` and ``--seeds S1 S2 ...`` go with ``--top K``.
:func:`check_retrain_options` checks them together, each mistake one line naming the flag and what
it allows, and says whether the command retrains a top K. A retrain trains on every training image
by default (:func:`all_training_images`, also the DARTS retrain's).
"""
from __future__ import annotations

import argparse
from typing import Any, NamedTuple, Sequence

from core.config import add_resume_argument, check_resume_only, field
from core.errors import UserError

#: How the commands name an experiment.
EXPERIMENT = "--experiment ID"


def all_training_images() -> Any:
    """The ``val_fraction`` field of a retrain's config: 0 by default, no validation split held out."""
    return field(0.0, "fraction of the training split held out for validation; 0 = train on all of it")


class TopK(NamedTuple):
    """What ``--experiment ID --top K [--seeds S1 S2 ...] [--new-folder]`` asks for."""

    k: int
    seeds: list[int] | None
    new_folder: bool


def add_retrain_options(parser: argparse.ArgumentParser, *, searched: str,
                        top_default: int | None = None) -> argparse._MutuallyExclusiveGroup:
    """Add ``--experiment``, ``--resume``, ``--experiments-dir``, ``--top``, ``--new-folder`` and
    ``--seeds``; return the required group of what to retrain (``--experiment`` or ``--resume``),
    where the command adds its own source. ``searched``: what the experiment ranks ("trial",
    "architecture"); ``top_default``: the K of ``--experiment`` without ``--top`` (None: its best
    alone, in a run folder of its own rather than a top-K one)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", metavar="ID_OR_DIR",
                        help=f"an experiment id (or its folder, or its db/nni.sqlite): retrain its best {searched} "
                        "(with --top K: its K best)")
    add_resume_argument(source)
    parser.add_argument("--experiments-dir", help="folder holding the experiment's <id>/ folder "
                        "(default: found via ~/nni-experiments)")
    default = "" if top_default is None else f" (default {top_default})"
    parser.add_argument("--top", type=int, metavar="K",
                        help=f"with --experiment: retrain its K best {searched}s{default}, each in its own run "
                        "folder (rerun the command to continue; finished ones are skipped)")
    parser.add_argument("--new-folder", action="store_true",
                        help="with --top: a trial retrained before with other options is retrained again in a new "
                        "folder <stage>-<experiment>-<trial>-2 (-3, ...); without it that is an error naming the "
                        "options that differ (a retrain is reused only with the options it was trained with)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S",
                        help="with --top: retrain each configuration once per seed, each in its own run folder "
                        "<stage>-<experiment>-<trial>-seed<S>; the report gives mean +- std per configuration")
    return source


def check_retrain_options(args: argparse.Namespace, cls: type, *, top_default: int | None = None,
                          resume_extra: Sequence[str] = ()) -> TopK | None:
    """Check the options :func:`add_retrain_options` added (``cls``: the command's config class,
    ``top_default`` as given there); a mistake is one :class:`UserError` line naming the flag.
    Returns the top K asked for, or None for a single retrain (of ``--resume``, which takes no other
    option but those in ``resume_extra``, or of the stage's own source)."""
    if args.top is not None and not args.experiment:
        raise UserError(f"--top: only with {EXPERIMENT} (the retrains are filed under the experiment's id)")
    top = args.top if args.top is not None else (top_default if args.experiment else None)
    if top is None:
        if args.new_folder:
            raise UserError(f"--new-folder: only with {EXPERIMENT} --top K")
        if args.seeds is not None:
            raise UserError(f"--seeds: only with {EXPERIMENT} --top K (a single retrain takes --seed)")
        if args.resume:
            check_resume_only(cls, args, extra=("experiments_dir", *resume_extra))
        return None
    return TopK(top, _seeds(args), args.new_folder)


def _seeds(args: argparse.Namespace) -> list[int] | None:
    """The ``--seeds`` given (None without), checked: distinct, and not beside ``--seed``."""
    seeds = args.seeds
    if seeds is None:
        return None
    if "seed" in vars(args):
        raise UserError("--seed: not allowed with --seeds, which sets each retrain's seed")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise UserError(f"--seeds: seed {repeated[0]} is given twice; give each seed once")
    return list(seeds)
