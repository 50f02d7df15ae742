"""Data sources decoded once into uint8 tensors, and the train / validation / test splits.

Sources (the ``data`` option):

* ``cifar10``: torchvision's real download into the data root (the default);
* ``fake``: deterministic synthetic 32x32 images, learnable (each class has its own colour
  pattern), for tests and offline smoke runs;
* a path: an image folder, or a ``.tar.gz`` of one, laid out as ``train/<class>/*`` and
  ``test/<class>/*`` (torchvision's ``ImageFolder`` convention).

Image folders follow ``torchvision.datasets.ImageFolder``'s rules: the same file extensions
(``IMG_EXTENSIONS``, any case), every image anywhere below a class folder (subfolders included,
symbolic links to folders followed), classes sorted by name, a class without images an error. They
differ in two ways only: hidden files and folders (``.ipynb_checkpoints``, ``.DS_Store``) are never
data, and fewer than two classes is an error. Every image is read as 8-bit RGB by its value range,
whatever its mode (:func:`to_rgb8`: 16-bit and float images scaled, transparency over white, EXIF
orientation applied), or refused with one line naming the file and its mode.

Image folders are decoded once and cached as tensors under ``<data_root>/cache``, so a second run
skips decoding. The validation split is carved from the training split with a fixed seed that
does not depend on the run's seed: every run and trial validates on the same images, and the test
split is used only for final reports.
"""
from __future__ import annotations

import functools
import hashlib
import io
import os
import sys
import tarfile
import time
from zlib import error as zlib_error
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from core.chance import FAKE_CLASSES
from core.checkpoint import save_checkpoint
from core.config import check_data
from core.errors import UserError, first_line

SPLIT_SEED = 20240601          # fixed: the validation split never moves with --seed
FAKE_SIZES = {"train": 2000, "test": 500}
CACHE_VERSION = 2             # 2: images read by to_rgb8 (16-bit, float, alpha, EXIF), nested folders


@functools.cache
def image_suffixes() -> tuple[str, ...]:
    """ImageFolder's image extensions (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp), read from
    torchvision when first needed: importing torchvision costs every command about a second
    (it pulls in torch._dynamo), which those that never read an image folder need not pay."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(IMG_EXTENSIONS)


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
    check_data(str(path))
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
            if final.exists() or final.is_symlink():  # an incomplete copy, maybe not ours: kept, out of the way
                kept = root / f"{CIFAR10.base_folder}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
                final.rename(kept)
                print(f"an incomplete CIFAR-10 copy {str(final)!r} was moved to {str(kept)!r} (not deleted: "
                      "remove it when you no longer need it)", file=sys.stderr, flush=True)
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

#: Limits on what an image folder or archive may hold: one image file, all images together, and
#: the pixels of one decoded image (a decompression bomb must fail, not exhaust memory).
MAX_IMAGE_BYTES = 64 * 2**20
MAX_TOTAL_BYTES = 16 * 2**30
MAX_IMAGE_PIXELS = 64 * 2**20
SPLITS = ("train", "test")


@dataclass
class _Listing:
    """The image files of a folder or archive: ``files[split][class]`` = sorted member names,
    plus class folders that hold no image (an error) and, for an archive, the member sizes."""

    files: dict[str, dict[str, list[str]]]
    empty: list[str]


def _split_at(parts: list[str]) -> int | None:
    """Where the split (``train`` or ``test``) is in a member's path parts: the first such part;
    None when there is none, or when a part is hidden (``.ipynb_checkpoints``, ``.DS_Store``...:
    never data)."""
    if any(p.startswith(".") for p in parts):
        return None
    return next((i for i, p in enumerate(parts) if p in SPLITS), None)


def _image_key(parts: list[str]) -> tuple[str, str, str] | None:
    """('prefix', split, class) of an image member's path parts (``prefix/split/class/[sub/...]image``,
    as ImageFolder takes every image below a class folder), or None for anything else."""
    i = _split_at(parts)
    if i is None or len(parts) < i + 3 or not parts[-1].lower().endswith(image_suffixes()):
        return None
    return "/".join(parts[:i]), parts[i], parts[i + 1]


def _class_dir_key(parts: list[str]) -> tuple[str, str, str] | None:
    """('prefix', split, class) of a class folder's path parts, or None."""
    i = _split_at(parts)
    if i is None or len(parts) != i + 2:
        return None
    return "/".join(parts[:i]), parts[i], parts[i + 1]


def _listing(path: Path, members: Iterable[tuple[str, bool, int]]) -> _Listing:
    """Group ``(name, is_dir, size)`` members into one ``train/<class>/`` + ``test/<class>/``
    layout. Two layouts under different prefixes in one archive or folder are an error naming
    both (merging them would leak one's images into the other's splits)."""
    by_prefix: dict[str, dict[str, dict[str, list[str]]]] = {}
    class_dirs: dict[str, set[tuple[str, str]]] = {}
    total = 0
    for name, is_dir, size in members:
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if is_dir:
            key = _class_dir_key(parts)
            if key:
                class_dirs.setdefault(key[0], set()).add((key[1], key[2]))
            continue
        key = _image_key(parts)
        if key is None:
            continue
        if size > MAX_IMAGE_BYTES:
            raise UserError(f"data: {str(path)!r}: {name!r} is {size:,} bytes; an image may have at most "
                            f"{MAX_IMAGE_BYTES:,}")
        total += size
        if total > MAX_TOTAL_BYTES:
            raise UserError(f"data: {str(path)!r} holds more than {MAX_TOTAL_BYTES:,} bytes of images")
        prefix, split, cls = key
        by_prefix.setdefault(prefix, {}).setdefault(split, {}).setdefault(cls, []).append(name)
    if len(by_prefix) > 1:
        shown = sorted(p or "(top level)" for p in by_prefix)
        raise UserError(f"data: {str(path)!r} holds more than one train/ and test/ layout ({', '.join(map(repr, shown))}); "
                        "keep one data set per folder or archive")
    prefix, files = next(iter(by_prefix.items())) if by_prefix else ("", {})
    for per_class in files.values():
        for names in per_class.values():
            names.sort()
    empty = sorted(f"{split}/{cls}" for split, cls in class_dirs.get(prefix, set()) if cls not in files.get(split, {}))
    return _Listing(files, empty)


def _walk(path: Path) -> Iterable[tuple[str, bool, Path]]:
    """Every folder and file below ``path`` as ``(relative name, is_dir, path)``, in sorted order;
    symbolic links to folders are followed as ImageFolder follows them (``os.walk(followlinks=True)``),
    except a link back to a folder it is in (a loop, where ImageFolder would never end)."""
    above: dict[str, frozenset[str]] = {str(path): frozenset({os.path.realpath(path)})}
    for root, dirs, files in os.walk(path, followlinks=True):
        dirs.sort()
        chain = above.pop(root, frozenset())
        for name in list(dirs):
            real = os.path.realpath(os.path.join(root, name))
            if real in chain:
                dirs.remove(name)
            else:
                above[os.path.join(root, name)] = chain | {real}
        base = Path(root)
        for name in dirs:
            yield (base / name).relative_to(path).as_posix(), True, base / name
        for name in sorted(files):
            if (base / name).is_file():
                yield (base / name).relative_to(path).as_posix(), False, base / name


def _list_dir(path: Path) -> _Listing:
    return _listing(path, ((rel, is_dir, 0 if is_dir else p.stat().st_size) for rel, is_dir, p in _walk(path)))


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"data: {str(path)!r} is not a readable image folder or .tar.gz ({exc})") from None


def _list_tar(path: Path) -> _Listing:
    try:
        with _open_tar(path) as tar:
            return _listing(path, ((m.name, m.isdir(), m.size) for m in tar if m.isfile() or m.isdir()))
    except (tarfile.TarError, OSError, EOFError, zlib_error) as exc:
        raise UserError(f"data: {str(path)!r} is not a readable image folder or .tar.gz ({exc})") from None


def _content_digest(path: Path) -> str:
    """A digest of what a folder or archive holds (every file's name and bytes), so that images
    overwritten under the same names give another cache, never the stale one."""
    h = hashlib.sha1()
    if path.is_file():
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()[:16]
    for rel, is_dir, p in sorted(_walk(path)):
        if not is_dir:
            h.update(rel.encode() + b"\0")
            h.update(p.read_bytes())
            h.update(b"\0")
    return h.hexdigest()[:16]


def _cache_path(path: Path, root: Path, image_size: int) -> Path:
    digest = hashlib.sha1(f"{_content_digest(path)}|{image_size}|{CACHE_VERSION}".encode()).hexdigest()[:16]
    name = path.name.removesuffix(".gz").removesuffix(".tar").removesuffix(".tgz")
    return root / "cache" / f"{name}-{image_size}px-{digest}.pt"


def _read_cache(cache: Path, image_size: int) -> tuple[ImageSet, ImageSet, list[str]] | None:
    """The cached splits, or ``None`` (after saying so) when the cache is damaged: truncated,
    empty, of another shape or another data set's."""
    try:
        blob = torch.load(cache, map_location="cpu", weights_only=True)
        classes = list(blob["classes"])
        sets = []
        for split in SPLITS:
            images, labels = blob[f"{split}_images"], blob[f"{split}_labels"]
            ok = (images.dtype == torch.uint8 and images.dim() == 4 and tuple(images.shape[1:]) == (3, image_size,
                  image_size) and labels.dtype == torch.int64 and labels.shape == (len(images),) and len(images) > 0
                  and int(labels.min()) >= 0 and int(labels.max()) < len(classes))
            if not ok:
                raise ValueError(f"{split} images of the wrong shape or labels out of range")
            sets.append(ImageSet(images, labels))
        return sets[0], sets[1], classes
    except Exception as exc:  # noqa: BLE001 - any damage means: decode again
        print(f"the decode cache at {cache} is damaged ({first_line(exc)}); rebuilding it", file=sys.stderr)
        return None


def _writable(folder: Path) -> bool:
    """Whether a cache can be written into ``folder`` (created if need be)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def _load_image_folder(path: Path, root: Path, image_size: int) -> tuple[ImageSet, ImageSet, list[str]]:
    cache = _cache_path(path, root, image_size)
    if cache.is_file():
        cached = _read_cache(cache, image_size)
        if cached is not None:
            return cached
    listing = _list_tar(path) if path.is_file() else _list_dir(path)
    train_files, test_files = listing.files.get("train", {}), listing.files.get("test", {})
    missing = [s for s, f in (("train", train_files), ("test", test_files)) if not f]
    if missing:
        raise UserError(f"data: {str(path)!r} has no images under {' or '.join(m + '/<class>/' for m in missing)}; "
                        "expected train/<class>/<image> and test/<class>/<image>")
    if listing.empty:
        raise UserError(f"data: {str(path)!r}: the class folder(s) {', '.join(listing.empty)} hold no image; every "
                        "class needs images in train/ and test/")
    if set(train_files) != set(test_files):
        only_train = sorted(set(train_files) - set(test_files))
        only_test = sorted(set(test_files) - set(train_files))
        raise UserError(f"data: {str(path)!r}: train/ and test/ have different classes "
                        f"(only in train: {only_train or 'none'}; only in test: {only_test or 'none'})")
    if len(train_files) < 2:
        raise UserError(f"data: {str(path)!r} has {len(train_files)} class ({', '.join(sorted(train_files))}); a "
                        "classifier needs at least two (train/<class>/ and test/<class>/ folders)")
    write_cache = _writable(cache.parent)
    if not write_cache:
        print(f"data_root {str(root)!r} is not writable: decoding without writing the cache", file=sys.stderr)
    classes = sorted(train_files)
    train, test = _decode(path, {"train": train_files, "test": test_files}, classes, image_size)
    if write_cache:
        save_checkpoint(cache, {"train_images": train.images, "train_labels": train.labels,
                                "test_images": test.images, "test_labels": test.labels, "classes": classes})
    return train, test, classes


def _decode(path: Path, files: dict[str, dict[str, list[str]]], classes: list[str],
            image_size: int) -> tuple[ImageSet, ImageSet]:
    """Decode every listed image into uint8 tensors; an archive is read in one streaming pass
    (only the listed image members, one at a time), a folder file by file."""
    from tqdm import tqdm

    slots: dict[str, tuple[str, int]] = {}
    sets = {}
    for split in SPLITS:
        items = [name for cls in classes for name in files[split][cls]]
        labels = [label for label, cls in enumerate(classes) for _ in files[split][cls]]
        sets[split] = ImageSet(torch.empty(len(items), 3, image_size, image_size, dtype=torch.uint8),
                               torch.tensor(labels, dtype=torch.int64))
        slots.update({name: (split, i) for i, name in enumerate(items)})
    bar = tqdm(total=len(slots), desc=f"decoding {path.name}", unit="img", mininterval=2, leave=False,
               disable=not sys.stderr.isatty())
    done: set[str] = set()
    if path.is_file():
        try:
            with _open_tar(path) as tar:
                for member in tar:
                    slot = slots.get(member.name) if member.isfile() else None
                    if slot is None or member.name in done:
                        continue
                    fh = tar.extractfile(member)
                    data = fh.read(MAX_IMAGE_BYTES + 1) if fh is not None else b""
                    _decode_into(sets[slot[0]].images, slot[1], data, member.name, image_size)
                    done.add(member.name)
                    bar.update()
        except (tarfile.TarError, OSError, EOFError, zlib_error) as exc:
            raise UserError(f"data: {str(path)!r} cannot be read to the end ({exc})") from None
    else:
        for name, (split, index) in slots.items():
            _decode_into(sets[split].images, index, (path / name).read_bytes(), name, image_size)
            done.add(name)
            bar.update()
    bar.close()
    if len(done) != len(slots):
        raise UserError(f"data: {str(path)!r}: {len(slots) - len(done)} listed images could not be read")
    return sets["train"], sets["test"]


def _decode_into(images: torch.Tensor, index: int, data: bytes, name: str, image_size: int) -> None:
    import warnings

    from PIL import Image

    try:
        if len(data) > MAX_IMAGE_BYTES:
            raise ValueError(f"more than {MAX_IMAGE_BYTES:,} bytes")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise ValueError(f"{img.width}x{img.height} pixels is more than {MAX_IMAGE_PIXELS:,}")
                img = to_rgb8(img)
                if img.size != (image_size, image_size):
                    img = img.resize((image_size, image_size), Image.BILINEAR)
                images[index] = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    except Unreadable as exc:
        raise UserError(f"data: cannot use image {name!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a broken image is the user's data: name it
        raise UserError(f"data: cannot decode image {name!r} ({first_line(exc)})") from None


class Unreadable(ValueError):
    """An image whose mode or values have no certain 8-bit RGB reading."""


#: Integer modes of more than 8 bits: read by the 16-bit range (16-bit PNG, TIFF and PGM files).
WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
BACKGROUND = (255, 255, 255)      # transparent pixels are shown over white, as a viewer shows them


def to_rgb8(img: "Image.Image") -> "Image.Image":
    """``img`` as 8-bit RGB by its value range: EXIF orientation applied (a phone photo stored
    sideways); 16-bit integers scaled by 255/65535 (mode ``I``: values must lie in [0, 65535]);
    float images (mode ``F``) must lie in [0, 1] and are scaled by 255; transparency (``RGBA``,
    ``LA``, ``La``, ``PA``, ``RGBa``, palette or grey with a transparent colour) composited over
    white; every other mode (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``)
    by PIL's conversion. Anything else raises :class:`Unreadable` naming the mode."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in WIDE_INT_MODES or mode == "F":
        values = np.asarray(img, dtype=np.float64)
        top = 1.0 if mode == "F" else 65535.0
        if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= top):
            low, high = np.nanmin(values), np.nanmax(values)
            raise Unreadable(f"mode {mode} ({'float' if mode == 'F' else 'integer'}) with values from {low:g} to "
                             f"{high:g}, outside [0, {top:g}]: no certain 8-bit reading; convert it to 8-bit first")
        grey = np.round(values * (255.0 / top)).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "La":
        img, mode = img.convert("LA"), "LA"
    if "A" in img.getbands() or "a" in img.getbands() or "transparency" in img.info:
        try:
            rgba = img.convert("RGBA")
        except ValueError:
            raise Unreadable(f"mode {mode} with transparency cannot be converted to RGBA") from None
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError:
        raise Unreadable(f"mode {mode} cannot be converted to RGB") from None
