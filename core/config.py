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
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, TypeVar

import yaml

from core.errors import ArgumentParser, UserError, first_line
from core.files import check_input_file
from core.paths import NAMED_SOURCES, absolute_paths, default_data, default_data_root, default_out_dir

C = TypeVar("C", bound="TrainConfig")

#: Image sides (px) the networks take: 32 is CIFAR's; every model ends in global pooling, but the
#: deepest downsample 32x, and beyond 512 px the data no longer fits in memory as uint8 tensors.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 512

#: The allowed values of the choice fields, each named once; the config check, the command-line
#: help and the factories in core.trainer all read them from here.
Optimizer = Literal["SGD", "Adadelta", "Adagrad", "Adam", "Adamax"]
Scheduler = Literal["cosine", "none"]
Device = Literal["auto", "cpu", "cuda"]
ChannelsLast = Literal["auto", "on", "off"]
Compile = Literal["auto", "on", "off"]
OPTIMIZER_NAMES: tuple[str, ...] = typing.get_args(Optimizer)
SCHEDULER_NAMES: tuple[str, ...] = typing.get_args(Scheduler)
DEVICE_NAMES: tuple[str, ...] = typing.get_args(Device)


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of a numeric field: ``low`` <= value (``<`` when ``low_open``) and, when
    ``high`` is set, value <= ``high`` (``<`` when ``high_open``); ``note`` explains the bounds."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def allows(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.high is None:
            text = ("positive" if self.low_open else "0 or more") if self.low == 0 else \
                f"{'more than' if self.low_open else 'at least'} {self.low}"
        else:
            text = f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        return f"{text} {self.note}".rstrip()


#: What :class:`core.run_folder.Run` appends to a run name (``-YYYYmmdd-HHMMSS-k``), at its longest.
RUN_NAME_SUFFIX = "-20260101-000000-9999"


def field_range(cls: type, name: str) -> Range | None:
    """The :class:`Range` of field ``name``: declared once, where the field is declared first (a
    subclass that only changes the default, as the stages do, keeps it)."""
    for klass in cls.__mro__:
        declared = getattr(klass, "__dataclass_fields__", {}).get(name)
        if declared is not None and declared.metadata.get("range") is not None:
            return declared.metadata["range"]
    return None


def check_ranges(cfg: Any) -> None:
    """Raise :class:`UserError` for the first numeric field of ``cfg`` outside its :func:`field_range`."""
    for f in dataclasses.fields(cfg):
        allowed = field_range(type(cfg), f.name)
        value = getattr(cfg, f.name)
        if allowed is not None and isinstance(value, (int, float)) and not allowed.allows(value):
            raise UserError(f"{f.name}: {value} is not allowed; it must be {allowed.describe()}")


def check_data(data: str) -> None:
    """``data`` names a source core.data can load: one of :data:`core.paths.NAMED_SOURCES` or an
    existing path (checked when the config is made, so ``--print-config`` says so too)."""
    if data not in NAMED_SOURCES and not os.path.exists(data):
        raise UserError(f"data: {data!r} is neither one of {', '.join(NAMED_SOURCES)} nor an existing path "
                        "(an image folder or .tar.gz with train/<class>/ and test/<class>/)")


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name (bytes) the file system of ``folder`` (or its nearest existing parent) allows."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return os.pathconf(path, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def field(default: Any = dataclasses.MISSING, help: str = "", *,  # noqa: A002 - argparse's word
          factory: Callable[[], Any] | None = None, aliases: tuple[str, ...] = (), allowed: Range | None = None) -> Any:
    """A dataclass field with its help text (shown by ``--help``); ``factory`` for a default
    computed when the config is made (one read of the environment, say); ``aliases``: more
    spellings of its flag; ``allowed``: a number's :class:`Range`, checked by every config's
    ``validate`` (give it where the field is declared first; a subclass changing the default keeps it)."""
    metadata = {"help": help, "aliases": aliases, "range": allowed}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class TrainConfig:
    """Options shared by everything that trains a network with the core loop."""

    # --- data ---
    data: str = field(help="'cifar10' (torchvision download into --data-root), 'fake' (synthetic, offline), or "
                      "the path of an image folder / .tar.gz holding train/<class>/* and test/<class>/* "
                      "(env CIFAR_AUTOML_DATA)", factory=default_data)
    data_root: str = field(help="where CIFAR-10 is downloaded and decoded images are cached (env "
                           "CIFAR_AUTOML_DATA_ROOT; default: the repository's data/)", factory=default_data_root)
    val_fraction: float = field(0.1, "fraction of the training split held out for validation (fixed seed); 0 = none",
                                allowed=Range(0, 1, high_open=True))
    subset: int = field(0, "train on only N training images (0 = all)", allowed=Range(0, note="(0 = all)"))
    val_subset: int = field(0, "validate on only N images (0 = all)", allowed=Range(0, note="(0 = all)"))
    image_size: int = field(32, "images are resized to this side (px)", allowed=Range(
        MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, note="px (the networks downsample 32 px images by 8 to 32)"))
    batch_size: int = field(128, "training batch size (images)", allowed=Range(1))
    eval_batch_size: int = field(500, "evaluation batch size (images)", allowed=Range(1))
    crop_padding: int = field(4, "random-crop padding (px); 0 = no crop", allowed=Range(0))
    flip: bool = field(True, "random horizontal flip")
    cutout: int = field(0, "cutout square side (px); 0 = off", allowed=Range(0))
    # --- optimisation ---
    optimizer: Optimizer = field("SGD", "the torch optimizer")
    lr: float = field(0.1, "initial learning rate (> 0)", allowed=Range(0, low_open=True))
    lr_min: float = field(0.0, "learning rate the cosine schedule ends at (at most lr)", allowed=Range(0))
    momentum: float = field(0.9, "SGD momentum (other optimizers ignore it)", allowed=Range(0, 1, high_open=True))
    weight_decay: float = field(5e-4, "L2 weight decay", allowed=Range(0))
    epochs: int = field(30, "training epochs", allowed=Range(1))
    scheduler: Scheduler = field("cosine", "'cosine' (to lr_min over the epochs) or 'none'")
    grad_clip: float = field(0.0, "clip the gradient norm to this; 0 = off", allowed=Range(0, note="(0 = off)"))
    # --- run ---
    seed: int = field(0, "seed for weights, shuffling and augmentation", allowed=Range(0, 2**63, high_open=True))
    max_batches: int = field(0, "stop every epoch (and evaluation) after N batches: seconds-long smoke runs; "
                             "0 = full epochs", allowed=Range(0, note="(0 = full epochs)"))
    device: Device = field("auto", "'auto' (CUDA when present), 'cpu' or 'cuda'")
    amp: bool = field(True, "mixed precision on a GPU: bf16 from compute capability 8.0, fp16 with a gradient "
                      "scaler below (core.speed.choose_precision); off = float32; the CPU trains in float32")
    channels_last: ChannelsLast = field("auto", "channels_last memory format: 'auto' (where it was measured "
                                        "faster, per device and model: core.speed.CHANNELS_LAST), 'on' or 'off'")
    compile: Compile = field("auto", "torch.compile the network: 'auto' (where the planned training images pass the "
                             "measured break-even, core.speed.COMPILE_BREAK_EVEN_IMAGES, for models not measured "
                             "to gain nothing), 'on' or 'off'; "
                             "compiled kernels are cached in the data root for every later trial and run")
    out_dir: str = field(help="parent folder of the run folders (env CIFAR_AUTOML_RUNS; default: the "
                         "repository's runs/)", factory=default_out_dir)
    run_name: str = field("", "run folder name prefix (default: the command's)")
    progress: bool = field(True, "per-epoch progress bar on a terminal")

    threads: int = field(0, "CPU threads for torch (0 = torch's default; on a CPU machine set cores / processes "
                         "running at once, e.g. cores / trialConcurrency)", allowed=Range(0, note="(0 = torch's default)"))

    def validate(self) -> None:
        """Raise :class:`UserError` naming the first bad field: each numeric field against its
        declared range (:func:`check_ranges`), then the relations between fields (choices are
        checked on parsing)."""
        check_ranges(self)
        check_data(self.data)
        cores = os.cpu_count() or 1
        if self.threads > cores:
            raise UserError(f"threads: {self.threads} is not allowed; it must be in [0, {cores}] (this machine's "
                            "CPU cores; 0 = torch's default)")
        if self.scheduler == "cosine" and self.lr_min > self.lr:
            raise UserError(f"lr_min: {self.lr_min} is not allowed with lr {self.lr}; the cosine schedule falls from lr "
                            "to lr_min, so lr_min must be at most lr")
        if self.val_subset and not self.val_fraction:
            raise UserError(f"val_subset: {self.val_subset} is not allowed with val_fraction 0 (there is no validation "
                            "split to take it from); set val_fraction, or val_subset 0")
        if self.crop_padding >= self.image_size:
            raise UserError(f"crop_padding: {self.crop_padding} is not allowed; it must be less than the image size "
                            f"({self.image_size} px)")
        if self.cutout > self.image_size:
            raise UserError(f"cutout: {self.cutout} is not allowed; it must be at most the image size "
                            f"({self.image_size} px)")
        if self.run_name and ("/" in self.run_name or os.sep in self.run_name or self.run_name.startswith(".")):
            raise UserError(f"run_name: {self.run_name!r} is not allowed; use a plain folder name (no '/', no "
                            "leading '.')")
        longest = name_max(self.out_dir) - len(RUN_NAME_SUFFIX)
        if len(os.fsencode(self.run_name)) > longest:
            raise UserError(f"run_name: {len(os.fsencode(self.run_name))} bytes is too long; at most {longest} (the "
                            f"file system's limit for a folder name, less the {len(RUN_NAME_SUFFIX)} of the time stamp)")
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise UserError(f"out_dir: {self.out_dir!r} is a file, not a folder")


@dataclasses.dataclass
class ModelConfig(TrainConfig):
    """Training options plus which registered model (``models.MODELS``) to train."""

    model: str = field("resnet18", "a name from models.MODELS")

    def validate(self) -> None:
        from models import MODELS

        if self.model not in MODELS:
            raise UserError(f"model: unknown value {self.model!r}; allowed: {', '.join(sorted(MODELS))}")
        super().validate()


@dataclasses.dataclass
class SearchTrialConfig(TrainConfig):
    """Training options of one candidate of a search: the core's, scored on the validation split."""

    keep_checkpoint: bool = field(False, "keep checkpoint.pt after the trial (retraining starts from scratch, "
                                  "so off by default)")

    def validate(self) -> None:
        super().validate()
        if self.val_fraction <= 0:
            raise UserError(f"val_fraction: {self.val_fraction} is not allowed for a search trial; it must be "
                            "in (0, 1), because candidates are ranked by validation accuracy")


def check_choice(field: str, value: Any, allowed: Sequence[str]) -> None:
    """Raise :class:`UserError` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise UserError(f"{field}: unknown value {value!r}; allowed: {', '.join(allowed)}")


def choices(typ: Any) -> tuple[str, ...] | None:
    """The allowed values of a ``Literal[...]`` field type (``None`` for other types)."""
    typ, _ = _strip_optional(typ)
    return typing.get_args(typ) if typing.get_origin(typ) is Literal else None


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
    """Check one value against its field type: YAML and NNI give ints for floats, PyYAML reads
    ``1e-3`` as a string; a float must be finite, a choice one of its allowed values."""
    allowed = choices(typ)
    typ, optional = _strip_optional(typ)
    if optional and value is None:
        return None
    if allowed is not None:
        if isinstance(value, bool) and {"on", "off"} <= set(allowed):
            value = "on" if value else "off"  # YAML 1.1 reads unquoted on/off as booleans
        check_choice(name, value, allowed)
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            if not math.isfinite(number):
                raise UserError(f"{name}: {value!r} is not allowed; it must be a finite number")
            return float(number)
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


def read_text(path: str | os.PathLike, what: str) -> str:
    """The text of a file the user named, or a :class:`UserError` saying what is wrong with it
    (missing, a folder, not text)."""
    p = check_input_file(path, what)
    try:
        return p.read_text()
    except UnicodeDecodeError:
        raise UserError(f"{what} {str(p)!r} is not a text file") from None
    except OSError as exc:
        raise UserError(f"{what} {str(p)!r} cannot be read ({exc.strerror})") from None


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping, turning a missing or malformed file into a :class:`UserError`."""
    p = Path(path)
    text = read_text(p, "config file")
    try:
        values = yaml.load(text, Loader=UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {str(p)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {str(p)!r} must hold a mapping of field: value")
    return values


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key repeated in a mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} appears more than once in one "
                                                        "mapping (which value is meant?); keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class DuplicateKeyError(ValueError):
    """A JSON object names one key twice (``json`` would silently keep the last value)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(key)
        out[key] = value
    return out


def parse_json(text: str) -> Any:
    """``json.loads`` that raises :class:`DuplicateKeyError` (a ``ValueError``) for a key repeated
    in an object; for readers that treat malformed text themselves. Others: :func:`loads_json`."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def loads_json(text: str, what: str) -> Any:
    """Parse JSON text that ``what`` (a file, say) holds: the one JSON reader of the project. A key
    repeated in an object, malformed text, or nesting too deep is a :class:`UserError` naming ``what``."""
    try:
        return parse_json(text)
    except DuplicateKeyError as exc:
        raise UserError(f"{what}: the key {exc.args[0]!r} appears more than once in one object (which value is "
                        "meant?); keep one") from None
    except RecursionError:
        raise UserError(f"{what}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # malformed, or an integer of thousands of digits
        raise UserError(f"{what}: not valid JSON ({first_line(exc)})") from None


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file with :func:`loads_json`, turning a missing or malformed file into a
    :class:`UserError` that names ``what`` it is (``--arc``, say)."""
    p = Path(path)
    return loads_json(read_text(p, what), f"{what} {str(p)!r}")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--config FILE`` and one ``--field-name`` flag per dataclass field (defaults suppressed)."""
    parser.add_argument("--config", metavar="YAML", help="YAML file of field: value (flags override it)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (paths made absolute) as YAML and exit")
    group = parser.add_argument_group(f"{cls.__name__} fields")
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        typ = types_[f.name]
        flags = ("--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ()))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        text = f"{f.metadata.get('help', '')} (default: {default})"
        if typ is bool:
            group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=text)
        else:
            base, _ = _strip_optional(typ)
            conv = base if base in (int, float, str) else str
            if choices(typ):
                text = f"one of {', '.join(choices(typ))}: {text}"
            group.add_argument(*flags, dest=f.name, type=conv, default=argparse.SUPPRESS, metavar=f.name.upper(),
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
    cfg = from_dict(cls, absolute_paths(values), source=getattr(args, "config", None) or "config")
    if getattr(args, "print_config", False):
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        raise SystemExit(0)
    return cfg


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
    parser = parser or ArgumentParser(description=description)
    add_config_arguments(parser, cls)
    args = parser.parse_args(argv)
    return config_from_args(cls, args), args


def write_yaml(path: str | os.PathLike, values: dict[str, Any]) -> None:
    """Write a mapping as YAML, atomically."""
    from core.files import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(values, sort_keys=False))
