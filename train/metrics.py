"""Clustering metrics: ACC (Hungarian matching), NMI and ARI.

All functions take integer arrays of ground-truth class labels and predicted cluster ids, shape (N,).
Ids may be any non-negative integers (not necessarily contiguous); they are mapped with np.unique.
"""

from __future__ import annotations

import numpy as np

# scipy and scikit-learn are imported where used: `python -m train --help` must not pay for them.


def _check(labels: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).reshape(-1)
    clusters = np.asarray(clusters).reshape(-1)
    if labels.shape != clusters.shape:
        raise ValueError(f"labels and clusters differ in length: {labels.size} != {clusters.size}")
    if labels.size == 0:
        raise ValueError("labels and clusters are empty")
    for name, a in (("labels", labels), ("clusters", clusters)):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must be integers, got dtype {a.dtype}")
        if a.min() < 0:
            raise ValueError(f"{name} must be non-negative, got minimum {a.min()}")
    return labels, clusters


def contingency(labels: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count table of clusters against classes.

    Returns (table, cluster_ids, class_ids): table (num_clusters, num_classes) int64 where
    table[i, j] is the number of samples in cluster cluster_ids[i] with label class_ids[j];
    cluster_ids and class_ids are the sorted distinct ids present in the input.
    """
    labels, clusters = _check(labels, clusters)
    class_ids, class_idx = np.unique(labels, return_inverse=True)
    cluster_ids, cluster_idx = np.unique(clusters, return_inverse=True)
    table = np.zeros((cluster_ids.size, class_ids.size), dtype=np.int64)
    np.add.at(table, (cluster_idx, class_idx), 1)
    return table, cluster_ids, class_ids


def hungarian_match(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one cluster -> class matching that maximises matched counts.

    table: (num_clusters, num_classes) contingency table. Returns (rows, cols) as from
    scipy.optimize.linear_sum_assignment: cluster row rows[k] is matched to class column cols[k];
    min(num_clusters, num_classes) pairs, rows sorted ascending.
    """
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(table, maximize=True)


def cluster_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Clustering accuracy under the best one-to-one cluster/class matching (Hungarian).

    With more clusters than classes, unmatched clusters count as wrong; with fewer, unmatched
    classes do.
    """
    table, _, _ = contingency(labels, clusters)
    rows, cols = hungarian_match(table)
    return float(table[rows, cols].sum() / table.sum())


def nmi(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Normalized mutual information, arithmetic-mean normalisation: 2 I(U; V) / (H(U) + H(V))."""
    labels, clusters = _check(labels, clusters)
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(labels, clusters, average_method="arithmetic"))


def ari(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Adjusted Rand index."""
    labels, clusters = _check(labels, clusters)
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(labels, clusters))


def clustering_metrics(labels: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    """All three metrics: {"nmi", "acc", "ari"}."""
    return {
        "nmi": nmi(labels, clusters),
        "acc": cluster_accuracy(labels, clusters),
        "ari": ari(labels, clusters),
    }
