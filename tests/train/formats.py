"""Writers of tiny data sets in their real distributed on-disk formats (pickles, binaries, idx, folders)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_FILES = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]


def write_cifar10(root: Path, rng: np.random.Generator, per_file: int = 2, meta: bool = True,
                  protocol: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-batches-py/ as distributed: pickled dicts with bytes keys, (N, 3072) uint8 data.

    Returns data (6 * per_file, 3072) and labels, train batches first then test_batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    all_data, all_labels = [], []
    for k, file in enumerate(CIFAR10_FILES):
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        labels = [(k * per_file + i) % 10 for i in range(per_file)]
        batch = {b"batch_label": file.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img{i}.png".encode() for i in range(per_file)]}
        (folder / file).write_bytes(pickle.dumps(batch, protocol=protocol))
        all_data.append(data)
        all_labels += labels
    if meta:
        names = [f"name{k}".encode() for k in range(10)]
        (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=protocol))
    return np.concatenate(all_data), np.array(all_labels)


def stl10_bytes(images: np.ndarray) -> bytes:
    """(N, 3, 96, 96) uint8 (channel, row, column) -> STL-10's layout: channel by channel, column-major."""
    return b"".join(img[c].tobytes(order="F") for img in images for c in range(3))


def write_stl10(folder: Path, splits: dict[str, np.ndarray], labels: dict[str, list[int]]) -> None:
    """stl10_binary/ files: <split>_X.bin for each of `splits` (train, test, unlabeled) and <split>_y.bin
    (labels 0..9, written as the files' 1..10) for each of `labels`."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, images in splits.items():
        (folder / f"{split}_X.bin").write_bytes(stl10_bytes(images))
    for split, values in labels.items():
        (folder / f"{split}_y.bin").write_bytes(bytes(v + 1 for v in values))


def write_idx(folder: Path, n_train: int, n_test: int, rng: np.random.Generator, gz: bool) -> tuple:
    """MNIST's idx files (big-endian headers) with random 28x28 images and labels, train then test."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        files = {f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes(),
                 f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, n) + labels.tobytes()}
        for name, payload in files.items():
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)
        out += [images, labels]
    return np.concatenate([out[0], out[2]]), np.concatenate([out[1], out[3]])


def write_class_folders(root: Path, names: list[str], per_class: int = 2) -> None:
    """<root>/<class>/*.JPEG, solid grey level 15 * label (exact under resizing); PNG bytes keep it exact."""
    for label, name in enumerate(sorted(names)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (40 + i * 7, 30), (15 * label,) * 3).save(root / name / f"{name}_{i}.JPEG", "PNG")
