"""Training-pipeline throughput: the project's loader against a per-image torchvision pipeline.

Both deliver the same augmented training batches (random crop with 4-pixel padding, horizontal
flip, normalisation) from the same decoded images, to nothing: images per second delivered to
the model is the figure. The baseline is the usual CIFAR-10 recipe, a ``DataLoader`` with two
workers over a dataset that turns each uint8 image into a PIL image and applies
``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor`` and ``Normalize``, exactly
as ``torchvision.datasets.CIFAR10`` does. Prints both rates and their ratio.

    python benchmarks/bench_loader.py                       # the JPEG CIFAR-10 copy in ../shared, else fake
    python benchmarks/bench_loader.py --data cifar10 --images 20000
"""
from __future__ import annotations

import time

import torch

from core.data import ImageSet, make_splits
from core.errors import ArgumentParser, cli_main
from core.loader import BatchLoader
from core.trainer import resolve_device
from measure import default_data

class PerImageDataset(torch.utils.data.Dataset):
    """uint8 images -> PIL -> torchvision transforms, one image at a time."""

    def __init__(self, data: ImageSet, transform):
        self.images = data.images.permute(0, 2, 3, 1).numpy()
        self.labels = data.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def usual_recipe_loader(data: ImageSet, mean, std, batch_size: int, workers: int,
                        images: int | None = None, drop_last: bool = True) -> torch.utils.data.DataLoader:
    """The usual CIFAR-10 training pipeline (the baseline of bench_loader and bench_trial): per-image
    ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` in a
    shuffling ``DataLoader`` with ``workers`` processes, over the first ``images`` of ``data``
    (``drop_last=False``: the last partial batch too, as NNI's example trial)."""
    from torchvision import transforms

    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(mean, std)])
    ds = torch.utils.data.Subset(PerImageDataset(data, tf), range(min(images or len(data), len(data))))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       drop_last=drop_last, persistent_workers=False)


def time_baseline(data: ImageSet, mean, std, batch_size: int, images: int, workers: int) -> float:
    loader = usual_recipe_loader(data, mean, std, batch_size, workers, images)
    seen, start = 0, time.perf_counter()
    for x, _ in loader:
        seen += len(x)
    return seen / (time.perf_counter() - start)


def time_project(data: ImageSet, mean, std, batch_size: int, images: int, device: torch.device) -> float:
    loader = BatchLoader(data, batch_size=batch_size, device=device, mean=mean, std=std, train=True)
    for _ in zip(range(3), loader):  # warm-up
        pass
    seen, start = 0, time.perf_counter()
    while seen < images:
        for x, _ in loader:
            seen += len(x)
            if seen >= images:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=default_data())
    p.add_argument("--data-root", default="data")
    p.add_argument("--images", type=int, default=20000, help="images per measurement")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="baseline DataLoader workers")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    splits = make_splits(args.data, args.data_root, val_fraction=0.0)
    device = resolve_device(args.device)
    print(f"data {args.data}: {len(splits.train):,} training images; batch {args.batch_size}; "
          f"project loader on {device.type}; baseline with {args.workers} workers; torch threads "
          f"{torch.get_num_threads()}")
    base, ours = [], []
    for r in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
        base.append(time_baseline(splits.train, splits.mean, splits.std, args.batch_size, args.images, args.workers))
        ours.append(time_project(splits.train, splits.mean, splits.std, args.batch_size, args.images, device))
        print(f"repeat {r + 1}: baseline {base[-1]:,.0f} img/s, project {ours[-1]:,.0f} img/s")
    b, o = sorted(base)[len(base) // 2], sorted(ours)[len(ours) // 2]
    print(f"median: per-image torchvision DataLoader {b:,.0f} img/s; project loader {o:,.0f} img/s; "
          f"ratio {o / b:.1f}x")


if __name__ == "__main__":
    main()
