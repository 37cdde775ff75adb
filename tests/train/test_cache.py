"""Training on folders: decoded on every core, cached (a second run decodes nothing), a seeded --max-images
sample, and a folder that cannot fit refused before any decoding."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contract.preprocess import prepare_source
from tests.support.runs import digit_folder
from train.__main__ import main
from train.data.cache import DoesNotFit, FolderDecoder, check_fits, sample
from train.data.datasets import _list_images


def _bmp_folder(root: Path, count: int = 40) -> list[Path]:
    """Uncompressed BMPs: rewriting one with other pixels keeps its size, so only the mtime can tell."""
    from sklearn.datasets import load_digits

    root.mkdir(parents=True)
    paths = []
    for i, image in enumerate(load_digits().images[:count]):
        path = root / f"{i:03d}.bmp"
        Image.fromarray(np.round(image * 255 / 16).astype(np.uint8)).resize((24, 24)).save(path)
        paths.append(path)
    return paths


def test_a_second_decode_reads_the_cache_and_decodes_nothing(tmp_path):
    paths = _bmp_folder(tmp_path / "photos")
    (tmp_path / "photos" / "broken.bmp").write_bytes(b"BM not really")
    paths.insert(5, tmp_path / "photos" / "broken.bmp")
    decoder = FolderDecoder(cache_dir=tmp_path / "cache", workers=2)
    first = decoder.decode(paths, 1, 16)
    assert not first.cache_hit
    assert first.images.shape == (40, 1, 16, 16) and first.kept.tolist() == [i for i in range(41) if i != 5]
    assert len(first.errors) == 1 and first.errors[0].startswith(f"{paths[5]}: cannot decode image")
    expected = np.stack([prepare_source(paths[i], 16, 1) for i in first.kept])
    np.testing.assert_array_equal(first.images, expected)  # the gateway's preprocessing, bit for bit

    # same size and mtime, other pixels: only a decode could see the change, and the cache is used instead
    victim = paths[0]
    stat = victim.stat()
    Image.fromarray(255 - np.asarray(Image.open(victim))).save(victim)
    assert victim.stat().st_size == stat.st_size
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = decoder.decode(paths, 1, 16)
    assert second.cache_hit and second.errors == first.errors
    np.testing.assert_array_equal(second.images, first.images)

    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: a new entry, decoded again
    third = decoder.decode(paths, 1, 16)
    assert not third.cache_hit
    np.testing.assert_array_equal(third.images[0], prepare_source(victim, 16, 1))
    assert not np.array_equal(third.images[0], first.images[0])

    other_size = decoder.decode(paths, 1, 8)  # the stored resolution is part of the key
    assert not other_size.cache_hit and other_size.images.shape == (40, 1, 8, 8)
    assert not list((tmp_path / "cache").glob(".*.tmp"))  # no partial arrays left


def test_decoding_without_a_cache_gives_the_same_array(tmp_path):
    paths = _bmp_folder(tmp_path / "photos", 12)
    cached = FolderDecoder(cache_dir=tmp_path / "cache", workers=1).decode(paths, 3, 20)
    uncached = FolderDecoder(workers=2).decode(paths, 3, 20)
    assert not uncached.cache_hit
    np.testing.assert_array_equal(cached.images, uncached.images)


def test_a_sample_is_seeded_and_keeps_the_listing_order(tmp_path):
    picked = sample(100, 10, seed=3)
    assert len(picked) == 10 and list(picked) == sorted(set(picked.tolist()))
    assert picked.tolist() == sample(100, 10, seed=3).tolist() != sample(100, 10, seed=4).tolist()
    assert sample(5, 10, seed=0).tolist() == sample(5, 0, seed=0).tolist() == [0, 1, 2, 3, 4]
    paths = _bmp_folder(tmp_path / "photos", 20)
    decoded = FolderDecoder(max_images=7, seed=3, workers=1).decode(paths, 1, 8)
    assert decoded.kept.tolist() == sample(20, 7, seed=3).tolist()
    np.testing.assert_array_equal(decoded.images[2], prepare_source(paths[decoded.kept[2]], 8, 1))


def test_the_estimate_says_what_fits():
    check_fits(10, 3, 96, {"host": 10 * 3 * 96 * 96 * 2})
    with pytest.raises(DoesNotFit) as err:
        check_fits(1_000_000, 3, 96, {"host": 16 * 2**30, "cuda:0": 8 * 2**30})
    message = str(err.value)
    assert "1,000,000 images at 3x96x96 need 25.7 GiB as uint8, but host has 16.0 GiB free" in message
    assert "--image-size" in message and f"--max-images N (about {int(16 * 2**30 * 0.8) // 27648:,} fit" in message


def test_a_folder_that_cannot_fit_exits_2_before_decoding(tmp_path, capsys):
    digit_folder(tmp_path / "photos", per_class=10)
    code = main(["--method", "cc", "--dataset", "folder", "--data-dir", str(tmp_path / "photos"),
                 "--run-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
                 "--image-size", "30000", "--num-clusters", "3", "--preset", "fast", "--backbone", "smallcnn"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: 31 images at 3x30000x30000 need 78.0 GiB as uint8, but host has"), err
    assert "--max-images N" in err and "--image-size" in err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()  # nothing decoded or written


def _train(data: Path, run: Path, *extra: str) -> int:
    return main(["--method", "cc", "--dataset", "folder", "--data-dir", str(data), "--run-dir", str(run),
                 "--preset", "fast", "--backbone", "smallcnn", "--image-size", "16", "--epochs", "1",
                 "--batch-size", "16", "--eval-every", "0", "--progress", "false", *extra])


def test_the_run_records_a_seeded_sample_and_the_second_run_starts_from_the_cache(tmp_path, capsys):
    data = digit_folder(tmp_path / "photos")
    assert _train(data, tmp_path / "runs" / "a", "--max-images", "50") == 0
    first = capsys.readouterr().out
    assert "a sample of 50 of 121" in first and "cached in" in first
    used = (tmp_path / "runs" / "a" / "images.txt").read_text().splitlines()
    listed = [str(p) for p in _list_images(data)]
    assert len(used) == json.loads((tmp_path / "runs" / "a" / "results.json").read_text())["num_images"]
    assert used == [listed[i] for i in sample(len(listed), 50, seed=0) if "broken" not in listed[i]]

    assert _train(data, tmp_path / "runs" / "b", "--max-images", "50") == 0  # same runs root: same cache
    assert "from the cache" in capsys.readouterr().out
    assert (tmp_path / "runs" / "b" / "images.txt").read_text().splitlines() == used
    assert len(list((tmp_path / "runs" / ".cache").glob("*.npy"))) == 1
