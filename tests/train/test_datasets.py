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
from tests.train.formats import write_cifar10, write_class_folders, write_idx, write_stl10
from train.data import datasets
from train.data.datasets import DATASETS, DataError, DatasetInfo, ImageData, load_dataset, resolve_splits

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
    for key, info in DATASETS.items():
        assert isinstance(info, DatasetInfo) and info.name == key and callable(info.load)
        assert info.channels in (1, 3) and info.expected and info.description
        assert info.splits and set(info.default_splits) <= set(info.splits)


def test_splits_are_checked_and_default_per_data_set() -> None:
    assert resolve_splits("cifar10") == ("train", "test")
    assert resolve_splits("stl10") == ("train", "test")  # the 13k labelled images; unlabelled on request
    assert resolve_splits("tiny-imagenet") == ("train",)  # CC trains on the train split only
    assert resolve_splits("stl10", ["unlabelled", "train", "unlabelled"]) == ("unlabelled", "train")
    with pytest.raises(DataError, match="stl10 has no split 'unlabeled'; its splits: train, test, unlabelled"):
        resolve_splits("stl10", ["unlabeled"])


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


def test_cifar10_splits_read_only_their_files(tmp_path: Path) -> None:
    data, labels = write_cifar10(tmp_path, np.random.default_rng(9))
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").unlink()  # the test split does not need it
    test = load_dataset("cifar10", tmp_path, 32, ["test"])
    check(test, 2, 3, 32)
    assert test.splits == ("test",)
    np.testing.assert_array_equal(test.images.numpy(), data[10:].reshape(-1, 3, 32, 32))
    assert test.labels.tolist() == labels[10:].tolist()
    with pytest.raises(DataError, match="data_batch_2"):
        load_dataset("cifar10", tmp_path, 32, ["train"])


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
    images = np.zeros((3, 3, 96, 96), np.uint8)  # (N, C, row, column)
    images[0, 2, 10, 70] = 255  # a pixel off the diagonal: a transposed read would miss it
    images[1] = np.random.default_rng(5).integers(0, 256, (3, 96, 96), dtype=np.uint8)
    images[2, 0, 95, 0] = 9
    write_stl10(folder, {"train": images[:2], "test": images[2:]}, {"train": [0, 9], "test": [3]})
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


def test_stl10_unlabelled_split(tmp_path: Path) -> None:
    folder = tmp_path / "stl10_binary"
    rng = np.random.default_rng(10)
    labelled, unlabelled = (rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8) for n in (2, 5))
    with pytest.raises(DataError, match=r"has no stl10_binary/unlabeled_X\.bin"):
        load_dataset("stl10", tmp_path, 96, ["unlabelled"])
    write_stl10(folder, {"train": labelled, "test": labelled[:1], "unlabeled": unlabelled},
                {"train": [1, 2], "test": [3]})
    out = load_dataset("stl10", tmp_path, 96, ["unlabelled"])
    assert out.images.shape == (5, 3, 96, 96) and out.labels is None and out.splits == ("unlabelled",)
    np.testing.assert_array_equal(out.images.numpy(), unlabelled)
    assert out.sources[4].endswith("unlabeled_X.bin:4")
    mixed = load_dataset("stl10", tmp_path, 96, ["train", "unlabelled"])  # one split without labels: none
    assert mixed.images.shape[0] == 7 and mixed.labels is None
    np.testing.assert_array_equal(mixed.images[2:].numpy(), unlabelled)
    (folder / "unlabeled_X.bin").write_bytes(b"\0" * 1000)
    with pytest.raises(DataError, match="1000 bytes, not a positive multiple of 27648"):
        load_dataset("stl10", tmp_path, 96, ["unlabelled"])


# --- MNIST / Fashion-MNIST ---------------------------------------------------------------------


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
    train_only = load_dataset("tiny-imagenet", tmp_path, 8)  # the default: CC trains on the train split only
    check(train_only, 200, 3, 8)
    out = load_dataset("tiny-imagenet", tmp_path, 8, ["train", "val"])
    check(out, 202, 3, 8)
    np.testing.assert_array_equal(out.images[:200].numpy(), train_only.images.numpy())
    assert out.class_names[0] == "goldfish, Carassius auratus" and out.class_names[1] == wnids[1]
    for source, label in zip(out.sources[:200], out.labels[:200].tolist(), strict=True):
        assert Path(source).parts[-3] == wnids[label]
    assert [Path(s).name for s in out.sources[200:]] == ["val_0.JPEG", "val_1.JPEG"]
    assert out.labels[200:].tolist() == [150, 7]
    assert (out.images[200:].int() - 200).abs().max() <= 2  # grey JPEG -> RGB, values kept
    assert abs(int(out.images[42, 0, 4, 4]) - 42) <= 3 and int(out.images[42, 1:].max()) <= 3

    (base / "val" / "val_annotations.txt").unlink()
    assert load_dataset("tiny-imagenet", base, 8).images.shape[0] == 200  # the train split needs no val files
    with pytest.raises(DataError, match="val_annotations.txt"):
        load_dataset("tiny-imagenet", base, 8, ["val"])


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
