"""Speed choices that depend on the device or the model, each resolved here, once, from a measured
table, with the reason the run's log prints (figures and how to re-measure them: docs/speed.md,
``benchmarks/bench_trial.py``):

- mixed precision (:func:`choose_precision`): bf16 on GPUs that compute it natively, fp16 with a
  gradient scaler on older GPUs, float32 on the CPU and with ``--no-amp``;
- memory format (:func:`choose_channels_last`): ``channels_last: auto`` per device *and* model
  from the stage's measurement (:class:`ModelNotes`) or :data:`CHANNELS_LAST`, else the device's rule;
- ``torch.compile`` (:func:`choose_compile`): ``compile: auto`` where the planned training images
  pass the measured break-even :data:`COMPILE_BREAK_EVEN_IMAGES` (not for models measured to
  gain nothing, :data:`COMPILE_NO_GAIN`, nor where the stage says why not, :class:`ModelNotes`),
  with one compile cache shared by every trial and run (:func:`compile_cache_dir`);
- the memory a trial needs on a GPU (:func:`training_bytes`), which the engine compares with the
  GPU's free memory (``core.device``).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class Choice:
    """A resolved choice and why (the line the log prints)."""

    value: Any
    reason: str


@dataclasses.dataclass(frozen=True)
class ModelNotes:
    """What the stage that trains a network knows of it for the choices below (the engine is told,
    ``core.trainer.Trainer``'s ``notes``): ``key``, the name the tables and the log know it by;
    ``channels_last``, its measured memory format per device type (device type -> (channels_last?,
    the measurement)), taken before :data:`CHANNELS_LAST` and the device's rule; ``no_compile``,
    why ``compile: auto`` must not compile it (its step, or the network, changes what a compile
    would fix), said in the log after ``auto:``."""

    key: str | None = None
    channels_last: Mapping[str, tuple[bool, str]] = dataclasses.field(default_factory=dict)
    no_compile: str | None = None


def model_key(model: nn.Module, cfg: Any = None, notes: ModelNotes | None = None) -> str:
    """The name the tables below know a network by: the registry name (``cfg.model``) when the
    config has one, else the stage's name for it (``notes.key``), else the network's class name."""
    name = getattr(cfg, "model", None)
    if name:
        return str(name)
    if notes is not None and notes.key:
        return notes.key
    return type(model).__name__


# --- mixed precision -------------------------------------------------------------------------------

#: GPUs from this compute capability on (Ampere and later) compute bf16 natively on tensor cores;
#: below it (T4 7.5, V100 7.0, P100 6.0) bf16 is emulated, slower than fp16 and than fp32.
BF16_MIN_CAPABILITY = (8, 0)


@dataclasses.dataclass(frozen=True)
class Precision:
    """How a step computes: ``dtype`` is the autocast dtype (``None``: float32, no autocast);
    ``scaled``: a gradient scaler guards fp16 gradients against underflow."""

    name: str
    dtype: torch.dtype | None
    scaled: bool
    reason: str

    @property
    def half(self) -> bool:
        return self.dtype is not None


FP32 = "fp32"


def _fp32(reason: str) -> Precision:
    return Precision(FP32, None, False, reason)


def choose_precision(device: torch.device, amp: bool, *, capability: tuple[int, int] | None = None,
                     can_scale: bool = True) -> Precision:
    """The precision of ``--amp`` (``amp``) on ``device``: float32 when off and on the CPU; on a GPU
    bf16 from :data:`BF16_MIN_CAPABILITY` on, else fp16 with a gradient scaler, or float32 when the
    step cannot scale its loss (``can_scale=False``: a specialised step without the engine's
    scaler). ``capability`` defaults to the device's own (tests pass a fake one)."""
    if not amp:
        return _fp32("fp32: --no-amp")
    if device.type != "cuda":
        return _fp32(f"fp32: mixed precision is for GPUs; the {device.type} trains in float32 (docs/speed.md, "
                     "'The choices': what was measured on the CPU)")
    major, minor = capability if capability is not None else torch.cuda.get_device_capability(device)
    where = f"compute capability {major}.{minor}"
    if (major, minor) >= BF16_MIN_CAPABILITY:
        return Precision("bf16", torch.bfloat16, False, f"bf16 autocast: {where} computes bf16 natively")
    if not can_scale:
        return _fp32(f"fp32: {where} has no native bf16 and this step has no gradient scaler for fp16")
    return Precision("fp16", torch.float16, True, f"fp16 autocast with a gradient scaler: {where} has no native "
                     f"bf16 (it needs {BF16_MIN_CAPABILITY[0]}.{BF16_MIN_CAPABILITY[1]})")


# --- memory format ---------------------------------------------------------------------------------

#: (device type, model key) -> (channels_last?, the measurement behind it). Filled from interleaved
#: A/B runs (``bench_trial.py --ab channels_last --repeats N``, docs/speed.md); a model not listed
#: takes its device's rule (:func:`_channels_last_rule`).
#: CPU rows: ``--ab channels_last --repeats 5 --steps 5`` on the quiet 2-core test machine
#: (2026-12-02, load average 1.0 -> 2.0; batch 128, fp32, the pure train step): on/off speed, median
#: of 5 interleaved pairs, and its range over the pairs.
_CPU_AB = "on/off speed {median}x, {low}-{high}x over 5 interleaved pairs (pure train step, batch 128, quiet 2-core CPU)"
CHANNELS_LAST: dict[tuple[str, str], tuple[bool, str]] = {
    ("cpu", "vgg"): (True, "faster in every pair: " + _CPU_AB.format(median=1.09, low=1.08, high=1.25)),
    ("cpu", "resnet18"): (True, "faster in every pair: " + _CPU_AB.format(median=1.25, low=1.21, high=1.32)),
    ("cpu", "googlenet"): (True, "faster in every pair: " + _CPU_AB.format(median=1.54, low=1.51, high=1.67)),
    ("cpu", "densenet121"): (True, "faster in every pair: " + _CPU_AB.format(median=1.18, low=1.11, high=1.33)),
    ("cpu", "mobilenet"): (True, "faster in every pair: " + _CPU_AB.format(median=1.49, low=1.42, high=1.53)),
    ("cpu", "dpn92"): (False, "within the noise, so the default: " + _CPU_AB.format(median=0.98, low=0.88, high=1.30)),
    ("cpu", "shufflenetg2"): (True, "faster in every pair: " + _CPU_AB.format(median=1.18, low=1.00, high=1.26)),
    ("cpu", "senet18"): (True, "faster in every pair: " + _CPU_AB.format(median=1.12, low=1.11, high=1.22)),
}


def _channels_last_rule(device_type: str, precision: Precision) -> tuple[bool, str]:
    """The device's rule for models the table does not list."""
    if device_type == "cuda":
        if precision.half:
            return True, f"cuDNN's {precision.name} tensor-core convolutions run in NHWC (not yet measured here)"
        return False, "fp32 convolutions gain nothing from NHWC, and every conversion costs"
    return False, f"not measured faster for this model on the {device_type} (bench_trial.py --ab channels_last)"


def choose_channels_last(setting: str, device: torch.device, key: str | None = None,
                         precision: Precision | None = None, notes: ModelNotes | None = None) -> Choice:
    """The config's ``channels_last`` ('auto', 'on', 'off') for ``device`` and the model ``key``
    (with what its stage measured, ``notes``)."""
    if setting != "auto":
        return Choice(setting == "on", f"--channels-last {setting}")
    entry = (notes.channels_last.get(device.type) if notes is not None else None) \
        or CHANNELS_LAST.get((device.type, key or ""))
    if entry is None:
        entry = _channels_last_rule(device.type, precision or _fp32(""))
    value, why = entry
    return Choice(value, f"auto on {device.type} for {key or 'this model'}: {why}")


def use_channels_last(setting: str, device: torch.device, key: str | None = None,
                      precision: Precision | None = None, notes: ModelNotes | None = None) -> bool:
    return choose_channels_last(setting, device, key, precision, notes).value


# --- torch.compile ---------------------------------------------------------------------------------

#: Training images from which ``compile: auto`` compiles, per device type: the one-time compile
#: seconds over the seconds compiling saves per image. CPU: resnet18 (batch 128, quiet 2-core machine,
#: 2026-12-02, docs/speed.md) compiled in 32.1 s with an empty cache (1.9 s for a later trial reading
#: the shared cache) for a train step 1.14x faster (84.1 -> 99.6 img/s, median of 5 interleaved
#: pairs, range 1.10-1.21x): 32.1 / (1/84.1 - 1/99.6) = 17,400 images. Re-measure with
#: ``bench_trial.py --ab compile --repeats 5`` and ``--compile-cache``.
#: CUDA: not measured, so ``auto`` does not compile there.
COMPILE_BREAK_EVEN_IMAGES: dict[str, int] = {"cpu": 17_400}

#: (device type, model key) -> why ``auto`` never compiles it there: the same A/B found no gain it
#: could tell from noise (the compile would cost seconds and a C++ build for nothing).
COMPILE_NO_GAIN: dict[tuple[str, str], str] = {
    ("cpu", "vgg"): "compiled/eager train step 1.00x, 0.96-1.10x over 5 interleaved pairs: no measured gain",
    ("cpu", "mobilenet"): "compiled/eager train step 0.94x, 0.88-1.06x over 5 interleaved pairs: no measured gain",
}

#: The compile cache's folder inside the data root (shared by every trial and run that uses it).
COMPILE_CACHE = "torch-compile-cache"


def planned_images(cfg: Any, train_images: int) -> int:
    """Training images a run plans to process: epochs x the images of one epoch (``max_batches``
    batches at most)."""
    per_epoch = (train_images // cfg.batch_size) * cfg.batch_size
    if cfg.max_batches:
        per_epoch = min(per_epoch, cfg.max_batches * cfg.batch_size)
    return cfg.epochs * per_epoch


def inductor_cxx() -> str:
    """The C++ compiler inductor builds CPU kernels with (its ``cpp.cxx`` default: ``$CXX``, else
    clang++ on macOS and g++ elsewhere), read without importing inductor (seconds)."""
    return os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")


def cpu_compiler() -> str | None:
    """The path of :func:`inductor_cxx`, or ``None`` where it is not installed (a laptop without a
    compiler: there ``compile: auto`` stays off instead of failing at the first step)."""
    return shutil.which(inductor_cxx())


def choose_compile(setting: str, device: torch.device, key: str, planned: int, *,
                   no_compile: str | None = None) -> Choice:
    """The config's ``compile`` ('auto', 'on', 'off'): ``auto`` compiles where ``planned`` training
    images reach the device's break-even, the model was not measured to gain nothing
    (:data:`COMPILE_NO_GAIN`) and its stage gives no reason not to (``no_compile``, from
    :attr:`ModelNotes.no_compile`: a step that runs the network for two optimizers, a network that
    changes every epoch and would recompile)."""
    if setting != "auto":
        return Choice(setting == "on", f"--compile {setting}")
    if no_compile:
        return Choice(False, f"auto: {no_compile}")
    if device.type == "cpu" and cpu_compiler() is None:
        return Choice(False, f"auto: no C++ compiler ({inductor_cxx()}) on the PATH for inductor's CPU kernels")
    break_even = COMPILE_BREAK_EVEN_IMAGES.get(device.type)
    if break_even is None:
        return Choice(False, f"auto: compiling is not yet measured on {device.type} (docs/speed.md)")
    if planned < break_even:
        return Choice(False, f"auto: {planned:,} planned training images are below the {device.type} break-even of "
                             f"{break_even:,}")
    if (device.type, key) in COMPILE_NO_GAIN:
        return Choice(False, f"auto: not for {key} on the {device.type} ({COMPILE_NO_GAIN[device.type, key]})")
    return Choice(True, f"auto: {planned:,} planned training images pass the {device.type} break-even of "
                        f"{break_even:,}")


def compile_cache_dir(data_root: str | os.PathLike) -> Path:
    """The persistent compile cache in the data root. Inductor's FX-graph and AOTAutograd caches
    (on by default) write their entries atomically (a temporary file renamed into place) and lock
    their C++ builds, so concurrent trials share it safely; a second trial of the same model loads
    the compiled kernels instead of building them."""
    return Path(data_root) / COMPILE_CACHE


def compile_model(model: nn.Module, enabled: bool, cache_dir: str | os.PathLike | None = None) -> nn.Module:
    """``torch.compile(model)`` (inductor; on a CPU it needs a C++ compiler) when ``enabled``, else
    ``model``. ``cache_dir`` becomes inductor's cache (``TORCHINDUCTOR_CACHE_DIR``) unless the
    environment already names one. The compiled module shares the parameters of ``model``: save and
    load the uncompiled module's state dict (no ``_orig_mod.`` prefix)."""
    if not enabled:
        return model
    if cache_dir is not None:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cache_dir).resolve()))
    return torch.compile(model)


# --- memory a trial needs on a GPU -----------------------------------------------------------------

#: Activation memory under 16-bit autocast relative to float32: the largest ratio measured at batch 128
#: on the CPU (googlenet 3.3 / 5.2 GiB; dpn92 3.2 / 5.5; densenet121 2.5 / 4.8), rounded up.
HALF_ACTIVATION_RATIO = 0.65
#: Bytes per parameter while training: weight, gradient and two optimizer moments (Adam), float32.
TRAINING_BYTES_PER_PARAMETER = 16
#: The CUDA context, cuDNN workspaces and the caching allocator's slack (an allowance, not measured).
CUDA_OVERHEAD_BYTES = 1 << 30
#: The share of a GPU's memory that trials sharing it should plan to fill (the caching allocator
#: fragments, cuDNN's benchmark mode tries workspaces): N trials fit when N x need <= this x memory.
GPU_PLANNED_FRACTION = 0.8


def activation_bytes(model: nn.Module, batch_size: int, image_size: int) -> int:
    """Bytes autograd saves for the backward pass of one float32 training forward at ``batch_size``,
    counted on the ``meta`` device (shapes only: no memory, no compute; about a second)."""
    meta = copy.deepcopy(model).to("meta").train()
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[id(t)] = t.numel() * t.element_size()
        return t

    x = torch.empty(batch_size, 3, image_size, image_size, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        meta(x)
    return sum(saved.values())


def training_bytes(model: nn.Module, batch_size: int, image_size: int, precision: Precision) -> int:
    """An estimate of the GPU memory one training process of ``model`` needs (without its data set):
    activations (:func:`activation_bytes`, x :data:`HALF_ACTIVATION_RATIO` under 16-bit autocast),
    weights, gradients and optimizer state, and :data:`CUDA_OVERHEAD_BYTES`."""
    act = activation_bytes(model, batch_size, image_size)
    if precision.half:
        act = int(act * HALF_ACTIVATION_RATIO)
    params = sum(p.numel() for p in model.parameters())
    return act + params * TRAINING_BYTES_PER_PARAMETER + CUDA_OVERHEAD_BYTES


def trials_that_fit(need: int, total: int) -> int:
    """How many training processes of ``need`` bytes one GPU of ``total`` bytes holds."""
    return int(total * GPU_PLANNED_FRACTION // need)
