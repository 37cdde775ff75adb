"""Clustering data sets read from their distributed on-disk formats, loaded whole as uint8 tensors.

Images are kept at a stored side (the run's `stored_size`: CIFAR's own 32 px, 256 px for ImageNet
subsets), not at the model's input size: the training augmentation crops them to the model size on
the device, and evaluation resizes them there (train/data/augment.py), so CIFAR at 224 px keeps 60k x
3 x 32 x 32 bytes in memory, not 9 GB. Every image goes through `preprocess.prepare`, the function the
serving gateway uses; binary formats already at the stored size skip PIL (a plain reshape,
bit-identical to `prepare` there).

Each format has named splits (DatasetInfo.splits); `splits` picks which are loaded, in that order:

    data = load_dataset("cifar10", "~/data", 32)                  # train+test: (60000, 3, 32, 32) uint8
    unlabelled = load_dataset("stl10", "~/data", 96, ["unlabelled"])   # (100000, 3, 96, 96), no labels

`DATASETS` is the one table of formats: each `DatasetInfo` row holds the format's loader, its
splits, the layout it expects on disk and the run settings it implies (`defaults`).

Adding a data-set format:
1. A loader `(info, data_dir, size, splits) -> ImageData`. Binary formats read their arrays and return
   `_from_arrays(...)` (it resizes through `prepare` and checks the labels); folders of image files list
   paths and labels and return `_decode_files(...)`, and take `decoder=` too. Anything missing or
   malformed raises `_fail(info, problem)`: a DataError that names the expected layout. A format with
   a single split wraps its loader in `_one_split`.
2. One `DatasetInfo(...)` row in `_FORMATS`: name (what --dataset takes), load, folder=True for image
   files (decoded in parallel, cached, sampled by --max-images), channels, classes, native side,
   description (--help), expected (error messages), splits, default_splits, and `defaults`:
   stored_size, image_size, stem and the augmentations that suit it.
3. A writer of a few files in the real format in tests/train/formats.py and tests in
   tests/train/test_datasets.py (loads, labels, the errors for missing files).
"""

from __future__ import annotations

import gzip
import pickle
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from contract.names import IMAGE_EXTENSIONS
from contract.preprocess import prepare
from train.data.cache import FolderDecoder


class DataError(ValueError):
    """A data set that is missing, incomplete or not in the expected layout."""


@dataclass
class ImageData:
    """A whole data set in memory."""

    images: torch.Tensor  # (N, C, S, S) uint8, S = the requested (stored) side
    labels: torch.Tensor | None  # (N,) int64 in 0..K-1, or None when the data has no labels
    class_names: list[str] | None  # K names in label order
    sources: list[str]  # per image: file path (folders) or "<file>:<index>" (binary formats)
    name: str  # data set name
    skipped: list[str]  # "path: reason" for unreadable images that were left out (folders)
    splits: tuple[str, ...] = ()  # the splits loaded, in order


Loader = Callable[..., ImageData]
"""(info, data_dir, size, splits) -> ImageData; a folder format's loader also takes decoder= (a cache.FolderDecoder)."""


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """One data-set format: what it is, where its loader looks, its splits, and the run settings it implies."""

    name: str
    load: Loader
    folder: bool = False  # files of images, decoded by a cache.FolderDecoder (sampled by --max-images, cached)
    channels: int
    num_classes: int | None  # None: depends on the data (folder)
    native_size: int | None  # side of the stored images; None when they vary
    description: str
    expected: str  # the on-disk layout the loader looks for
    splits: tuple[str, ...] = ("all",)  # the format's splits
    default_splits: tuple[str, ...] = ()  # loaded when none are named; empty: every split
    defaults: dict[str, Any] = field(default_factory=dict, hash=False)
    """Config defaults every method shares on this data set (over the config's own defaults, under the
    method's presets for it and the command line): `stored_size`, the side the images are kept at in
    memory (the data set's own; 256 px for the ImageNet subsets, whose files vary), `image_size`, the
    model's input, the stem and which augmentations make sense. They are the native resolution with
    the CIFAR stem (what the `native` and `fast` presets run); the `paper` presets set the official
    code's resolution and stem per method."""


CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
CIFAR100_SUPERCLASSES = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
    "Ankle boot",
]


# --- shared helpers ----------------------------------------------------------------------------


def _fail(info: DatasetInfo, problem: str) -> DataError:
    return DataError(f"{info.name}: {problem}; expected: {info.expected}")


def _root(info: DatasetInfo, data_dir: str | Path | None) -> Path:
    if data_dir is None:
        raise _fail(info, "needs data_dir")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise _fail(info, f"directory {root} does not exist")
    return root


def _find(base: Path, name: str, gz: bool) -> Path | None:
    for candidate in (name, name + ".gz") if gz else (name,):
        if (base / candidate).exists():
            return base / candidate
    return None


def _locate(
    info: DatasetInfo, data_dir: str | Path | None, subdirs: Sequence[str], files: Sequence[str],
    gz: bool = False,
) -> Path:
    """The first data_dir/<subdir> holding every one of `files` (or `file.gz` if gz); DataError if none."""
    root = _root(info, data_dir)
    bases = [root / sub for sub in subdirs]
    for base in bases:
        if all(_find(base, f, gz) for f in files):
            return base
    best = max(bases, key=lambda b: sum(_find(b, f, gz) is not None for f in files))  # first on ties
    suffix = "[.gz]" if gz else ""
    missing = [str((best / f).relative_to(root)) + suffix for f in files if _find(best, f, gz) is None]
    raise _fail(info, f"{root} has no {', '.join(missing)}")


def _to_size(array: np.ndarray, image_size: int) -> np.ndarray:
    """(N, C, h, w) uint8 -> (N, C, S, S) through preprocess.prepare; a plain copy when h = w = S."""
    n, channels, height, width = array.shape
    if height == width == image_size:
        return np.ascontiguousarray(array)
    out = np.empty((n, channels, image_size, image_size), np.uint8)

    def convert(start: int) -> None:
        for i in range(start, min(start + 1024, n)):
            pixels = array[i, 0] if channels == 1 else array[i].transpose(1, 2, 0)
            out[i] = prepare(Image.fromarray(np.ascontiguousarray(pixels)), image_size, channels)

    with ThreadPoolExecutor() as pool:  # PIL releases the GIL while resizing
        list(pool.map(convert, range(0, n, 1024)))
    return out


def _check_labels(info: DatasetInfo, labels: np.ndarray, class_names: list[str], where: Path | str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise _fail(
            info, f"{where} has labels {labels.min()}..{labels.max()}, outside 0..{len(class_names) - 1}"
        )


def _from_arrays(
    info: DatasetInfo, images: np.ndarray, labels: np.ndarray | None, class_names: list[str],
    sources: list[str], image_size: int, where: Path | str,
) -> ImageData:
    """images: (N, C, h, w) uint8 at native size, labels: (N,) in 0..K-1 or None (unlabelled)."""
    if labels is not None:
        _check_labels(info, labels, class_names, where)
    return ImageData(
        images=torch.from_numpy(_to_size(images, image_size)),
        labels=None if labels is None else torch.from_numpy(labels.astype(np.int64)),
        class_names=list(class_names),
        sources=sources,
        name=info.name,
        skipped=[],
    )


def _list_images(directory: Path) -> list[Path]:
    """Image files under `directory`, recursive, sorted; hidden files and folders are ignored."""
    return sorted(
        p for p in directory.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
        and p.is_file()
    )


def _class_dirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_class_count(info: DatasetInfo, found: int, where: Path) -> None:
    if found != info.num_classes:
        raise _fail(info, f"found {found} class folders in {where}, expected {info.num_classes}")


def _decode_files(
    info: DatasetInfo, paths: list[Path], labels: list[int] | None, class_names: list[str] | None,
    image_size: int, decoder: FolderDecoder,
) -> ImageData:
    """Decode image files (sampled, memory-checked, on every core, cached: see cache.py), order kept;
    unreadable ones are skipped with a warning."""
    decoded = decoder.decode(paths, info.channels, image_size)
    skipped = decoded.errors
    if not len(decoded.kept):
        raise _fail(info, f"none of the {len(paths)} image files could be read, e.g. {skipped[0]}")
    if skipped:
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        warnings.warn(
            f"{info.name}: skipped {len(skipped)} unreadable image(s): {'; '.join(skipped[:10])}{more}",
            stacklevel=4,
        )
    paths = [paths[i] for i in decoded.kept]
    labels = None if labels is None else [labels[i] for i in decoded.kept]
    return ImageData(
        images=torch.from_numpy(decoded.images),
        labels=None if labels is None else torch.tensor(labels, dtype=torch.int64),
        class_names=class_names,
        sources=[str(p) for p in paths],
        name=info.name,
        skipped=skipped,
    )


# --- binary formats ----------------------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists and numpy arrays only, so a downloaded pickle cannot run code."""

    _ALLOWED = frozenset({
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    })

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(info: DatasetInfo, path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise _fail(info, f"{path} is not a readable python pickle ({err})") from err
    if not isinstance(batch, dict):
        raise _fail(info, f"{path} holds a {type(batch).__name__}, not a dict")
    return batch


def _load_cifar(
    info: DatasetInfo, data_dir: str | Path | None, image_size: int, splits: Sequence[str], *, folder: str,
    split_files: dict[str, Sequence[str]], meta: str, label_key: bytes, names_key: bytes,
    default_names: list[str],
) -> ImageData:
    files = [file for split in splits for file in split_files[split]]
    base = _locate(info, data_dir, [folder, "."], files)
    images, labels, sources = [], [], []
    for file in files:
        path = base / file
        batch = _unpickle(info, path)
        if b"data" not in batch or label_key not in batch:
            raise _fail(info, f"{path} lacks the b'data' or {label_key!r} entry")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        label = np.asarray(batch[label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(label) != len(data):
            raise _fail(info, f"{path} has data {data.shape} and {len(label)} labels, "
                              "expected (N, 3072) and N")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(label)
        sources += [f"{path}:{i}" for i in range(len(data))]
    names = default_names
    if (base / meta).exists():
        entry = _unpickle(info, base / meta).get(names_key)
        if entry is not None:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in entry]
    return _from_arrays(info, np.concatenate(images), np.concatenate(labels), names, sources,
                        image_size, base)


_STL10_FILES = {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin"),
                 "unlabelled": ("unlabeled_X.bin", None)}


def _load_stl10(info: DatasetInfo, data_dir: str | Path | None, image_size: int, splits: Sequence[str]) -> ImageData:
    pairs = [_STL10_FILES[split] for split in splits]
    base = _locate(info, data_dir, ["stl10_binary", "."], [f for pair in pairs for f in pair if f])
    side = 96
    per_image = 3 * side * side
    images, labels, sources = [], [], []
    for x_file, y_file in pairs:
        size = (base / x_file).stat().st_size
        if size == 0 or size % per_image:
            raise _fail(info, f"{base / x_file} has {size} bytes, not a positive multiple of {per_image} "
                              "(one 3x96x96 image)")
        count = size // per_image
        if y_file is not None:
            label = np.fromfile(base / y_file, dtype=np.uint8).astype(np.int64) - 1  # files hold 1..10
            if len(label) != count:
                raise _fail(info, f"{base / x_file} holds {count} images but {y_file} {len(label)} labels")
            labels.append(label)
        # mapped, not read: the 2.8 GB unlabelled split is copied once, into the result.
        # Each image is stored channel by channel, column-major: (C, W, H) -> (C, H, W).
        raw = np.memmap(base / x_file, dtype=np.uint8, mode="r")
        images.append(raw.reshape(count, 3, side, side).transpose(0, 1, 3, 2))
        sources += [f"{base / x_file}:{i}" for i in range(count)]
    names = STL10_CLASSES
    if (base / "class_names.txt").exists():
        names = [line.strip() for line in (base / "class_names.txt").read_text().splitlines() if line.strip()]
    all_labels = np.concatenate(labels) if len(labels) == len(pairs) else None  # any unlabelled split: none
    return _from_arrays(info, np.concatenate(images), all_labels, names, sources, image_size, base)


def _read_idx(info: DatasetInfo, path: Path, magic: int, ndim: int) -> np.ndarray:
    """Big-endian idx file (magic 2051: images (N, H, W), 2049: labels (N,)) -> uint8 array."""
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        try:
            raw = f.read()
        except (OSError, EOFError) as err:
            raise _fail(info, f"{path} is not a readable gzip file ({err})") from err
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise _fail(info, f"{path} starts with magic number {found}, expected {magic}")
    dims = [int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise _fail(info, f"{path} has {data.size} values after its header, dims {dims} need "
                          f"{int(np.prod(dims))}")
    return data.reshape(dims)


_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _load_idx(
    info: DatasetInfo, data_dir: str | Path | None, image_size: int, splits: Sequence[str], *, folder: str,
    class_names: list[str],
) -> ImageData:
    pairs = [_IDX_FILES[split] for split in splits]
    files = [f for pair in pairs for f in pair]
    base = _locate(info, data_dir, [".", "raw", f"{folder}/raw"], files, gz=True)
    images, labels, sources = [], [], []
    for x_file, y_file in pairs:
        x_path, y_path = _find(base, x_file, True), _find(base, y_file, True)
        assert x_path is not None and y_path is not None  # _locate checked
        x = _read_idx(info, x_path, 2051, 3)
        y = _read_idx(info, y_path, 2049, 1).astype(np.int64)
        if len(x) != len(y):
            raise _fail(info, f"{x_path} has {len(x)} images but {y_path} has {len(y)} labels")
        images.append(x[:, None])
        labels.append(y)
        sources += [f"{x_path}:{i}" for i in range(len(x))]
    return _from_arrays(info, np.concatenate(images), np.concatenate(labels), class_names, sources,
                        image_size, base)


def _load_digits(info: DatasetInfo, data_dir: str | Path | None, image_size: int) -> ImageData:
    from sklearn.datasets import load_digits  # heavy import, only needed here

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # 0..16 -> 0..255
    sources = [f"sklearn.datasets.load_digits:{i}" for i in range(len(images))]
    return _from_arrays(info, images, np.asarray(digits.target, np.int64), MNIST_CLASSES, sources,
                        image_size, "sklearn.datasets.load_digits")


# --- image folders -----------------------------------------------------------------------------


def _load_class_folders(info: DatasetInfo, data_dir: str | Path | None, image_size: int,
                        decoder: FolderDecoder) -> ImageData:
    root = _root(info, data_dir)
    if (root / "train").is_dir():
        root = root / "train"
    classes = _class_dirs(root)
    _check_class_count(info, len(classes), root)
    paths, labels = [], []
    for label, directory in enumerate(classes):
        files = _list_images(directory)
        if not files:
            raise _fail(info, f"class folder {directory} has no images")
        paths += files
        labels += [label] * len(files)
    return _decode_files(info, paths, labels, [d.name for d in classes], image_size, decoder)


def _load_tiny_imagenet(info: DatasetInfo, data_dir: str | Path | None, image_size: int,
                        splits: Sequence[str], decoder: FolderDecoder) -> ImageData:
    needed = ["train"] + (["val/images", "val/val_annotations.txt"] if "val" in splits else [])
    base = _locate(info, data_dir, ["tiny-imagenet-200", "."], needed)  # the class list is train/'s folders
    wnids = [d.name for d in _class_dirs(base / "train")]
    _check_class_count(info, len(wnids), base / "train")
    index = {wnid: i for i, wnid in enumerate(wnids)}
    paths, labels = [], []
    for split in splits:
        split_paths, split_labels = (_tiny_train(info, base, wnids) if split == "train"
                                     else _tiny_val(info, base, index))
        paths += split_paths
        labels += split_labels
    words = {}
    if (base / "words.txt").exists():
        for line in (base / "words.txt").read_text().splitlines():
            wnid, _, names = line.partition("\t")
            words[wnid.strip()] = names.strip()
    class_names = [words.get(wnid) or wnid for wnid in wnids]
    return _decode_files(info, paths, labels, class_names, image_size, decoder)


def _tiny_train(info: DatasetInfo, base: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    """train/<wnid>/images/*: paths and labels in wnid order."""
    paths, labels = [], []
    for label, wnid in enumerate(wnids):
        files = _list_images(base / "train" / wnid)
        if not files:
            raise _fail(info, f"class folder {base / 'train' / wnid} has no images")
        paths += files
        labels += [label] * len(files)
    return paths, labels


def _tiny_val(info: DatasetInfo, base: Path, index: dict[str, int]) -> tuple[list[Path], list[int]]:
    """val/images/* labelled by val/val_annotations.txt, in file-name order."""
    annotations = base / "val" / "val_annotations.txt"
    val: dict[str, str] = {}
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        if line.strip():
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise _fail(info, f"{annotations} line {number} names no known wnid: {line!r}")
            val[fields[0]] = fields[1]
    val_files = {p.name: p for p in _list_images(base / "val" / "images")}
    if set(val) != set(val_files):
        odd = sorted(set(val) ^ set(val_files))
        raise _fail(info, f"{annotations} and {base / 'val' / 'images'} disagree on {len(odd)} "
                          f"file(s), e.g. {odd[0]}")
    names = sorted(val)
    return [val_files[name] for name in names], [index[val[name]] for name in names]


def _load_folder(info: DatasetInfo, data_dir: str | Path | None, image_size: int,
                 decoder: FolderDecoder) -> ImageData:
    root = _root(info, data_dir)
    paths = _list_images(root)
    if not paths:
        raise _fail(info, f"{root} has no image files")
    nested = [p for p in paths if len(p.relative_to(root).parts) > 1]
    if not nested:
        return _decode_files(info, paths, None, None, image_size, decoder)
    loose = [p for p in paths if len(p.relative_to(root).parts) == 1]
    if loose:
        raise _fail(info, f"{root} has images in class subfolders and {len(loose)} directly in it "
                          f"(e.g. {loose[0].name}); move them into a class folder or remove them")
    class_names = sorted({p.relative_to(root).parts[0] for p in paths})
    index = {name: i for i, name in enumerate(class_names)}
    labels = [index[p.relative_to(root).parts[0]] for p in paths]
    return _decode_files(info, paths, labels, class_names, image_size, decoder)


def _one_split(load: Callable[..., ImageData]) -> Loader:
    """A loader of a format with a single split (load_dataset has checked that it is the one asked for)."""
    return lambda info, data_dir, size, splits, **decoding: load(info, data_dir, size, **decoding)


# Digits and MNIST are not mirror-symmetric (no flips) and have no colour; small images get the
# CIFAR stem. Handwriting needs per-image affine and elastic distortion instead of strong crops,
# or contrastive training collapses onto stroke thickness. The jitter keeps its fixed order: the
# digits recipes were measured with it.
_HANDWRITING = dict(flip_p=0.0, gray_p=0.0, crop_min_scale=0.6, rotate_degrees=12.0, shear_degrees=12.0,
                    translate=0.08, elastic_alpha=0.08, jitter_strength=0.4, jitter_p=0.5, jitter_order="fixed")
_IDX_EXPECTED = ("train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte "
                 "(each optionally .gz) in data_dir, data_dir/raw or data_dir/{}/raw")


def _cifar(name: str, num_classes: int, description: str, files: str, **layout: Any) -> DatasetInfo:
    """A CIFAR data set: 32 px RGB python pickles of a train and a test split in one folder; layout: the
    `_load_cifar` keywords (folder, split_files, meta, label_key, names_key, default_names)."""
    return DatasetInfo(
        name=name, channels=3, num_classes=num_classes, native_size=32, description=description,
        expected=f"{layout['folder']}/ with {files} (python pickles), {layout['meta']} optional; "
                 "data_dir is that folder or its parent",
        splits=("train", "test"), load=partial(_load_cifar, **layout),
        defaults=dict(image_size=32, stored_size=32, stem="cifar"),
    )


def _imagenet_subset(name: str, num_classes: int, description: str) -> DatasetInfo:
    """ImageNet images of `num_classes` classes, one folder each. Crops are taken from a 256 px copy
    (shorter side 256, centre square), not from a 96 px pre-resize."""
    return DatasetInfo(
        name=name, channels=3, num_classes=num_classes, native_size=None, description=description,
        expected=f"{num_classes} class folders <data_dir>/<class>/*.JPEG (or <data_dir>/train/<class>/...)",
        splits=("train",), load=_one_split(_load_class_folders), folder=True,
        defaults=dict(image_size=96, stored_size=256, stem="cifar", blur_p=0.5),
    )


_FORMATS = [
    _cifar("cifar10", 10, "CIFAR-10 train+test: 60k 32x32 RGB images, 10 classes",
           "data_batch_1 .. data_batch_5 and test_batch", folder="cifar-10-batches-py",
           split_files={"train": [f"data_batch_{k}" for k in range(1, 6)], "test": ["test_batch"]},
           meta="batches.meta", label_key=b"labels", names_key=b"label_names", default_names=CIFAR10_CLASSES),
    _cifar("cifar100", 20, "CIFAR-100 train+test: 60k 32x32 RGB images, the 20 superclasses", "train and test",
           folder="cifar-100-python", split_files={"train": ["train"], "test": ["test"]}, meta="meta",
           label_key=b"coarse_labels", names_key=b"coarse_label_names", default_names=CIFAR100_SUPERCLASSES),
    DatasetInfo(
        name="stl10", channels=3, num_classes=10, native_size=96,
        description="STL-10 labelled train+test: 13k 96x96 RGB images, 10 classes "
                    "(split unlabelled: 100k more, no labels)",
        expected="stl10_binary/ with train_X.bin, train_y.bin, test_X.bin, test_y.bin (unlabeled_X.bin for the "
                 "unlabelled split), class_names.txt optional; data_dir is that folder or its parent",
        splits=("train", "test", "unlabelled"), default_splits=("train", "test"),
        load=_load_stl10,
        defaults=dict(image_size=96, stored_size=96, stem="cifar"),
    ),
    DatasetInfo(
        name="mnist", channels=1, num_classes=10, native_size=28,
        description="MNIST train+test: 70k 28x28 grey digits, 10 classes",
        expected=_IDX_EXPECTED.format("MNIST"), splits=("train", "test"),
        load=partial(_load_idx, folder="MNIST", class_names=MNIST_CLASSES),
        defaults=dict(image_size=28, stored_size=28, **_HANDWRITING),
    ),
    DatasetInfo(
        name="fashion-mnist", channels=1, num_classes=10, native_size=28,
        description="Fashion-MNIST train+test: 70k 28x28 grey clothes, 10 classes",
        expected=_IDX_EXPECTED.format("FashionMNIST"), splits=("train", "test"),
        load=partial(_load_idx, folder="FashionMNIST", class_names=FASHION_MNIST_CLASSES),
        defaults=dict(image_size=28, stored_size=28, gray_p=0.0),
    ),
    _imagenet_subset("imagenet10", 10, "ImageNet-10: 13k ImageNet images of 10 classes"),
    _imagenet_subset("imagenet-dogs", 15, "ImageNet-Dogs: 19.5k ImageNet images of 15 dog breeds"),
    DatasetInfo(
        name="tiny-imagenet", channels=3, num_classes=200, native_size=64,
        description="Tiny-ImageNet train split: 100k 64x64 RGB images, 200 classes (split val: 10k more)",
        expected="tiny-imagenet-200/ with train/<wnid>/images/*.JPEG for 200 wnids (and, for the val split, "
                 "val/images/*.JPEG and val/val_annotations.txt: file<TAB>wnid<TAB>bbox), words.txt optional; "
                 "data_dir is that folder or its parent",
        splits=("train", "val"), default_splits=("train",),
        load=_load_tiny_imagenet, folder=True,
        defaults=dict(image_size=64, stored_size=64, stem="cifar"),
    ),
    DatasetInfo(
        name="folder", channels=3, num_classes=None, native_size=None,
        description="any directory of images; one class per subdirectory if it has them",
        expected="image files (" + ", ".join(sorted(IMAGE_EXTENSIONS)) + ") under data_dir, searched "
                 "recursively; either all in <data_dir>/<class>/... (labelled) or none in class subfolders",
        load=_one_split(_load_folder), folder=True,
        defaults=dict(image_size=96, stem="cifar"),
    ),
    DatasetInfo(
        name="digits", channels=1, num_classes=10, native_size=8,
        description="scikit-learn's 1797 8x8 handwritten digits, 10 classes",
        expected="nothing on disk: read from sklearn.datasets.load_digits (data_dir is ignored)",
        load=_one_split(_load_digits),
        defaults=dict(backbone="smallcnn", image_size=16, batch_size=256, **_HANDWRITING),
    ),
]
DATASETS: dict[str, DatasetInfo] = {info.name: info for info in _FORMATS}
"""Every data-set format by its name (`--dataset`), in the order --help lists them."""


def resolve_splits(name: str, splits: Sequence[str] | None = None) -> tuple[str, ...]:
    """The splits of data set `name` to load, in order: `splits` (checked), or the data set's default."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    info = DATASETS[name]
    if not splits:
        return info.default_splits or info.splits
    unknown = [s for s in splits if s not in info.splits]
    if unknown:
        raise DataError(f"{name} has no split {unknown[0]!r}; its splits: {', '.join(info.splits)}")
    return tuple(dict.fromkeys(splits))


def load_dataset(name: str, data_dir: str | Path | None, size: int, splits: Sequence[str] | None = None,
                 decoder: FolderDecoder | None = None) -> ImageData:
    """Load the `splits` of a data set (default: its default splits) as uint8 (N, C, size, size) plus labels.

    size: the side the images are stored at (resized and centre-cropped by `preprocess.prepare`).
    labels is None when any split loaded has none (STL-10's unlabelled split, folders without classes).
    Folders of image files are decoded by `decoder` (default: every core, no cache, no sample).
    Raises DataError, before any decoding, when the data set or a split is unknown or files are missing.
    """
    chosen = resolve_splits(name, splits)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    info = DATASETS[name]
    if info.folder:
        data = info.load(info, data_dir, size, chosen, decoder=decoder or FolderDecoder())
    elif decoder is not None and decoder.max_images:
        folders = sorted(n for n, i in DATASETS.items() if i.folder)
        raise DataError(f"--max-images samples folders of image files ({', '.join(folders)}), not {name}")
    else:
        data = info.load(info, data_dir, size, chosen)
    data.splits = chosen
    return data
