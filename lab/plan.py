"""What each stage runs under each budget: the commands, their sizes, and the work the estimate counts.

Three budgets (:data:`BUDGETS`):

- ``smoke``: synthetic data, two batches per epoch, one or two epochs, HPO over the two fastest
  models only: seconds per stage, what the tests run;
- ``quick``: real CIFAR-10 at small sizes (subsets, a few epochs, narrow DARTS networks): minutes per
  stage on a GPU such as Colab's T4;
- ``lab``: the seed lab's sizes: 10-epoch HPO trials over the whole 64-configuration grid, the winner
  retrained 200 epochs, classic NAS's 20 trials of 10 epochs, the DARTS paper's protocol (4 searches
  of 50 epochs, each cell trained 100 epochs to pick one) and its 600-epoch retrain.

Sizes are given once per run (:class:`Size`): its flags (the stage command's own flags, which win
over its config file: an nnictl trial takes them through ``CIFAR_AUTOML_TRIAL_FLAGS``) and the work
they mean (epochs, training steps per epoch, images evaluated per epoch), which the estimate
(:mod:`lab.estimate`) multiplies by a timed step. ``tests/test_lab.py`` checks that each command
resolves the sizes stated here (the commands' own config classes, as they parse these flags).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: The stages in the lab's order.
STAGES = ("hpo", "hpo_retrain", "classic_nas", "darts_protocol", "darts_retrain", "study")
TITLES = {
    "hpo": "HPO experiment (nnictl)",
    "hpo_retrain": "retrain of the HPO winner (hpo/retrain.py --top 1)",
    "classic_nas": "classic-NAS experiment with the HPO winner's optimizer and lr (nnictl, CIFAR_AUTOML_FROM_HPO)",
    "darts_protocol": "DARTS protocol: a search per seed, each cell trained briefly, the best picked "
                      "(oneshot_darts/protocol.py)",
    "darts_retrain": "retrain of the DARTS protocol's cell (oneshot_darts/retrain.py)",
    "study": "study report of every stage (python -m report --study)",
}
#: Stages run as nnictl experiments.
EXPERIMENT_STAGES = ("hpo", "classic_nas")
#: What each stage needs finished first.
NEEDS = {"hpo": (), "hpo_retrain": ("hpo",), "classic_nas": ("hpo",), "darts_protocol": (),
         "darts_retrain": ("darts_protocol",),
         "study": ("hpo", "hpo_retrain", "classic_nas", "darts_protocol", "darts_retrain")}
#: CIFAR-10's split sizes (the estimate assumes them for real data).
CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000
#: The published cell the timing probes of DARTS retrains build (a protocol's own cell is not known yet).
PROBE_ARC = "oneshot_darts/archs/darts_v2.json"


@dataclass(frozen=True)
class Size:
    """One training run: the flags that set its size and the work they mean."""

    epochs: int
    batch_size: int
    train_images: int                 # training images per epoch, before max_batches
    eval_images: int                  # images evaluated per epoch (validation or test)
    max_batches: int = 0              # 0: every batch
    extra: tuple[str, ...] = ()       # other flags of the command (a --config, --subset, ...)

    @property
    def steps(self) -> int:
        """Training steps per epoch."""
        steps = math.ceil(self.train_images / self.batch_size)
        return min(steps, self.max_batches) if self.max_batches else steps

    def flags(self, epochs: bool = True) -> list[str]:
        out = [*self.extra]
        if epochs:
            out += ["--epochs", str(self.epochs)]
        out += ["--batch-size", str(self.batch_size)]
        if self.max_batches:
            out += ["--max-batches", str(self.max_batches)]
        return out


@dataclass(frozen=True)
class Experiment:
    """An nnictl stage: a shipped config, changed only by the keys in ``overrides`` (None removes a
    key) and by its trials' flags."""

    config: str                       # the shipped nnictl config, relative to the repository
    trials: int
    concurrency: int
    size: Size                        # every trial's
    duration: str                     # maxExperimentDuration: long enough for the budget, cuts included
    models: tuple[str, ...] = ()      # the models the trials train (the estimate times each)
    overrides: dict[str, Any] = field(default_factory=dict)

    def config_values(self) -> dict[str, Any]:
        return {**self.overrides, "trialConcurrency": self.concurrency, "maxTrialNumber": self.trials,
                "maxExperimentDuration": self.duration}


@dataclass(frozen=True)
class Budget:
    name: str
    data: str                         # the data source when the user names none ("fake" for smoke)
    hpo: Experiment
    hpo_retrain: Size
    classic_nas: Experiment
    search: Size                      # one DARTS search of the protocol
    seeds: tuple[int, ...]
    select: Size                      # one short retrain of the protocol (epochs: --select-epochs)
    select_config: str | None         # its --select-config (None: the paper's retrain recipe)
    retrain: Size                     # the DARTS cell's retrain
    mirror_every: float               # seconds between two mirrors of a running stage (lab.mirror)
    poll: float                       # seconds between two looks at a running experiment
    timed: bool = True                # the estimate times steps (smoke: seconds per stage, not timed)
    notes: str = ""

    def protocol_flags(self) -> list[str]:
        flags = [*self.search.flags(), "--seeds", *map(str, self.seeds), "--select-epochs", str(self.select.epochs)]
        return flags + (["--select-config", self.select_config] if self.select_config else [])

    def select_flags(self) -> list[str]:
        """Flags of ``oneshot_darts/retrain.py`` that train like one of the protocol's short retrains
        (the timing probe's)."""
        config = ["--config", self.select_config] if self.select_config else []
        return [*config, "--val-fraction", "0.1", *self.select.flags()]


HPO_MODELS = ("vgg", "resnet18", "googlenet", "densenet121", "mobilenet", "dpn92", "shufflenetg2", "senet18")
#: hpo/config_quick.yml's space: the full lr and optimizer choices, the two fastest models on a CPU
FAST_MODELS = ("mobilenet", "shufflenetg2")
FAST_SPACE = {"lr": {"_type": "choice", "_value": [0.01, 0.001]},
              "optimizer": {"_type": "choice", "_value": ["Adadelta", "Adagrad", "Adam", "Adamax"]},
              "model": {"_type": "choice", "_value": list(FAST_MODELS)}}
_SMOKE_EVAL = ("--eval-batch-size", "16")
#: smoke runs train on one CPU thread: on a loaded 2-core machine, torch's two threads made a smoke DARTS
#: search step 10x slower (3.6 s against 0.38 s)
_ONE_THREAD = ("--threads", "1")

BUDGETS = {
    "smoke": Budget(
        name="smoke", data="fake",
        hpo=Experiment("hpo/config_smoke.yml", trials=2, concurrency=2, duration="30m", models=FAST_MODELS,
                       size=Size(2, 8, 1800, 32, max_batches=2, extra=_SMOKE_EVAL),
                       overrides={"searchSpace": FAST_SPACE, "searchSpaceFile": None}),
        hpo_retrain=Size(1, 8, 2000, 0, max_batches=2, extra=(*_SMOKE_EVAL, *_ONE_THREAD)),
        classic_nas=Experiment("classic_nas/config_small.yml", trials=2, concurrency=1, duration="30m",
                               size=Size(1, 8, 1800, 32, max_batches=2,
                                         extra=(*_SMOKE_EVAL, *_ONE_THREAD, "--subset", "0", "--val-subset", "0"))),
        search=Size(1, 8, 1000, 200, max_batches=2,
                    extra=("--config", "configs/darts_search_smoke.yml", *_ONE_THREAD)),
        seeds=(0, 1),
        select=Size(1, 8, 1800, 200, max_batches=2), select_config="configs/darts_select_smoke.yml",
        retrain=Size(1, 8, 2000, 200, max_batches=2,
                     extra=("--config", "configs/darts_retrain_smoke.yml", *_ONE_THREAD)),
        mirror_every=1.0, poll=1.0, timed=False,
        notes="synthetic data, 2 batches per epoch: checks the wiring, learns nothing"),
    "quick": Budget(
        name="quick", data="cifar10",
        hpo=Experiment("hpo/config_quick.yml", trials=6, concurrency=1, duration="6h",
                       models=FAST_MODELS,
                       size=Size(2, 64, 2000, 1000, extra=("--subset", "2000", "--val-subset", "1000"))),
        hpo_retrain=Size(3, 128, CIFAR10_TRAIN, 0),
        classic_nas=Experiment("classic_nas/config_small.yml", trials=5, concurrency=1, duration="6h",
                               size=Size(2, 64, 2000, 1000, extra=("--subset", "2000", "--val-subset", "1000"))),
        search=Size(3, 64, 4000, 2000, extra=("--config", "configs/darts_search.yml", "--channels", "8",
                                              "--layers", "5", "--subset", "4000", "--val-subset", "2000")),
        seeds=(0, 1),
        select=Size(3, 96, 5000, 1000), select_config="configs/darts_select_quick.yml",
        retrain=Size(5, 96, CIFAR10_TRAIN, CIFAR10_TEST, extra=("--config", "configs/darts_retrain.yml",
                                                                "--channels", "16", "--layers", "8")),
        mirror_every=10.0, poll=5.0,
        notes="real CIFAR-10 at small sizes: minutes per stage on a GPU; the numbers rank nothing"),
    "lab": Budget(
        name="lab", data="cifar10",
        hpo=Experiment("hpo/config.yml", trials=64, concurrency=1, duration="60d", models=HPO_MODELS,
                       size=Size(10, 128, 45_000, 5_000),
                       overrides={"tuner": {"name": "GridSearch"}, "assessor": None}),
        hpo_retrain=Size(200, 128, CIFAR10_TRAIN, 0),
        classic_nas=Experiment("classic_nas/config.yml", trials=20, concurrency=1, duration="60d",
                               size=Size(10, 128, 45_000, 5_000)),
        search=Size(50, 64, 25_000, 25_000, extra=("--config", "configs/darts_search.yml")),
        seeds=(0, 1, 2, 3),
        select=Size(100, 96, 45_000, 5_000), select_config=None,
        retrain=Size(600, 96, CIFAR10_TRAIN, CIFAR10_TEST, extra=("--config", "configs/darts_retrain.yml")),
        mirror_every=10.0, poll=5.0,
        notes="the seed lab's sizes: days on one GPU"),
}


def budget(name: str) -> Budget:
    from core.errors import UserError

    if name not in BUDGETS:
        raise UserError(f"budget: unknown value {name!r}; allowed: {', '.join(BUDGETS)}")
    return BUDGETS[name]


def describe(b: Budget, stage: str) -> str:
    """One line: what the stage runs under budget ``b``."""
    def run(s: Size) -> str:
        batches = f", {s.max_batches} batches per epoch" if s.max_batches else f", {s.steps} steps per epoch"
        return f"{s.epochs} epoch{'s' * (s.epochs != 1)} of {s.train_images:,} images{batches}"

    if stage in EXPERIMENT_STAGES:
        exp: Experiment = getattr(b, stage)
        models = f" over {len(exp.models)} models" if exp.models else ""
        return f"{exp.trials} trials{models} ({exp.config}, {exp.concurrency} at a time), each {run(exp.size)}"
    if stage == "hpo_retrain":
        return f"the best trial's configuration, {run(b.hpo_retrain)}, then the test split"
    if stage == "darts_protocol":
        return (f"{len(b.seeds)} searches (seeds {', '.join(map(str, b.seeds))}), each {run(b.search)}; each cell "
                f"then {run(b.select)}")
    if stage == "darts_retrain":
        return f"the selected cell, {run(b.retrain)}, testing every epoch"
    return "the report of every stage, with figures and the closing table"
