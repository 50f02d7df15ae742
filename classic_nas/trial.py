"""One classic-NAS trial: train the architecture NNI's tuner picked and report validation accuracy.

Run by ``nnictl create --config classic_nas/config.yml`` (the tuner's parameters are an
architecture ``{"skip1": 0 or 1, ...}``), or by hand on one architecture file::

    python classic_nas/trial.py --arc best_arch.json --data fake --epochs 1 --max-batches 2

Training goes through the shared core (:func:`core.run_training.train`); every epoch reports the
validation accuracy to NNI as an intermediate result and the final result's ``default`` is the
last epoch's validation accuracy (a trial whose network no longer computes, in training or evaluation, reports 0.0
with ``diverged: 1`` and exits cleanly). The test split is never evaluated here: model selection only looks at the
validation split carved from the training data. Under NNI the run folder is the trial's own
output folder (``NNI_OUTPUT_DIR``), so the experiment keeps each trial's config, log and metrics
beside NNI's files (the checkpoint is deleted at the end unless ``--keep-checkpoint``).

``--from-hpo EXPERIMENT`` (for every trial of an nnictl experiment: ``CIFAR_AUTOML_FROM_HPO`` in
the shell that runs ``nnictl create``) trains with the optimizer and learning rate of that HPO
experiment's best trial instead of the config's (:mod:`experiments.from_hpo`); the rest of the recipe
stays this stage's. Each trial repeats the optimizer, lr, experiment and HPO trial in its final
result. ``--optimizer`` / ``--lr`` flags cannot be combined with it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any, Sequence

from core.config import SearchTrialConfig, add_config_arguments, config_from_args, field
from core.errors import ArgumentParser, UserError, cli_main
from core.output import print_result
from experiments.from_hpo import add_from_hpo_argument, winner_from_args
from experiments.nni_trial import NniTrial

STAGE = "classic_nas"


@dataclasses.dataclass
class TrialConfig(SearchTrialConfig):
    """Training options of one search trial (the core's, with a shorter default schedule)."""

    epochs: int = field(10, "training epochs per trial")
    run_name: str = field("classic_nas_trial", "run folder name prefix outside NNI (under NNI the trial folder is "
                          "used)")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python classic_nas/trial.py", description=__doc__.splitlines()[0])
    parser.add_argument("--arc", "--arch", dest="arc", metavar="JSON", help="architecture file {\"skip1\": 0 or "
                        "1, ...}; only outside NNI (under nnictl the tuner chooses the architecture)")
    add_from_hpo_argument(parser, env=True)
    parser.add_argument("--experiments-dir", help="with --from-hpo ID: the folder holding <ID>/ (default: found "
                        "via ~/nni-experiments)")
    add_config_arguments(parser, TrialConfig)
    return parser


@cli_main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    winner = winner_from_args(args, env=True)   # --from-hpo, else $CIFAR_AUTOML_FROM_HPO
    cfg = config_from_args(TrialConfig, args, overrides=winner and winner.fields(), overrides_source="--from-hpo")
    # torch and NNI's NAS API (seconds) once the flags are known good: --help, --print-config and a bad
    # flag end before it
    from classic_nas.space import arch_name, build_model, read_arch, validate_arch
    from experiments.nni_trial import run_search_trial

    trial = NniTrial.from_environment()
    if trial.active:
        if args.arc:
            raise UserError("--arc: not allowed under nnictl, where the tuner chooses the architecture")
        arch = validate_arch(trial.params, source="NNI parameters")
    else:
        if not args.arc:
            raise UserError("--arc: an architecture file is required outside nnictl "
                            "(e.g. one written by python -m classic_nas.export)")
        arch = read_arch(args.arc)

    print(f"architecture {arch_name(arch)}: {json.dumps(arch)}", flush=True)
    extra = dict(arch)
    if winner is not None:
        print(f"training with {winner.describe()}", flush=True)
        extra.update(winner.fields(), **winner.provenance())
    final, result = run_search_trial(cfg, lambda num_classes: build_model(arch, num_classes), trial, name=STAGE,
                                     extra=extra, arch=arch, keep_checkpoint=cfg.keep_checkpoint)
    print_result(final)
    return result or final

if __name__ == "__main__":
    main()
