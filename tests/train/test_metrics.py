"""Clustering metrics against hand-computed cases and slow references from the formulas."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from train.metrics import ari, cluster_accuracy, clustering_metrics, contingency, nmi


def _entropy(counts: list[int], n: int) -> float:
    return -sum(c / n * math.log(c / n) for c in counts if c)


def _nmi_reference(labels: list[int], clusters: list[int]) -> float:
    """NMI = 2 I(U; V) / (H(U) + H(V)) from plain counts."""
    n = len(labels)
    pu, pv, puv = Counter(labels), Counter(clusters), Counter(zip(labels, clusters, strict=True))
    mi = sum(c / n * math.log(c * n / (pu[u] * pv[v])) for (u, v), c in puv.items())
    return 2 * mi / (_entropy(list(pu.values()), n) + _entropy(list(pv.values()), n))


def _ari_reference(labels: list[int], clusters: list[int]) -> float:
    """Hubert & Arabie's adjusted Rand index from pair counts."""
    n = len(labels)
    pairs = sum(math.comb(c, 2) for c in Counter(zip(labels, clusters, strict=True)).values())
    a = sum(math.comb(c, 2) for c in Counter(labels).values())
    b = sum(math.comb(c, 2) for c in Counter(clusters).values())
    expected = a * b / math.comb(n, 2)
    return (pairs - expected) / ((a + b) / 2 - expected)


def test_perfect_clustering_with_permuted_ids() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    clusters = np.array([2, 2, 0, 0, 1, 1])
    assert clustering_metrics(labels, clusters) == pytest.approx({"nmi": 1.0, "acc": 1.0, "ari": 1.0})


def test_six_samples_hand_computed() -> None:
    # cluster 0 holds classes (0, 0, 1), cluster 1 holds (0, 1, 1): best matching keeps 2 + 2.
    labels = np.array([0, 0, 0, 1, 1, 1])
    clusters = np.array([0, 0, 1, 1, 1, 0])
    assert cluster_accuracy(labels, clusters) == pytest.approx(4 / 6)


def test_accuracy_is_optimal_not_greedy() -> None:
    # table [[3, 2], [2, 0]]: greedy takes the 3 and then 0 (3/7); the optimum is 2 + 2 (4/7).
    labels = np.array([0, 0, 0, 1, 1, 0, 0])
    clusters = np.array([0, 0, 0, 0, 0, 1, 1])
    assert cluster_accuracy(labels, clusters) == pytest.approx(4 / 7)


def test_more_clusters_than_classes() -> None:
    # class 0 split over clusters 0 and 1; only one of them can be matched (many-to-one would give 1).
    labels = np.array([0, 0, 0, 0, 1, 1])
    clusters = np.array([0, 0, 1, 1, 2, 2])
    table, _, _ = contingency(labels, clusters)
    assert table.shape == (3, 2)
    assert cluster_accuracy(labels, clusters) == pytest.approx(4 / 6)


def test_fewer_clusters_than_classes() -> None:
    # cluster 0 holds classes 0 and 1, cluster 1 holds class 2: 2 + 2 of 6 are matched.
    labels = np.array([0, 0, 1, 1, 2, 2])
    clusters = np.array([0, 0, 0, 0, 1, 1])
    table, _, _ = contingency(labels, clusters)
    assert table.shape == (2, 3)
    assert cluster_accuracy(labels, clusters) == pytest.approx(4 / 6)


def test_non_contiguous_ids() -> None:
    labels = np.array([10, 10, 20, 20, 20])
    clusters = np.array([7, 7, 7, 3, 3])
    table, cluster_ids, class_ids = contingency(labels, clusters)
    np.testing.assert_array_equal(cluster_ids, [3, 7])
    np.testing.assert_array_equal(class_ids, [10, 20])
    np.testing.assert_array_equal(table, [[0, 2], [2, 1]])
    assert table.dtype == np.int64
    assert cluster_accuracy(labels, clusters) == pytest.approx(4 / 5)
    # Same partition with contiguous ids gives the same metrics.
    dense = clustering_metrics(np.array([0, 0, 1, 1, 1]), np.array([1, 1, 1, 0, 0]))
    assert clustering_metrics(labels, clusters) == pytest.approx(dense)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nmi_and_ari_match_references(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size=200)
    clusters = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 7, size=200))
    assert nmi(labels, clusters) == pytest.approx(_nmi_reference(labels.tolist(), clusters.tolist()))
    assert ari(labels, clusters) == pytest.approx(_ari_reference(labels.tolist(), clusters.tolist()))
    assert 0.0 < nmi(labels, clusters) < 1.0


def test_metric_types() -> None:
    out = clustering_metrics(np.array([0, 1, 1]), np.array([1, 0, 0]))
    assert set(out) == {"nmi", "acc", "ari"}
    assert all(type(v) is float for v in out.values())


@pytest.mark.parametrize("fn", [cluster_accuracy, nmi, ari, clustering_metrics, contingency])
def test_bad_inputs_raise(fn) -> None:
    with pytest.raises(ValueError, match="length"):
        fn(np.array([0, 1, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="empty"):
        fn(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="non-negative"):
        fn(np.array([0, -1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="integers"):
        fn(np.array([0.0, 1.0]), np.array([0, 1]))
