"""The training device: which one, whether this torch can drive it, what fits in its memory, and
what an out-of-memory error tells the user. Each check reads the device through a small function
(:func:`gpu_present`, :func:`free_memory`) or takes the device's facts as arguments, so that tests
run every branch on a CPU with faked facts.
"""
from __future__ import annotations

import os
import re
import warnings
from importlib import metadata
from pathlib import Path

import torch

from core.errors import UserError

GiB = 1 << 30

#: PyTorch's build for older GPUs: its CUDA 12.6 wheels (PyTorch 2.14's "legacy" CUDA build) are
#: compiled for compute capability 5.0 to 9.0 (Maxwell, Pascal, Volta, Turing, Ampere, Hopper) and
#: run on drivers older than the CUDA 13 build needs.
LEGACY_CUDA_BUILD = "cu126"
TORCH_INDEX = "https://download.pytorch.org/whl/"

#: Free device memory a data set may leave: the rest of what is free (after the training process's
#: own estimated need) is kept for the caching allocator's fragmentation and other processes.
DEVICE_MARGIN_BYTES = GiB // 2


def install_command(build: str = LEGACY_CUDA_BUILD) -> str:
    """The pip command that installs this torch (and torchvision) version built for ``build``."""
    torch_version = torch.__version__.split("+")[0]
    try:
        vision = f" torchvision=={metadata.version('torchvision').split('+')[0]}"
    except metadata.PackageNotFoundError:
        vision = ""
    return f"pip install torch=={torch_version}{vision} --index-url {TORCH_INDEX}{build}"


def gpu_present() -> bool:
    """Whether the machine has an NVIDIA GPU with its kernel driver loaded, whatever torch says."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def hidden_gpus() -> str | None:
    """``CUDA_VISIBLE_DEVICES`` when it hides every GPU, else ``None``. CUDA reads the variable as a
    comma-separated list that ends at its first entry that is no device (an empty entry, a negative
    or non-numeric index; ``GPU-``/``MIG-`` UUIDs aside), so ``""`` and ``"-1"`` show no GPU at all:
    what NNI sets for a trial with ``trialGpuNumber: 0``, and how users keep a run on the CPU."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None or value.strip().startswith(("GPU-", "MIG-")):
        return None
    index = re.match(r"[+-]?\d+", value.split(",")[0].strip())
    return value if index is None or int(index.group()) < 0 else None


def cpu_reason(name: str) -> str | None:
    """Why ``--device name`` trains on the CPU though the machine has GPUs: the log's words for
    :func:`hidden_gpus`, or ``None``."""
    hidden = hidden_gpus()
    if name != "auto" or hidden is None:
        return None
    return f"auto: CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU (NNI sets it so for trialGpuNumber 0)"


def cuda_unusable_reason() -> str | None:
    """Why CUDA is not available to this torch though the machine has an NVIDIA GPU (a driver too
    old for the build, say: torch's own warning), or ``None`` when CUDA works, no GPU is there, or
    ``CUDA_VISIBLE_DEVICES`` hides them all (:func:`hidden_gpus`)."""
    if torch.version.cuda is None or not gpu_present() or hidden_gpus() is not None:
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available:
        return None
    said = " ".join(str(caught[-1].message).split()) if caught else ""
    return said or "torch finds no usable CUDA device"


def unsupported_gpu(name: str, capability: tuple[int, int], arch_list: list[str]) -> str | None:
    """Why this torch cannot run kernels on a GPU of ``capability``, or ``None`` if it can. A build
    runs on a GPU if it holds machine code (``sm_XY``) of the same major version and a minor
    version at most the GPU's, or PTX (``compute_XY``) of at most the GPU's capability (compiled
    when loaded)."""
    if not arch_list:  # a build that does not say (ROCm, say): nothing to check
        return None
    major, minor = capability
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        if not digits.isdigit():
            continue
        a_major, a_minor = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return None
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return None
    return (f"the GPU {name!r} (compute capability {major}.{minor}) is not supported by this torch "
            f"{torch.__version__} (built for {' '.join(arch_list)}); install a build that supports it: "
            f"{install_command()} ; or pass --device cpu")


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU (also where ``CUDA_VISIBLE_DEVICES`` hides every GPU,
    :func:`hidden_gpus`); 'cuda' without a visible GPU is a :class:`UserError`, and so is a visible
    GPU this torch cannot drive (a driver too old for the build, or a compute capability the build
    has no kernels for): a one-line error with the install command, never a quiet fall-back to the
    CPU or a 'no kernel image' crash at the first kernel."""
    if name == "cuda" and hidden_gpus() is not None:
        raise UserError(f"device: 'cuda' was asked for but CUDA_VISIBLE_DEVICES={hidden_gpus()!r} hides every GPU; "
                        "unset it or name a GPU there (NNI: trialGpuNumber 1 or more), or use --device cpu")
    if name in ("auto", "cuda"):
        reason = cuda_unusable_reason()
        if reason is not None:
            raise UserError(f"device: {name}: this machine has an NVIDIA GPU but this torch {torch.__version__} "
                            f"(CUDA {torch.version.cuda}) cannot use it: {reason}. Update the NVIDIA driver, or "
                            f"install a torch build for an older CUDA: {install_command()} ; or pass --device cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: 'cuda' was asked for but no CUDA GPU is available; use 'auto' or 'cpu'")
    device = torch.device(name)
    if device.type == "cuda":
        check_supported(device)
    return device


def check_supported(device: torch.device) -> None:
    """A :class:`UserError` if this torch has no kernels for ``device``'s compute capability."""
    reason = unsupported_gpu(torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device),
                             torch.cuda.get_arch_list())
    if reason is not None:
        raise UserError(f"device: {reason}")


def free_memory(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes of ``device``'s memory."""
    return torch.cuda.mem_get_info(device)


def data_fits(nbytes: int, device: torch.device, reserve: int = 0) -> tuple[bool, str]:
    """Whether a data set of ``nbytes`` may live on ``device`` while ``reserve`` bytes stay free for
    training (and :data:`DEVICE_MARGIN_BYTES` more), and the reason in words. The CPU always fits."""
    if device.type != "cuda":
        return True, f"on the {device.type}"
    free, total = free_memory(device)
    room = free - reserve - DEVICE_MARGIN_BYTES
    if nbytes <= room:
        return True, f"on the GPU ({nbytes / GiB:.2f} GiB of {free / GiB:.1f} GiB free)"
    return False, (f"in host memory, each batch copied to the GPU through a pinned buffer: the data "
                   f"({nbytes / GiB:.2f} GiB) "
                   f"and training (about {reserve / GiB:.1f} GiB) do not fit in the {free / GiB:.1f} GiB free of "
                   f"{total / GiB:.1f} GiB")


def out_of_memory_message(*, model: str, batch_size: int, precision: str, device: torch.device, during: str,
                          eval_batch_size: int | None = None) -> str:
    """The one line for an out-of-memory error: what ran out, where, and what to try."""
    where = device.type
    if device.type == "cuda":
        try:
            free, total = free_memory(device)
            where = f"{torch.cuda.get_device_name(device)} ({total / GiB:.1f} GiB, {free / GiB:.1f} GiB free now)"
        except Exception:  # the GPU may be unusable after the error
            where = "the GPU"
    evaluating = during in ("evaluation", "the final test")
    tries = [f"--batch-size {max(batch_size // 2, 1)}"]
    if evaluating and eval_batch_size:
        tries = [f"--eval-batch-size {max(eval_batch_size // 2, 1)}"]
    if precision == "fp32" and device.type == "cuda":
        tries.append("--amp (16-bit activations)")
    tries.append("fewer trials per GPU (maxTrialNumberPerGpu in the nnictl config)")
    size = f"eval batch size {eval_batch_size}" if evaluating and eval_batch_size else \
        f"batch size {batch_size}"
    return (f"out of memory during {during}: model {model} at {size} ({precision}) on {where}; try "
            + ", or ".join(tries))
