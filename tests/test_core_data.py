"""Data sources, splits and the batch loader."""
from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import data as data_mod
from core.data import load_source, make_splits
from core.errors import UserError
from core.loader import BatchLoader, cutout, random_crop, random_flip
from tests.helpers import cli, image_folder, one_error_line, run


def test_fake_source_shapes_and_labels():
    train, test, classes = load_source("fake", "unused")
    assert classes == [f"class{i}" for i in range(10)]
    for s, n in ((train, 2000), (test, 500)):
        assert s.images.shape == (n, 3, 32, 32) and s.images.dtype == torch.uint8
        assert s.labels.dtype == torch.int64 and s.labels.min() == 0 and s.labels.max() == 9
    again, _, _ = load_source("fake", "unused")
    assert torch.equal(train.images, again.images), "fake data must be deterministic"


def test_validation_split_is_disjoint_and_stable():
    a = make_splits("fake", "unused", val_fraction=0.1)
    b = make_splits("fake", "unused", val_fraction=0.1)
    assert len(a.train) == 1800 and len(a.val) == 200 and len(a.test) == 500
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.labels, b.train.labels)
    full, _, _ = load_source("fake", "unused")
    # identify images by their bytes: train part and validation part share none
    train_keys = {bytes(x.numpy()) for x in a.train.images}
    val_keys = {bytes(x.numpy()) for x in a.val.images}
    assert not train_keys & val_keys
    assert len(train_keys | val_keys) == len({bytes(x.numpy()) for x in full.images})


def test_subset_and_val_subset():
    s = make_splits("fake", "unused", val_fraction=0.1, subset=300, val_subset=50)
    assert len(s.train) == 300 and len(s.val) == 50
    full = make_splits("fake", "unused", val_fraction=0.1)
    # the validation split does not move when the training subset changes
    val_keys = {bytes(x.numpy()) for x in full.val.images}
    assert {bytes(x.numpy()) for x in s.val.images} <= val_keys
    with pytest.raises(UserError, match="subset: 5000"):
        make_splits("fake", "unused", subset=5000)


@pytest.mark.parametrize("as_tar", [False, True])
def test_image_folder_and_tar(tmp_path, as_tar, monkeypatch):
    folder = image_folder(tmp_path / "ds", ["cat", "dog", "emu"], n=4, size=40)
    src = folder
    if as_tar:
        src = tmp_path / "ds.tar.gz"
        with tarfile.open(src, "w:gz") as tar:
            tar.add(folder, arcname="mydata")  # a top-level prefix is allowed
    root = tmp_path / "root"
    train, test, classes = load_source(str(src), str(root), image_size=32)
    assert classes == ["cat", "dog", "emu"]
    assert train.images.shape == (12, 3, 32, 32) and test.images.shape == (12, 3, 32, 32)
    assert train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert len(list((root / "cache").glob("*.pt"))) == 1
    # the second load comes from the cache: decoding is not called again
    monkeypatch.setattr(data_mod, "_decode", lambda *a, **k: pytest.fail("decoded twice"))
    train2, _, _ = load_source(str(src), str(root), image_size=32)
    assert torch.equal(train.images, train2.images)


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match="neither one of cifar10, fake nor an existing path"):
        load_source(str(tmp_path / "missing"), str(tmp_path))
    only_train = tmp_path / "only_train"
    image_folder(only_train, ["a"], n=3, test_classes=[])
    with pytest.raises(UserError, match=r"no images under test/<class>/"):
        load_source(str(only_train), str(tmp_path))
    mismatched = image_folder(tmp_path / "mismatch", ["a", "b"], n=3, test_classes=["a", "c"])
    with pytest.raises(UserError, match=r"different classes \(only in train: \['b'\]; only in test: \['c'\]\)"):
        load_source(str(mismatched), str(tmp_path))
    assert not (tmp_path / "cache").exists(), "a failed load must leave no cache behind"


def test_augmentation_keeps_shape_dtype_and_labels():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    for out in (random_crop(x, 4, gen), random_flip(x, gen), cutout(x, 16, gen)):
        assert out.shape == x.shape and out.dtype == torch.uint8
    # a crop is a shifted window of the zero-padded image
    crop = random_crop(x, 4, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        assert any(torch.equal(crop[i], padded[i, :, dy:dy + 32, dx:dx + 32]) for dy in range(9) for dx in range(9))
    both = random_crop(x, 4, torch.Generator().manual_seed(3), flip=True)
    windows = [padded[:, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
    n_flipped = 0
    for i in range(16):
        plain = any(torch.equal(both[i], win[i]) for win in windows)
        mirrored = any(torch.equal(both[i], win[i].flip(2)) for win in windows)
        assert plain or mirrored
        n_flipped += mirrored and not plain
    assert 0 < n_flipped < 16
    flipped = random_flip(x, torch.Generator().manual_seed(2))
    assert all(torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2)) for i in range(16))
    holes = (cutout(torch.full_like(x, 255), 16, gen) == 0).sum(dim=(1, 2, 3)) // 3
    assert ((holes > 0) & (holes <= 256)).all()


def test_loader_batches_labels_and_state():
    s = make_splits("fake", "unused", val_fraction=0.1, subset=256)
    kw = dict(batch_size=64, device=torch.device("cpu"), mean=s.mean, std=s.std, cutout=8)
    loader = BatchLoader(s.train, train=True, seed=3, **kw)
    assert len(loader) == 4
    lookup = {bytes(img.numpy()): int(y) for img, y in zip(s.train.images, s.train.labels)}
    plain = BatchLoader(s.train, train=False, seed=3, **{**kw, "cutout": 0})
    seen = []
    for x, y in plain:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        seen.append(y)
    assert torch.equal(torch.cat(seen), s.train.labels)
    # augmented batches keep labels attached to their images: check via the un-augmented loader
    loader.crop_padding, loader.flip, loader.cutout = 0, False, 0
    loader.normalize = lambda x: x  # look at raw uint8 images
    for x, y in loader:
        assert [lookup[bytes(img.numpy())] for img in x] == y.tolist()
    # the generator state reproduces the same order
    a = BatchLoader(s.train, train=True, seed=5, **kw)
    state = a.state_dict()
    first = [y for _, y in a]
    b = BatchLoader(s.train, train=True, seed=99, **kw)
    b.load_state_dict(state)
    assert all(torch.equal(p, q) for p, q in zip(first, (y for _, y in b)))
    assert len(BatchLoader(s.train, train=True, max_batches=2, **kw)) == 2


def test_real_jpeg_cifar10(cifar_jpeg, data_root):
    s = make_splits(str(cifar_jpeg), str(data_root), val_fraction=0.1)
    assert s.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert (len(s.train), len(s.val), len(s.test)) == (45000, 5000, 10000)
    assert s.train.images.dtype == torch.uint8 and s.train.images.shape[1:] == (3, 32, 32)
    assert torch.bincount(s.test.labels).tolist() == [1000] * 10
    assert 0.4 < s.mean[0] < 0.55 and 0.2 < s.std[0] < 0.3


def test_split_prefixes_are_fair_samples(tmp_path):
    """Image folders list images class by class; the evaluation splits must not (a few
    ``max_batches`` of a class-ordered test split would see one class only)."""

    folder = image_folder(tmp_path / "ds", ["a", "b", "c", "d"], n=20)
    s = make_splits(str(folder), str(tmp_path / "root"), val_fraction=0.25)
    for part in (s.val, s.test):
        assert len(set(part.labels[:10].tolist())) > 1


# --- images: every mode by its value range, EXIF orientation, ImageFolder's rules, classes ----------

def _save(img: Image.Image, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


def test_every_image_mode_is_read_by_its_value_range(tmp_path):
    folder = image_folder(tmp_path / "d", n=1)
    a, b = folder / "train" / "a", folder / "train" / "b"
    _save(Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16)), a / "grey16.png")       # mode I;16
    _save(Image.fromarray(np.full((32, 32), 0.5, dtype=np.float32)), a / "float.tif")          # mode F
    _save(Image.fromarray(np.full((32, 32), 32768, dtype=np.int32)), a / "int32.tif")          # mode I
    _save(Image.new("LA", (32, 32), (100, 0)), a / "la.png")                                  # fully transparent
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 0] * 256)
    _save(pal, a / "pal.png", transparency=0)                                                 # P, colour 0 transparent
    _save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), b / "cmyk.jpg", quality=100)         # red
    exif = Image.Exif()
    exif[0x0112] = 6                                                                         # rotate 90 degrees to show
    sideways = Image.new("RGB", (64, 32), (0, 0, 255))
    sideways.paste((255, 0, 0), (0, 0, 32, 32))                                              # left half red
    _save(sideways, b / "photo.jpg", exif=exif, quality=95)
    _save(Image.new("RGB", (32, 32), (0, 255, 0)), b / "nested" / "deeper" / "green.png")   # in a subfolder
    train, _, classes = load_source(str(folder), str(tmp_path / "root"))
    assert classes == ["a", "b"] and len(train) == 2 + 5 + 3     # one random image per class + the new ones
    files = sorted(str(p.relative_to(folder / "train")) for p in (folder / "train").rglob("*") if p.is_file())
    pixel = {name: train.images[i, :, 16, 16].tolist() for i, name in enumerate(files)}
    assert pixel["a/grey16.png"] == [128, 128, 128], "16-bit mid grey must stay mid grey"
    assert pixel["a/float.tif"] == [128, 128, 128], "a float image in [0, 1] must not turn black"
    assert pixel["a/int32.tif"] == [128, 128, 128]
    assert pixel["a/la.png"] == [255, 255, 255] and pixel["a/pal.png"] == [255, 255, 255], "transparency: white"
    red, green, blue = pixel["b/cmyk.jpg"]
    assert red > 200 and green < 60 and blue < 60
    assert pixel["b/nested/deeper/green.png"] == [0, 255, 0]
    top, bottom = train.images[files.index("b/photo.jpg"), :, 4, 16].tolist(), \
        train.images[files.index("b/photo.jpg"), :, 28, 16].tolist()
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200, "EXIF orientation not applied (left half must be on top)"


def test_folder_rules_are_imagefolders(tmp_path):
    from torchvision.datasets import ImageFolder

    folder = image_folder(tmp_path / "d", n=2)
    _save(Image.new("RGB", (8, 8)), folder / "train" / "a" / "sub" / "x.PPM")     # ImageFolder's extension, any case
    _save(Image.new("L", (8, 8)), folder / "train" / "b" / "y.pgm")
    _save(Image.new("RGB", (8, 8)), folder / "train" / "b" / "z.gif")             # not an ImageFolder extension
    (folder / "train" / "b" / "linked").symlink_to(folder / "test" / "a")         # a link to a folder: followed
    train, _, classes = load_source(str(folder), str(tmp_path / "root"))
    ours = sorted(int(x) for x in train.labels)
    theirs = ImageFolder(str(folder / "train"))
    assert classes == theirs.classes and ours == sorted(t for _, t in theirs.samples)


@pytest.mark.parametrize("mode", ["F", "I"])
def test_an_image_without_a_certain_reading_is_one_line_naming_file_and_mode(tmp_path, mode):
    folder = image_folder(tmp_path / "d", n=1)
    values = np.full((32, 32), 7.5, dtype=np.float32) if mode == "F" else np.full((32, 32), -5, dtype=np.int32)
    _save(Image.fromarray(values), folder / "train" / "a" / "odd.tif")
    command = cli if mode == "F" else run                  # once as a real process
    proc = command(["-m", "core.train_model", "--data", str(folder), "--data-root", str(tmp_path / "root"),
                    "--out-dir", str(tmp_path / "runs"), "--epochs", "1", "--device", "cpu"])
    one_error_line(proc, "cannot use image 'train/a/odd.tif'", f"mode {mode}")
    assert not (tmp_path / "runs").exists()


def test_fewer_than_two_classes_is_an_error(tmp_path):
    folder = image_folder(tmp_path / "d", classes=("only",))
    proc = cli(["-m", "core.train_model", "--data", folder, "--data-root", tmp_path / "root", "--out-dir",
                tmp_path / "runs", "--epochs", "1", "--device", "cpu"])
    one_error_line(proc, "has 1 class (only)", "at least two")
    assert not (tmp_path / "runs").exists()
