"""train.data.datasets: each data set written in its real on-disk format, loaded back."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contract.preprocess import prepare
from train.data import datasets
from train.data.datasets import DATASETS, DataError, DatasetInfo, ImageData, load_dataset

CIFAR10_FILES = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def check(data: ImageData, n: int, channels: int, size: int) -> None:
    assert data.images.shape == (n, channels, size, size)
    assert data.images.dtype == torch.uint8
    assert len(data.sources) == n
    if data.labels is not None:
        assert data.labels.shape == (n,) and data.labels.dtype == torch.int64
        assert data.class_names is not None
        assert 0 <= int(data.labels.min()) and int(data.labels.max()) < len(data.class_names)


def as_pil(chw: np.ndarray) -> Image.Image:
    return Image.fromarray(chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0))


# --- registry ----------------------------------------------------------------------------------


def test_registry_is_consistent() -> None:
    assert set(DATASETS) == set(datasets._LOADERS)
    for key, info in DATASETS.items():
        assert isinstance(info, DatasetInfo) and info.name == key
        assert info.channels in (1, 3) and info.expected and info.description


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(DataError, match="unknown data set 'cifar11'.*cifar10.*folder"):
        load_dataset("cifar11", None, 32)


def test_missing_directory_names_path_and_layout(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=r"cifar10: directory .*nowhere does not exist.*data_batch_1"):
        load_dataset("cifar10", missing, 32)
    with pytest.raises(DataError, match="needs data_dir"):
        load_dataset("mnist", None, 28)


# --- CIFAR -------------------------------------------------------------------------------------


def write_cifar10(root: Path, rng: np.random.Generator, per_file: int = 2, meta: bool = True,
                  protocol: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-batches-py/ as distributed: pickled dicts with bytes keys, (N, 3072) uint8 data."""
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


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_round_trip(tmp_path: Path, protocol: int) -> None:
    data, labels = write_cifar10(tmp_path, np.random.default_rng(0), protocol=protocol)
    for data_dir in (tmp_path, tmp_path / "cifar-10-batches-py"):  # parent or the folder itself
        out = load_dataset("cifar10", data_dir, 32)
        check(out, 12, 3, 32)
        # row-major planes: byte c*1024 + r*32 + x is channel c, row r, column x
        c, r, x = 1, 3, 17
        assert out.images[5, c, r, x] == data[5, c * 1024 + r * 32 + x]
        np.testing.assert_array_equal(out.images.numpy(), data.reshape(-1, 3, 32, 32))
        np.testing.assert_array_equal(out.labels.numpy(), labels)
        assert out.class_names == [f"name{k}" for k in range(10)]
        assert out.sources[2].endswith("data_batch_2:0") and out.name == "cifar10"
        assert out.skipped == []


def test_cifar10_default_names_and_resize(tmp_path: Path) -> None:
    data, _ = write_cifar10(tmp_path, np.random.default_rng(1), meta=False)
    out = load_dataset("cifar10", tmp_path, 20)
    check(out, 12, 3, 20)
    assert out.class_names == datasets.CIFAR10_CLASSES
    for i in (0, 7):  # resized exactly as the serving path would do it
        expected = prepare(as_pil(data[i].reshape(3, 32, 32)), 20, 3)
        np.testing.assert_array_equal(out.images[i].numpy(), expected)


def test_cifar10_missing_file_reported_before_reading(tmp_path: Path) -> None:
    write_cifar10(tmp_path, np.random.default_rng(2))
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    (folder / "data_batch_1").write_bytes(b"garbage, never read")
    with pytest.raises(DataError, match="has no cifar-10-batches-py/data_batch_3; expected") as err:
        load_dataset("cifar10", tmp_path, 32)
    assert "data_batch_1" not in str(err.value).split("expected")[0]
    with pytest.raises(DataError, match="has no data_batch_3"):
        load_dataset("cifar10", folder, 32)


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    write_cifar10(tmp_path, np.random.default_rng(3))

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    # the pickle names builtins.print (ray, once imported in the process, replaces it: any print is refused)
    with pytest.raises(DataError, match=r"refusing to load \S*print"):
        load_dataset("cifar10", tmp_path, 32)


def test_cifar100_uses_coarse_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(4)
    data = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    coarse, fine = [0, 19, 7, 3, 19], [99, 0, 50, 12, 98]
    for file, rows in (("train", slice(0, 3)), ("test", slice(3, 5))):
        batch = {b"data": data[rows], b"coarse_labels": coarse[rows], b"fine_labels": fine[rows]}
        (folder / file).write_bytes(pickle.dumps(batch, protocol=2))
    out = load_dataset("cifar100", tmp_path, 32)
    check(out, 5, 3, 32)
    assert out.labels.tolist() == coarse
    assert out.class_names == datasets.CIFAR100_SUPERCLASSES and len(out.class_names) == 20
    np.testing.assert_array_equal(out.images.numpy(), data.reshape(-1, 3, 32, 32))

    names = [f"super{k}".encode() for k in range(20)]
    (folder / "meta").write_bytes(pickle.dumps({b"coarse_label_names": names, b"fine_label_names": []}))
    assert load_dataset("cifar100", folder, 32).class_names == [f"super{k}" for k in range(20)]


# --- STL-10 ------------------------------------------------------------------------------------


def test_stl10_column_major_and_labels(tmp_path: Path) -> None:
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    images = np.zeros((3, 3, 96, 96), np.uint8)  # (N, C, row, column)
    images[0, 2, 10, 70] = 255  # a pixel off the diagonal: a transposed read would miss it
    images[1] = np.random.default_rng(5).integers(0, 256, (3, 96, 96), dtype=np.uint8)
    images[2, 0, 95, 0] = 9

    def column_major(batch: np.ndarray) -> bytes:
        return b"".join(img[c].tobytes(order="F") for img in batch for c in range(3))

    (folder / "train_X.bin").write_bytes(column_major(images[:2]))
    (folder / "train_y.bin").write_bytes(bytes([1, 10]))
    (folder / "test_X.bin").write_bytes(column_major(images[2:]))
    (folder / "test_y.bin").write_bytes(bytes([4]))
    out = load_dataset("stl10", tmp_path, 96)
    check(out, 3, 3, 96)
    assert out.images[0, 2, 10, 70] == 255 and out.images[0, 2, 70, 10] == 0
    assert out.images[2, 0, 95, 0] == 9
    np.testing.assert_array_equal(out.images.numpy(), images)
    assert out.labels.tolist() == [0, 9, 3]
    assert out.class_names == datasets.STL10_CLASSES
    assert out.sources[2].endswith("test_X.bin:0")

    (folder / "class_names.txt").write_text("\n".join(f"k{i}" for i in range(10)) + "\n")
    small = load_dataset("stl10", folder, 32)
    check(small, 3, 3, 32)
    assert small.class_names == [f"k{i}" for i in range(10)]

    (folder / "test_y.bin").unlink()
    with pytest.raises(DataError, match="test_y.bin"):
        load_dataset("stl10", tmp_path, 96)


# --- MNIST / Fashion-MNIST ---------------------------------------------------------------------


def write_idx(folder: Path, n_train: int, n_test: int, rng: np.random.Generator, gz: bool) -> tuple:
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


@pytest.mark.parametrize(("gz", "sub"), [(False, "."), (True, "MNIST/raw")])
def test_mnist_idx_plain_and_gz(tmp_path: Path, gz: bool, sub: str) -> None:
    images, labels = write_idx(tmp_path / sub, 4, 3, np.random.default_rng(6), gz)
    out = load_dataset("mnist", tmp_path, 28)
    check(out, 7, 1, 28)
    assert out.images[5, 0, 4, 20] == images[5, 4, 20]
    np.testing.assert_array_equal(out.images[:, 0].numpy(), images)
    np.testing.assert_array_equal(out.labels.numpy(), labels)
    assert out.class_names == [str(d) for d in range(10)]
    resized = load_dataset("mnist", tmp_path / sub, 32)
    check(resized, 7, 1, 32)
    np.testing.assert_array_equal(resized.images[6].numpy(), prepare(as_pil(images[6][None]), 32, 1))


def test_fashion_mnist_names_and_bad_magic(tmp_path: Path) -> None:
    write_idx(tmp_path / "FashionMNIST" / "raw", 2, 2, np.random.default_rng(7), gz=True)
    out = load_dataset("fashion-mnist", tmp_path, 28)
    check(out, 4, 1, 28)
    assert out.class_names == datasets.FASHION_MNIST_CLASSES
    folder = tmp_path / "FashionMNIST" / "raw"
    good = gzip.decompress((folder / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">I", 2051) + good[4:]))
    with pytest.raises(DataError, match="magic number 2051, expected 2049"):
        load_dataset("fashion-mnist", tmp_path, 28)


def test_mnist_missing_file_named(tmp_path: Path) -> None:
    write_idx(tmp_path, 2, 2, np.random.default_rng(8), gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"has no t10k-labels-idx1-ubyte\[\.gz\]; expected") as err:
        load_dataset("mnist", tmp_path, 28)
    assert MNIST_FILES[0] not in str(err.value).split("expected")[0]


# --- ImageNet-style class folders --------------------------------------------------------------


def write_class_folders(root: Path, names: list[str], per_class: int = 2) -> None:
    """<root>/<class>/*.JPEG, solid grey level 15 * label (exact under resizing); PNG bytes keep it exact."""
    for label, name in enumerate(sorted(names)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (40 + i * 7, 30), (15 * label,) * 3).save(root / name / f"{name}_{i}.JPEG", "PNG")


@pytest.mark.parametrize(("name", "k"), [("imagenet10", 10), ("imagenet-dogs", 15)])
def test_imagenet_subsets(tmp_path: Path, name: str, k: int) -> None:
    wnids = [f"n{99 - i:08d}" for i in range(k)]  # written in reverse: labels must follow sorted names
    write_class_folders(tmp_path / "train", wnids)
    out = load_dataset(name, tmp_path, 16)
    check(out, 2 * k, 3, 16)
    assert out.class_names == sorted(wnids)
    assert out.labels.tolist() == [i // 2 for i in range(2 * k)]
    assert (out.images.view(2 * k, -1) == (15 * out.labels)[:, None].to(torch.uint8)).all()
    assert Path(out.sources[0]).parent.name == sorted(wnids)[0]


def test_imagenet_wrong_class_count(tmp_path: Path) -> None:
    write_class_folders(tmp_path, [f"c{i}" for i in range(9)], per_class=1)
    with pytest.raises(DataError, match="found 9 class folders in .*, expected 10"):
        load_dataset("imagenet10", tmp_path, 8)


# --- Tiny-ImageNet -----------------------------------------------------------------------------


def test_tiny_imagenet_train_and_val(tmp_path: Path) -> None:
    base = tmp_path / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(200)]
    for i, wnid in enumerate(wnids):
        (base / "train" / wnid / "images").mkdir(parents=True)
        Image.new("RGB", (16, 16), (i, 0, 0)).save(base / "train" / wnid / "images" / f"{wnid}_0.JPEG")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    (base / "val" / "images").mkdir(parents=True)
    val = {"val_1.JPEG": wnids[7], "val_0.JPEG": wnids[150]}
    for file in val:
        Image.new("L", (16, 16), 200).save(base / "val" / "images" / file)  # a greyscale JPEG
    (base / "val" / "val_annotations.txt").write_text(
        "".join(f"{file}\t{wnid}\t0\t0\t15\t15\n" for file, wnid in val.items())
    )
    (base / "words.txt").write_text(f"{wnids[0]}\tgoldfish, Carassius auratus\nn99999999\tother\n")
    out = load_dataset("tiny-imagenet", tmp_path, 8)
    check(out, 202, 3, 8)
    assert out.class_names[0] == "goldfish, Carassius auratus" and out.class_names[1] == wnids[1]
    for source, label in zip(out.sources[:200], out.labels[:200].tolist(), strict=True):
        assert Path(source).parts[-3] == wnids[label]
    assert [Path(s).name for s in out.sources[200:]] == ["val_0.JPEG", "val_1.JPEG"]
    assert out.labels[200:].tolist() == [150, 7]
    assert (out.images[200:].int() - 200).abs().max() <= 2  # grey JPEG -> RGB, values kept
    assert abs(int(out.images[42, 0, 4, 4]) - 42) <= 3 and int(out.images[42, 1:].max()) <= 3

    (base / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError, match="val_annotations.txt"):
        load_dataset("tiny-imagenet", base, 8)


# --- generic folders ---------------------------------------------------------------------------


def test_folder_with_classes_and_a_corrupt_image(tmp_path: Path) -> None:
    (tmp_path / "dogs").mkdir()
    (tmp_path / "cats" / "nested").mkdir(parents=True)
    Image.new("RGB", (12, 10), (10, 20, 30)).save(tmp_path / "dogs" / "a.png")
    Image.new("RGB", (10, 12), (40, 50, 60)).save(tmp_path / "dogs" / "B.PNG")
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "cats" / "nested" / "c.png")
    (tmp_path / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image.*broken\.jpg"):
        out = load_dataset("folder", tmp_path, 8)
    check(out, 3, 3, 8)
    assert out.class_names == ["cats", "dogs"]
    assert [Path(s).name for s in out.sources] == ["c.png", "B.PNG", "a.png"]
    assert out.labels.tolist() == [0, 1, 1]
    assert (out.images[0] == 255).all()  # transparent PNG composited on white
    assert out.images[2, :, 4, 4].tolist() == [10, 20, 30]
    assert len(out.skipped) == 1 and out.skipped[0].startswith(str(tmp_path / "cats" / "broken.jpg"))


def test_folder_without_classes_has_no_labels(tmp_path: Path) -> None:
    for i in range(3):
        Image.new("L", (9, 9), 50 * i).save(tmp_path / f"{i}.bmp")
    out = load_dataset("folder", tmp_path, 4)
    check(out, 3, 3, 4)
    assert out.labels is None and out.class_names is None
    assert out.images[:, :, 0, 0].tolist() == [[0] * 3, [50] * 3, [100] * 3]


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "x.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match="directly in it.*loose.png"):
        load_dataset("folder", tmp_path, 4)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="none of the 1 image files could be read"):
        load_dataset("folder", bad, 4)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="has no image files"):
        load_dataset("folder", empty, 4)


# --- digits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [8, 16])
def test_digits(size: int) -> None:
    from sklearn.datasets import load_digits

    reference = load_digits()
    out = load_dataset("digits", None, size)
    check(out, 1797, 1, size)
    assert out.class_names == [str(d) for d in range(10)]
    np.testing.assert_array_equal(out.labels.numpy(), reference.target)
    assert int(out.images.max()) == 255 and int(out.images.min()) == 0
    if size == 8:
        expected = np.round(reference.images[:5] * 255 / 16)
        np.testing.assert_array_equal(out.images[:5, 0].numpy(), expected)
