"""Batches straight from uint8 tensors kept on the training device, augmented a whole batch at a time.

No per-image PIL work and no worker processes: a batch is an index into the resident tensor, a
random crop (zero padding) and a horizontal flip applied to the whole batch with tensor ops, then
normalisation, then an optional cutout, whose squares are 0 in the normalised batch (the mean colour,
as in the reference definition). Randomness comes from one CPU ``torch.Generator`` per loader,
whose state goes into checkpoints, so a resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import torch

from core.data import ImageSet


@dataclasses.dataclass(frozen=True)
class Share:
    """Rank ``rank``'s share of a global batch of ``total`` images split over ``world_size`` ranks
    (``tensor_split``, as :class:`BatchLoader` splits it). An augmentation given a share draws its
    random numbers for the whole batch, exactly as one process draws them, and keeps this share's."""

    total: int
    rank: int
    world_size: int

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return t.tensor_split(self.world_size)[self.rank]


def _draw(values: torch.Tensor, share: Share | None, device: torch.device) -> torch.Tensor:
    """Random values drawn for a whole batch, this share's of them, on ``device``."""
    return (share(values) if share is not None else values).to(device, non_blocking=True)


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator, flip: bool = False,
                share: Share | None = None) -> torch.Tensor:
    """Per-image random crop of ``x`` (B x C x H x W) after zero-padding each side by ``padding``,
    and, with ``flip``, a left-right flip of each image with probability 1/2: one gather from the
    padded batch, each image with its own offsets and direction. With ``share``, ``x`` is that
    share of a batch (:class:`Share`)."""
    b, c, h, w = x.shape
    n = share.total if share is not None else b
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding)).view(b, c, -1)
    oy = _draw(torch.randint(0, 2 * padding + 1, (n,), generator=gen), share, x.device)
    ox = _draw(torch.randint(0, 2 * padding + 1, (n,), generator=gen), share, x.device)
    j = torch.arange(w, device=x.device)
    cols = j.expand(b, w)
    if flip:
        flipped = _draw(torch.rand(n, generator=gen) < 0.5, share, x.device)
        cols = torch.where(flipped[:, None], w - 1 - j, j)
    rows = oy[:, None] + torch.arange(h, device=x.device)
    index = rows[:, :, None] * (w + 2 * padding) + (cols + ox[:, None])[:, None, :]
    return padded.gather(2, index.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)


def random_flip(x: torch.Tensor, gen: torch.Generator, share: Share | None = None) -> torch.Tensor:
    """Flip each image left-right with probability 1/2 (``share``: as in :func:`random_crop`)."""
    n = share.total if share is not None else x.shape[0]
    mask = _draw(torch.rand(n, generator=gen) < 0.5, share, x.device)
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def cutout_mask(x: torch.Tensor, size: int, gen: torch.Generator, share: Share | None = None) -> torch.Tensor:
    """Where cutout (DeVries & Taylor 2017) blanks each image of the batch ``x`` (B x C x H x W):
    a ``size`` x ``size`` square centred anywhere in the image, clipped at the border; a B x 1 x H x W
    boolean mask (``share``: as in :func:`random_crop`)."""
    b, _, h, w = x.shape
    n = share.total if share is not None else b
    cy = _draw(torch.randint(0, h, (n,), generator=gen), share, x.device)
    cx = _draw(torch.randint(0, w, (n,), generator=gen), share, x.device)
    r = torch.arange(h, device=x.device)[None, :]
    c = torch.arange(w, device=x.device)[None, :]
    in_rows = (r >= (cy - size // 2)[:, None]) & (r < (cy - size // 2 + size)[:, None])
    in_cols = (c >= (cx - size // 2)[:, None]) & (c < (cx - size // 2 + size)[:, None])
    return in_rows[:, None, :, None] & in_cols[:, None, None, :]


def cutout(x: torch.Tensor, size: int, gen: torch.Generator, value: float = 0) -> torch.Tensor:
    """Cutout: ``x`` with its :func:`cutout_mask` square set to ``value``. The reference definitions
    (quark0/darts ``utils.Cutout``, NNI's DARTS tutorial) blank the *normalised* tensor with 0,
    which is the data's mean colour; :class:`BatchLoader` does the same."""
    return x.masked_fill(cutout_mask(x, size, gen), value)


class BatchLoader:
    """Iterates (images, labels) batches of an :class:`ImageSet` held on ``device``.

    ``train=True`` shuffles, drops the last partial batch and augments; ``train=False`` walks the
    set in order. ``max_batches`` (> 0) ends every pass early, for smoke runs. Images come out
    normalised float32 (channels_last if asked), labels int64.

    Data-parallel (``world_size`` > 1, see :mod:`core.distributed`): every rank walks the same
    global batches (same generator, same seed) and takes only its ``rank``-th share of each (only
    those images are gathered, and copied to the device when not resident); a training batch's
    augmentation draws its random numbers for the whole global batch and applies this share's
    (:class:`Share`), so the ranks together see exactly the images one process would.

    ``resident=False`` (a data set too large for the GPU's free memory, ``core.device.data_fits``)
    keeps the images in host memory and copies each batch to ``device`` as it is drawn, through
    pinned buffers on CUDA; the batches are the same as resident ones.
    """

    def __init__(self, data: ImageSet, *, batch_size: int, device: torch.device, mean, std,
                 train: bool, crop_padding: int = 4, flip: bool = True, cutout: int = 0,
                 max_batches: int = 0, channels_last: bool = False, seed: int = 0, rank: int = 0,
                 world_size: int = 1, resident: bool = True):
        self.resident = resident
        self.images = data.images.to(device) if resident else data.images
        self.labels = data.labels.to(device) if resident else data.labels
        self._staging = _Staging(device) if not resident else None
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.crop_padding, self.flip, self.cutout = crop_padding, flip, cutout
        self.max_batches = max_batches
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.inv_std = 1.0 / (torch.tensor(std, device=device).view(1, -1, 1, 1) * 255)
        self.generator = torch.Generator().manual_seed(seed)
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        n = len(self.labels)
        full = n // self.batch_size if self.train else -(-n // self.batch_size)
        return min(full, self.max_batches) if self.max_batches else full

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def augment(self, x: torch.Tensor, share: Share | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The training augmentation of a uint8 batch (shape and dtype kept), or of ``share`` of one,
        and cutout's holes (``None`` without cutout), which are blanked after normalisation: to 0,
        the mean colour."""
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, self.generator, flip=self.flip, share=share)
        elif self.flip:
            x = random_flip(x, self.generator, share)
        return x, cutout_mask(x, self.cutout, self.generator, share) if self.cutout else None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().sub_(self.mean).mul_(self.inv_std)
        return x.contiguous(memory_format=self.memory_format)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        where = self.images.device  # the device for resident data, the host otherwise
        if self.train:
            order = torch.randperm(n, generator=self.generator).to(where, non_blocking=True)
        else:
            order = torch.arange(n, device=where)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            share = Share(len(idx), self.rank, self.world_size) if self.world_size > 1 else None
            if share is not None:  # this rank's images of the global batch, the only ones it gathers
                idx = share(idx)
            x, hole = self.take(self.images, idx), None
            if self.train:
                x, hole = self.augment(x, share)
            x = self.normalize(x)
            yield (x if hole is None else x.masked_fill(hole, 0.0)), self.take(self.labels, idx)

    def take(self, source: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``source[idx]`` on the training device (copied there from the host when not resident)."""
        if self._staging is None:
            return source.index_select(0, idx)
        return self._staging.copy(source, idx.to(source.device))


class _Staging:
    """Host-to-device batch copies for data kept in host memory: on CUDA each batch is gathered
    into one of two pinned buffers and copied asynchronously; a buffer is reused only once its
    previous copy finished (a CUDA event), so a copy overlaps the step that uses the batch before."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pinned = device.type == "cuda"
        self.buffers: dict[tuple, list] = {}

    def copy(self, source: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if not self.pinned:
            return source.index_select(0, idx).to(self.device)
        shape = (len(idx), *source.shape[1:])
        ring = self.buffers.setdefault((shape, source.dtype), [])
        if len(ring) < 2:
            ring.append([torch.empty(shape, dtype=source.dtype, pin_memory=True), None])
        slot = ring.pop(0)
        buffer, event = slot
        if event is not None:
            event.synchronize()  # its last copy to the device has finished
        torch.index_select(source, 0, idx, out=buffer)
        out = buffer.to(self.device, non_blocking=True)
        slot[1] = torch.cuda.Event()
        slot[1].record()
        ring.append(slot)
        return out
