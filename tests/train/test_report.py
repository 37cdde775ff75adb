"""Run-directory artefacts: CSV round trip, PNGs readable, gallery sampling."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.report import (
    gallery_indices,
    hungarian_cluster_order,
    plot_confusion,
    plot_gallery,
    write_assignments,
)

SOURCES = ["a.png", "dir,with,commas/b.png", 'q"uote.png']


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _check_png(path: Path, min_side: int = 200) -> None:
    assert path.stat().st_size > 2000
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert min(img.size) >= min_side
        assert max(img.size) <= 4000
        lo, hi = img.convert("L").getextrema()
        assert hi - lo > 100  # not a blank image
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_assignments_csv_without_labels(tmp_path: Path) -> None:
    path = tmp_path / "assignments.csv"
    write_assignments(path, SOURCES, np.array([2, 0, 1]), np.array([0.9, 0.51, 0.333333333]), None, None)
    rows = _read_csv(path)
    assert rows == [
        ["index", "source", "cluster", "confidence"],
        ["0", "a.png", "2", "0.900000"],
        ["1", "dir,with,commas/b.png", "0", "0.510000"],
        ["2", 'q"uote.png', "1", "0.333333"],
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["assignments.csv"]


def test_assignments_csv_with_labels(tmp_path: Path) -> None:
    path = tmp_path / "assignments.csv"
    clusters, conf, labels = np.array([2, 0, 1]), np.array([0.9, 0.5, 0.25]), np.array([1, 0, 1])
    write_assignments(path, SOURCES, clusters, conf, labels, ["cat", "dog,wolf"])
    rows = _read_csv(path)
    assert rows[0] == ["index", "source", "cluster", "confidence", "label", "class_name"]
    assert rows[2] == ["1", "dir,with,commas/b.png", "0", "0.500000", "0", "cat"]
    assert rows[3][-2:] == ["1", "dog,wolf"]

    write_assignments(path, SOURCES, clusters, conf, labels, None)
    assert _read_csv(path)[0] == ["index", "source", "cluster", "confidence", "label"]


def test_assignments_bad_inputs(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    with pytest.raises(ValueError, match="length"):
        write_assignments(path, SOURCES, np.array([0, 1]), np.ones(3), None, None)
    with pytest.raises(ValueError, match="needs labels"):
        write_assignments(path, SOURCES, np.zeros(3, int), np.ones(3), None, ["x"])
    with pytest.raises(ValueError, match="no name"):
        write_assignments(path, SOURCES, np.zeros(3, int), np.ones(3), np.array([0, 1, 2]), ["x", "y"])
    assert list(tmp_path.iterdir()) == []


def test_hungarian_cluster_order_makes_diagonal() -> None:
    # Cluster 1 is class 0, cluster 0 is class 1, cluster 2 is class 2, cluster 3 is left over.
    table = np.array([[0, 5, 0], [5, 0, 1], [0, 0, 5], [1, 0, 0]])
    order = hungarian_cluster_order(table)
    np.testing.assert_array_equal(order, [1, 0, 2, 3])
    np.testing.assert_array_equal(np.diag(table[order]), [5, 5, 5])
    # Fewer clusters than classes: matched clusters sorted by their class column.
    np.testing.assert_array_equal(hungarian_cluster_order(np.array([[0, 0, 4], [3, 0, 0]])), [1, 0])


@pytest.mark.parametrize(("num_classes", "num_clusters"), [(3, 3), (3, 5), (4, 2), (200, 200), (200, 150)])
def test_plot_confusion(tmp_path: Path, num_classes: int, num_clusters: int) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, num_classes, size=20 * num_classes)
    clusters = np.where(
        rng.random(labels.size) < 0.7, labels % num_clusters, rng.integers(0, num_clusters, labels.size)
    )
    path = tmp_path / "confusion.png"
    names = [f"class {i}" for i in range(num_classes)] if num_classes <= 5 else None
    plot_confusion(path, labels, clusters, names)
    _check_png(path, min_side=400)


def test_plot_confusion_unknown_class_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no name"):
        plot_confusion(tmp_path / "c.png", np.array([0, 1, 2]), np.array([0, 1, 1]), ["a", "b"])


def test_gallery_indices_belong_to_their_cluster() -> None:
    rng = np.random.default_rng(0)
    clusters = rng.integers(0, 6, size=300)
    clusters[clusters == 4] = 5  # cluster 4 is empty
    clusters[:3] = 3
    clusters[3:] = np.where(clusters[3:] == 3, 0, clusters[3:])  # cluster 3 has exactly 3 members
    picks = gallery_indices(clusters, per_cluster=7, seed=1, num_clusters=8)
    assert sorted(picks) == list(range(8))
    for cid, idx in picks.items():
        size = int((clusters == cid).sum())
        assert idx.size == min(size, 7)
        assert len(set(idx.tolist())) == idx.size
        assert np.all(clusters[idx] == cid)
    assert picks[4].size == 0 and picks[7].size == 0
    np.testing.assert_array_equal(picks[3], [0, 1, 2])
    again = gallery_indices(clusters, per_cluster=7, seed=1, num_clusters=8)
    assert all(np.array_equal(picks[c], again[c]) for c in picks)
    other = gallery_indices(clusters, per_cluster=7, seed=2)
    assert not all(np.array_equal(picks[c], other[c]) for c in other)


def test_gallery_indices_bad_inputs() -> None:
    with pytest.raises(ValueError, match="per_cluster"):
        gallery_indices(np.array([0, 1]), per_cluster=0)
    with pytest.raises(ValueError, match="num_clusters"):
        gallery_indices(np.array([0, 3]), per_cluster=2, num_clusters=2)


@pytest.mark.parametrize("channels", [1, 3])
def test_plot_gallery_shows_each_clusters_images(tmp_path: Path, channels: int) -> None:
    # Cluster k's images are all gray value 40 + 50 * k; cluster 1 is empty.
    clusters = np.array([0] * 5 + [2] * 12 + [3] * 2)
    images = np.broadcast_to((40 + 50 * clusters).astype(np.uint8)[:, None, None, None], (19, channels, 8, 8))
    path = tmp_path / "gallery.png"
    plot_gallery(path, images, clusters, per_cluster=10, titles={2: "mostly 7s"})
    _check_png(path)
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"))
    masks = {v: np.all(rgb == v, axis=-1) for v in (40, 90, 140, 190)}
    counts = {v: int(m.sum()) for v, m in masks.items()}
    assert counts[90] < counts[190] / 100  # empty cluster: no tile drawn (a few anti-aliased text pixels)
    # Pixel areas follow the number of images drawn per row: 5, 10 (capped from 12), 2.
    assert counts[40] > 0 and counts[140] > 0 and counts[190] > 0
    assert counts[140] / counts[40] == pytest.approx(10 / 5, rel=0.2)
    assert counts[40] / counts[190] == pytest.approx(5 / 2, rel=0.2)
    # Rows run top to bottom in cluster-id order.
    rows_y = [np.nonzero(masks[v])[0].mean() for v in (40, 140, 190)]
    assert rows_y == sorted(rows_y)


def test_plot_gallery_caps_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    clusters = rng.integers(0, 150, size=600)
    images = rng.integers(0, 256, size=(600, 3, 32, 32), dtype=np.uint8)
    path = tmp_path / "gallery.png"
    plot_gallery(path, images, clusters, per_cluster=10)
    _check_png(path)


def test_plot_gallery_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        plot_gallery(tmp_path / "g.png", np.zeros((2, 1, 8, 8), np.float32), np.array([0, 1]))
    with pytest.raises(ValueError, match="C 1 or 3"):
        plot_gallery(tmp_path / "g.png", np.zeros((2, 2, 8, 8), np.uint8), np.array([0, 1]))
    with pytest.raises(ValueError, match="cluster ids"):
        plot_gallery(tmp_path / "g.png", np.zeros((2, 1, 8, 8), np.uint8), np.array([0, 1, 1]))
