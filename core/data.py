"""Data sources decoded once into uint8 tensors, and the train / validation / test splits.

Sources (the ``data`` option):

* ``cifar10``: torchvision's real download into the data root (the default);
* ``fake``: deterministic synthetic 32x32 images, learnable (each class has its own colour
  pattern), for tests and offline smoke runs;
* a path: an image folder, or a ``.tar.gz`` of one, laid out as ``train/<class>/*`` and
  ``test/<class>/*`` (torchvision's ``ImageFolder`` convention).

Image folders are decoded once and cached as tensors under ``<data_root>/cache``, so a second run
skips decoding. The validation split is carved from the training split with a fixed seed that
does not depend on the run's seed: every run and trial validates on the same images, and the test
split is used only for final reports.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from core.checkpoint import load_checkpoint, save_checkpoint
from core.errors import UserError
from core.paths import NAMED_SOURCES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
SPLIT_SEED = 20240601          # fixed: the validation split never moves with --seed
FAKE_SIZES = {"train": 2000, "test": 500}
FAKE_CLASSES = 10
CACHE_VERSION = 1


@dataclass
class ImageSet:
    """Images as a uint8 tensor N x 3 x H x W and labels as int64 N."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index])


@dataclass
class Splits:
    """Training part, validation part (``None`` when ``val_fraction`` is 0), test split, classes,
    and the per-channel mean and std of the training images (for normalisation)."""

    train: ImageSet
    val: ImageSet | None
    test: ImageSet
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def split_indices(n: int, n_second: int, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded permutation of ``range(n)`` cut into two disjoint index sets of sizes
    ``n - n_second`` and ``n_second``, each in random order."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_second:], perm[:n_second]


def first_of_permutation(n: int, k: int, seed: int = SPLIT_SEED) -> torch.Tensor:
    """``k`` indices of ``range(n)`` drawn without replacement with a fixed seed, in random order."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))[:k]


def make_splits(data: str, data_root: str, *, val_fraction: float = 0.1, subset: int = 0,
                val_subset: int = 0, image_size: int = 32) -> Splits:
    """Load ``data`` and carve the validation split from its training split.

    Every split comes out in a fixed random order (image folders list their images class by
    class), so that a prefix of one, which is what ``max_batches`` evaluates, is a fair sample.
    """
    train, test, classes = load_source(data, data_root, image_size=image_size)
    test = test.take(first_of_permutation(len(test), len(test), seed=SPLIT_SEED + 1))
    val = None
    if val_fraction > 0:
        n_val = max(1, round(len(train) * val_fraction))
        if n_val >= len(train):
            raise UserError(f"val_fraction: {val_fraction} leaves no training images out of {len(train)}")
        train_idx, val_idx = split_indices(len(train), n_val)
        train, val = train.take(train_idx), train.take(val_idx)
        if val_subset:
            val = val.take(first_of_permutation(len(val), val_subset))
    if subset:
        if subset > len(train):
            raise UserError(f"subset: {subset} is more than the {len(train)} training images available")
        train = train.take(first_of_permutation(len(train), subset))
    mean, std = channel_stats(train.images)
    return Splits(train, val, test, classes, mean, std)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images[: 20000].float().div_(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def load_source(data: str, data_root: str, image_size: int = 32) -> tuple[ImageSet, ImageSet, list[str]]:
    """Train split, test split and class names of a data source (see the module docstring)."""
    if data == "cifar10":
        return _load_cifar10(Path(data_root))
    if data == "fake":
        return _make_fake(image_size)
    path = Path(data).expanduser()
    if not path.exists():
        raise UserError(f"data: {data!r} is neither one of {', '.join(NAMED_SOURCES)} nor an existing path "
                        "(an image folder or .tar.gz with train/<class>/ and test/<class>/)")
    return _load_image_folder(path, Path(data_root), image_size)


def _load_cifar10(root: Path) -> tuple[ImageSet, ImageSet, list[str]]:
    from torchvision.datasets import CIFAR10

    _download_cifar10(root)
    sets = []
    for train in (True, False):
        try:
            ds = CIFAR10(str(root), train=train, download=False)  # checks the md5 of every file
        except Exception as exc:  # a copy corrupted after its download
            raise UserError(f"data: the CIFAR-10 copy in {str(root)!r} is unreadable ({_one_line(exc)}); "
                            f"delete {str(root / CIFAR10.base_folder)!r} to download it again") from None
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        sets.append(ImageSet(images, torch.tensor(ds.targets, dtype=torch.int64)))
    return sets[0], sets[1], list(ds.classes)


CIFAR10_LOCK = ".cifar-10.lock"               # in the data root: one download at a time per root
CIFAR10_PARTIAL = ".cifar-10-download-"       # prefix of the temporary folder a download fills


def _cifar10_complete(root: Path) -> bool:
    """Whether ``root`` holds a whole CIFAR-10 copy (torchvision's md5 of every file)."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    return all(check_integrity(str(root / CIFAR10.base_folder / name), md5)
               for name, md5 in CIFAR10.train_list + CIFAR10.test_list)


def _download_cifar10(root: Path) -> None:
    """Download CIFAR-10 into ``root`` unless a complete copy is there, once for all processes.

    Concurrent trials sharing a data root take a file lock in it: the first downloads, the others
    wait and then use its copy. torchvision downloads and extracts into a temporary folder inside
    the root and checks the md5 of the archive and of every file; only then is the folder renamed
    into place. A failed or killed download leaves no ``cifar-10-batches-py`` behind (its temporary
    folder is removed, or by the next download if the process was killed).
    """
    import shutil
    import sys
    import tempfile

    from filelock import FileLock, Timeout
    from torchvision.datasets import CIFAR10

    if _cifar10_complete(root):
        return
    existed = root.exists()
    lock_path = root / CIFAR10_LOCK
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(f"waiting for another process downloading CIFAR-10 into {str(root)!r}", file=sys.stderr, flush=True)
            lock.acquire()
    except OSError as exc:
        raise UserError(f"data: cannot write the data root {str(root)!r} ({_one_line(exc)}); "
                        "pass --data-root with a writable folder") from None
    try:
        if _cifar10_complete(root):  # another process downloaded it while this one waited
            return
        for stale in root.glob(CIFAR10_PARTIAL + "*"):  # left by a killed download
            shutil.rmtree(stale, ignore_errors=True)
        partial = Path(tempfile.mkdtemp(prefix=CIFAR10_PARTIAL, dir=root))
        try:
            CIFAR10(str(partial), train=True, download=True)  # download, md5 of archive and files
            final = root / CIFAR10.base_folder
            if final.exists():  # an incomplete copy (not ours): out of the way first
                final.rename(partial / "replaced")
            (partial / CIFAR10.base_folder).rename(final)
        except Exception as exc:  # no network, a dropped connection, a bad md5, a full disk...
            raise UserError(f"data: could not download CIFAR-10 into {str(root)!r} ({_one_line(exc)}); "
                            "pass --data-root with an existing copy, --data PATH for an image folder or "
                            ".tar.gz, or --data fake") from None
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        if not existed and {p.name for p in root.iterdir()} <= {CIFAR10_LOCK}:
            lock_path.unlink(missing_ok=True)  # leave nothing behind that we created
            root.rmdir()
        raise
    finally:
        lock.release()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _make_fake(image_size: int) -> tuple[ImageSet, ImageSet, list[str]]:
    """Deterministic, learnable synthetic data: a per-class low-frequency colour pattern plus noise."""
    gen = torch.Generator().manual_seed(0)
    patterns = torch.rand(FAKE_CLASSES, 3, 4, 4, generator=gen) * 255
    patterns = torch.nn.functional.interpolate(patterns, size=(image_size, image_size), mode="bilinear",
                                               align_corners=False)
    sets = []
    for split in ("train", "test"):
        n = FAKE_SIZES[split]
        labels = torch.arange(n) % FAKE_CLASSES
        labels = labels[torch.randperm(n, generator=gen)]
        noise = torch.randn(n, 3, image_size, image_size, generator=gen) * 60
        images = (patterns[labels] + noise).clamp(0, 255).round().to(torch.uint8)
        sets.append(ImageSet(images, labels))
    return sets[0], sets[1], [f"class{i}" for i in range(FAKE_CLASSES)]


# --- image folders -----------------------------------------------------------------------------

def _cache_path(path: Path, root: Path, image_size: int) -> Path:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{image_size}|{CACHE_VERSION}"
    if path.is_dir():  # a folder's mtime misses edits deep inside: key on the file list too
        key += "|" + "|".join(sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()))
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    name = path.name.removesuffix(".gz").removesuffix(".tar").removesuffix(".tgz")
    return root / "cache" / f"{name}-{image_size}px-{digest}.pt"


def _load_image_folder(path: Path, root: Path, image_size: int) -> tuple[ImageSet, ImageSet, list[str]]:
    cache = _cache_path(path, root, image_size)
    if cache.exists():
        blob = load_checkpoint(cache)
        return (ImageSet(blob["train_images"], blob["train_labels"]),
                ImageSet(blob["test_images"], blob["test_labels"]), list(blob["classes"]))
    files = _list_tar(path) if path.is_file() else _list_dir(path)
    train_files, test_files = files.get("train", {}), files.get("test", {})
    missing = [s for s, f in (("train", train_files), ("test", test_files)) if not f]
    if missing:
        raise UserError(f"data: {str(path)!r} has no images under {' or '.join(m + '/<class>/' for m in missing)}; "
                        "expected train/<class>/<image> and test/<class>/<image>")
    if set(train_files) != set(test_files):
        only_train = sorted(set(train_files) - set(test_files))
        only_test = sorted(set(test_files) - set(train_files))
        raise UserError(f"data: {str(path)!r}: train/ and test/ have different classes "
                        f"(only in train: {only_train or 'none'}; only in test: {only_test or 'none'})")
    classes = sorted(train_files)
    reader = _tar_reader(path) if path.is_file() else _dir_reader(path)
    with reader as read:
        train = _decode(train_files, classes, read, image_size, f"{path.name} train")
        test = _decode(test_files, classes, read, image_size, f"{path.name} test")
    save_checkpoint(cache, {"train_images": train.images, "train_labels": train.labels,
                            "test_images": test.images, "test_labels": test.labels, "classes": classes})
    return train, test, classes


def _split_member(rel: str) -> tuple[str, str] | None:
    """'[prefix/]train/cat/0001.jpg' -> ('train', 'cat'); anything else -> None."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if len(parts) < 3 or not parts[-1].lower().endswith(IMAGE_SUFFIXES) or parts[-1].startswith("."):
        return None
    split, cls = parts[-3], parts[-2]
    return (split, cls) if split in ("train", "test") else None


def _group(names: Iterable[str]) -> dict[str, dict[str, list[str]]]:
    files: dict[str, dict[str, list[str]]] = {}
    for name in names:
        key = _split_member(name)
        if key:
            files.setdefault(key[0], {}).setdefault(key[1], []).append(name)
    for per_class in files.values():
        for names_ in per_class.values():
            names_.sort()
    return files


def _list_dir(path: Path) -> dict[str, dict[str, list[str]]]:
    return _group(str(p.relative_to(path).as_posix()) for p in path.rglob("*") if p.is_file())


def _list_tar(path: Path) -> dict[str, dict[str, list[str]]]:
    try:
        with tarfile.open(path) as tar:
            return _group(m.name for m in tar.getmembers() if m.isfile())
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"data: {str(path)!r} is not a readable image folder or .tar.gz ({exc})") from None


class _dir_reader:
    def __init__(self, root: Path):
        self.root = root

    def __enter__(self):
        return lambda name: (self.root / name).read_bytes()

    def __exit__(self, *exc):
        return False


class _tar_reader:
    """Reads members of a tar archive; gzip streams are read once, in order, into memory."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        with tarfile.open(self.path) as tar:
            self.blobs = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
        return self.blobs.__getitem__

    def __exit__(self, *exc):
        self.blobs = {}
        return False


def _decode(files: dict[str, list[str]], classes: list[str], read, image_size: int, what: str) -> ImageSet:
    from PIL import Image
    from tqdm import tqdm

    items = [(name, label) for label, cls in enumerate(classes) for name in files[cls]]
    images = torch.empty(len(items), 3, image_size, image_size, dtype=torch.uint8)
    for i, (name, _) in enumerate(tqdm(items, desc=f"decoding {what}", unit="img", mininterval=2, leave=False)):
        try:
            with Image.open(io.BytesIO(read(name))) as img:
                img = img.convert("RGB")
                if img.size != (image_size, image_size):
                    img = img.resize((image_size, image_size), Image.BILINEAR)
                images[i] = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
        except Exception as exc:
            raise UserError(f"data: cannot decode image {name!r} ({exc})") from None
    return ImageSet(images, torch.tensor([label for _, label in items], dtype=torch.int64))

