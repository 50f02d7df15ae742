"""Data-parallel training under ``torchrun``: the one place that knows about process groups.

``torchrun --nproc_per_node N python_script_or_-m_module ARGS`` starts N copies of a training
command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous address in their
environment. :func:`setup` (called by :func:`core.run_training.train`) joins the process group: NCCL
when training on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on the CPU. Without
``torchrun`` (``WORLD_SIZE`` unset or 1) every function here is a no-op and a command runs as one
process. What torchrun's environment says (one of several processes? rank 0?) is read without torch
by :mod:`core.launch`.

The rules the engine follows (``core.trainer.Trainer``, ``core.loader.BatchLoader``):

- the config's ``batch_size`` is the global batch: every rank draws the same global batch from
  the same seeded generator and trains on its ``batch_size / N`` slice; DistributedDataParallel
  averages the gradients, so a step is the step one process takes on the whole batch, and the
  learning rate and schedule stay what the config says;
- BatchNorm: SyncBatchNorm on CUDA (statistics over the global batch, as in one process);
  torch's SyncBatchNorm has no CPU kernel, so on the CPU each rank normalises with its own
  slice's statistics (the running statistics are rank 0's, broadcast before every forward);
- evaluation runs on every rank over a slice of each batch with rank 0's weights and buffers,
  and the counts are summed, so it gives one process's numbers;
- only rank 0 writes: run folder (whose path it broadcasts), log, metrics, checkpoints, result;
  the other ranks' ``print`` is silenced.
"""
from __future__ import annotations

import atexit
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from core.errors import UserError
from core.launch import at_success, env_rank, launched, silence_print


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes (rank 0, or the only process); before the process group is
    joined, torchrun's ``RANK`` says it."""
    return (rank() if dist.is_initialized() else env_rank()) == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group ``torchrun`` announced (once) and return this rank's device:
    ``cuda:LOCAL_RANK`` on CUDA, the CPU otherwise. Without ``torchrun``, ``device`` unchanged."""
    if not launched():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise UserError(f"torchrun started local rank {local} but only {torch.cuda.device_count()} CUDA GPU(s) "
                            "are visible; use --nproc_per_node at most the number of GPUs")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
        atexit.register(shutdown)
        at_success(leave)
        if not is_main():
            silence_print()
    return device


def check_batch(batch_size: int) -> None:
    """The global batch must split evenly over the ranks (each then averages over equal shares)."""
    n = world_size()
    if batch_size % n:
        raise UserError(f"batch_size: {batch_size} does not split over {n} processes; the batch size is the global "
                        f"batch, so make it a multiple of --nproc_per_node ({n})")


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """SyncBatchNorm instead of BatchNorm when data-parallel on CUDA (before the optimizer is built:
    the converted layers keep the same parameter objects)."""
    if world_size() > 1 and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def data_parallel(net: nn.Module, device: torch.device) -> nn.Module:
    """``net`` wrapped in DistributedDataParallel when there are several ranks (weights broadcast
    from rank 0 now, gradients averaged in every backward), else ``net``."""
    if world_size() == 1:
        return net
    return nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(net: nn.Module) -> nn.Module:
    """What evaluation runs: ``net`` without DistributedDataParallel's collectives. A compiled DDP
    module (``torch.compile`` of the DDP wrapper, as PyTorch recommends) gives the plain module DDP
    wraps; a compiled single-process network stays compiled."""
    inner = getattr(net, "_orig_mod", net)  # torch.compile's OptimizedModule keeps the original here
    return inner.module if isinstance(inner, nn.parallel.DistributedDataParallel) else net


def comm_device() -> torch.device:
    """Where this rank's collectives take their tensors: its GPU under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sync_buffers(model: nn.Module) -> None:
    """Every rank takes rank 0's buffers (BatchNorm running statistics) before an evaluation."""
    if world_size() > 1:
        device = comm_device()
        for buffer in model.buffers():
            moved = buffer.to(device)
            dist.broadcast(moved, 0)
            if moved is not buffer:
                buffer.copy_(moved)


def all_sum(*values: torch.Tensor | int | float) -> list[torch.Tensor]:
    """The sums over the ranks of scalars (tensors on any device, or numbers), in one all-reduce on
    the communication device (:func:`comm_device`), as float64 there (exact counts)."""
    if world_size() == 1:
        return [torch.as_tensor(v) for v in values]
    device = comm_device()
    packed = torch.stack([torch.as_tensor(v).detach().to(device, torch.float64).reshape(()) for v in values])
    dist.all_reduce(packed)
    return list(packed.unbind())


def gather(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` (picklable), in rank order, on rank 0; ``None`` on the other ranks."""
    if world_size() == 1:
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a run folder's path, say)."""
    if world_size() == 1:
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, 0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group at once (at exit, on every path: an error leaves without waiting, since
    a barrier there could pair with another rank's pending collective)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def leave() -> None:
    """Leave the process group at the successful end of a command, all ranks together: a barrier
    first, so that no rank tears its connections down while another still uses them (with gloo, a
    rank that leaves alone can abort at exit, "terminate called without an active exception", after
    its run has finished). A rank that failed instead makes torchrun stop the others. :func:`setup`
    has :func:`core.errors.cli_main` call this when the command succeeds."""
    barrier()
    shutdown()
