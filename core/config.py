"""Typed configuration: dataclass defaults, then a YAML file from ``configs/``, then command-line flags.

Every stage describes its options as one flat dataclass (subclassing :class:`TrainConfig` when it
trains a network). :func:`parse_config` builds the command line from the dataclass fields, so a
field ``val_fraction`` is set by ``val_fraction: 0.2`` in YAML or ``--val-fraction 0.2`` on the
command line, and the resolved config is what gets written into the run folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from core.errors import UserError

C = TypeVar("C", bound="TrainConfig")

DATA_ROOT_ENV = "CIFAR_AUTOML_DATA"
OPTIMIZER_NAMES = ("SGD", "Adadelta", "Adagrad", "Adam", "Adamax")
SCHEDULER_NAMES = ("cosine", "none")
DEVICE_NAMES = ("auto", "cpu", "cuda")


def _default_data_root() -> str:
    return os.environ.get(DATA_ROOT_ENV, "data")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclasses.dataclass
class TrainConfig:
    """Options shared by everything that trains a network with the core loop."""

    # --- data ---
    data: str = dataclasses.field(default="cifar10", metadata=_help(
        "'cifar10' (torchvision download into --data-root), 'fake' (synthetic, offline), or the path "
        "of an image folder / .tar.gz holding train/<class>/* and test/<class>/*"))
    data_root: str = dataclasses.field(default_factory=_default_data_root, metadata=_help(
        f"where CIFAR-10 is downloaded and decoded images are cached (env {DATA_ROOT_ENV})"))
    val_fraction: float = dataclasses.field(default=0.1, metadata=_help(
        "fraction of the training split held out for validation (fixed seed); 0 = none"))
    subset: int = dataclasses.field(default=0, metadata=_help("train on only N training images (0 = all)"))
    val_subset: int = dataclasses.field(default=0, metadata=_help("validate on only N images (0 = all)"))
    image_size: int = dataclasses.field(default=32, metadata=_help("images are resized to this side (px)"))
    batch_size: int = dataclasses.field(default=128, metadata=_help("training batch size (images)"))
    eval_batch_size: int = dataclasses.field(default=500, metadata=_help("evaluation batch size (images)"))
    crop_padding: int = dataclasses.field(default=4, metadata=_help("random-crop padding (px); 0 = no crop"))
    flip: bool = dataclasses.field(default=True, metadata=_help("random horizontal flip"))
    cutout: int = dataclasses.field(default=0, metadata=_help("cutout square side (px); 0 = off"))
    # --- optimisation ---
    optimizer: str = dataclasses.field(default="SGD", metadata=_help("one of " + ", ".join(OPTIMIZER_NAMES)))
    lr: float = dataclasses.field(default=0.1, metadata=_help("initial learning rate"))
    momentum: float = dataclasses.field(default=0.9, metadata=_help("SGD momentum (other optimizers ignore it)"))
    weight_decay: float = dataclasses.field(default=5e-4, metadata=_help("L2 weight decay"))
    epochs: int = dataclasses.field(default=30, metadata=_help("training epochs"))
    scheduler: str = dataclasses.field(default="cosine", metadata=_help("'cosine' (to 0 over the epochs) or 'none'"))
    grad_clip: float = dataclasses.field(default=0.0, metadata=_help("clip the gradient norm to this; 0 = off"))
    # --- run ---
    seed: int = dataclasses.field(default=0, metadata=_help("seed for weights, shuffling and augmentation"))
    max_batches: int = dataclasses.field(default=0, metadata=_help(
        "stop every epoch (and evaluation) after N batches: seconds-long smoke runs; 0 = full epochs"))
    device: str = dataclasses.field(default="auto", metadata=_help("'auto' (CUDA when present), 'cpu' or 'cuda'"))
    amp: bool = dataclasses.field(default=True, metadata=_help("bf16 mixed precision on CUDA (CPU stays float32)"))
    channels_last: bool = dataclasses.field(default=True, metadata=_help("channels_last memory format on CUDA"))
    out_dir: str = dataclasses.field(default="runs", metadata=_help("parent folder of the run folders"))
    run_name: str = dataclasses.field(default="", metadata=_help("run folder name prefix (default: the command's)"))
    progress: bool = dataclasses.field(default=True, metadata=_help("per-epoch progress bar on a terminal"))

    def validate(self) -> None:
        """Raise :class:`UserError` naming the first bad field."""
        check_choice("optimizer", self.optimizer, OPTIMIZER_NAMES)
        check_choice("scheduler", self.scheduler, SCHEDULER_NAMES)
        check_choice("device", self.device, DEVICE_NAMES)
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"val_fraction: {self.val_fraction} is not in [0, 1)")
        if not self.lr > 0:
            raise UserError(f"lr: {self.lr} is not allowed; the learning rate must be positive")
        for name in ("batch_size", "eval_batch_size", "epochs", "image_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}: {getattr(self, name)} is not allowed; it must be at least 1")
        for name in ("subset", "val_subset", "max_batches", "crop_padding", "cutout"):
            if getattr(self, name) < 0:
                raise UserError(f"{name}: {getattr(self, name)} is not allowed; it must be 0 or more")
        if self.momentum < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise UserError("momentum, weight_decay and grad_clip must be 0 or more")


def check_choice(field: str, value: str, allowed: Sequence[str]) -> None:
    """Raise :class:`UserError` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise UserError(f"{field}: unknown value {value!r}; allowed: {', '.join(allowed)}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a plain dict (what YAML files, checkpoints and NNI hold)."""
    return dataclasses.asdict(cfg)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _strip_optional(typ: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (typ, False)."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        return next(t for t in typing.get_args(typ) if t is not type(None)), True
    return typ, False


def _coerce(name: str, value: Any, typ: Any) -> Any:
    """Check one value against its field type (YAML and NNI give ints for floats, for instance)."""
    typ, optional = _strip_optional(typ)
    if optional and value is None:
        return None
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, (str, Path)):
            return str(value)
    else:  # lists, dicts: taken as they are
        return value
    raise UserError(f"{name}: {value!r} is not a valid {getattr(typ, '__name__', typ)}")


def from_dict(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Build ``cls`` from defaults updated by ``values``; unknown keys are an error naming them."""
    types = _field_types(cls)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise UserError(f"{source}: unknown field {unknown[0]!r}; known fields: {', '.join(sorted(types))}")
    cfg = cls(**{k: _coerce(k, v, types[k]) for k, v in values.items()})
    cfg.validate()
    return cfg


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping, turning a missing or malformed file into a :class:`UserError`."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {str(p)!r} does not exist")
    try:
        values = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {str(p)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {str(p)!r} must hold a mapping of field: value")
    return values


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file, turning a missing or malformed file into a :class:`UserError` that names
    ``what`` it is (``--arc``, say)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what}: {str(p)!r} does not exist")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {str(p)!r}: not valid JSON ({exc})") from None


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--config FILE`` and one ``--field-name`` flag per dataclass field (defaults suppressed)."""
    parser.add_argument("--config", metavar="YAML", help="YAML file of field: value (flags override it)")
    group = parser.add_argument_group(f"{cls.__name__} fields")
    for f in dataclasses.fields(cls):
        typ = _field_types(cls)[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        text = f"{f.metadata.get('help', '')} (default: {default})"
        if typ is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=text)
        else:
            base, _ = _strip_optional(typ)
            conv = base if base in (int, float, str) else str
            group.add_argument(flag, dest=f.name, type=conv, default=argparse.SUPPRESS, metavar=f.name.upper(),
                               help=text)


def config_from_args(cls: type[C], args: argparse.Namespace, base: dict[str, Any] | None = None,
                     overrides: dict[str, Any] | None = None, overrides_source: str = "NNI parameter") -> C:
    """Resolve defaults < ``base`` < ``--config`` YAML < flags < ``overrides`` (an NNI trial's
    parameters) into a validated ``cls``. An override that is not a field is an error naming it."""
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = dict(base or {})
    if getattr(args, "config", None):
        values.update(read_yaml(args.config))
    values.update({k: v for k, v in vars(args).items() if k in names})
    if overrides:
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise UserError(f"{overrides_source} {unknown[0]!r} is not a config field; "
                            f"known fields: {', '.join(sorted(names))}")
        values.update(overrides)
    return from_dict(cls, values, source=getattr(args, "config", None) or "config")


def add_resume_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", metavar="CHECKPOINT",
                        help="continue a run from its checkpoint.pt, in its folder, with the config stored in it")


def check_resume_only(cls: type, args: argparse.Namespace, extra: Sequence[str] = ()) -> None:
    """``--resume`` continues with the checkpoint's own config: other options would be ignored, so
    passing them is an error rather than a surprise."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = [k for k in vars(args) if k in names] + (["config"] if getattr(args, "config", None) else [])
    given += [k for k in extra if getattr(args, k, None)]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise UserError(f"{flag}: not allowed with --resume, which continues with the config stored in the "
                        "checkpoint; pass --resume alone")


def parse_config(cls: type[C], argv: Sequence[str] | None = None, description: str | None = None,
                 parser: argparse.ArgumentParser | None = None) -> tuple[C, argparse.Namespace]:
    """Parse ``argv`` into a config of type ``cls``; ``parser`` may carry extra, non-config options."""
    parser = parser or argparse.ArgumentParser(description=description)
    add_config_arguments(parser, cls)
    args = parser.parse_args(argv)
    return config_from_args(cls, args), args


def write_yaml(path: str | os.PathLike, values: dict[str, Any]) -> None:
    """Write a mapping as YAML, atomically."""
    from core.checkpoint import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(values, sort_keys=False))
