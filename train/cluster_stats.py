"""The final model's clusters on its whole training set: what the model card and the gateway's flags use.

    stats = cluster_stats(embedding, probabilities, cluster, labels, class_names)   # contract.card.ClusterStats

Computed by the trainer when a run finishes (export no longer has the data set): sizes, centroids
(L2-normalised mean embedding per cluster), the calibration of the low-confidence flag (probability
of the assigned cluster) and of the out-of-distribution score (cosine distance to the nearest OOD
prototype, `fit_ood_prototypes`), the most confident images per cluster, and with labels the Hungarian
cluster -> class mapping, each cluster's majority class and purity, and the contingency table.
"""

from __future__ import annotations

import numpy as np
import torch

from contract.card import (
    LOW_CONFIDENCE_QUANTILE,
    OOD_QUANTILE,
    Calibration,
    ClusterInfo,
    ClusterStats,
    nearest_centroid_distance,
)
from train.kmeans import spherical_kmeans
from train.metrics import hungarian_match

SAMPLES_PER_CLUSTER = 8
OOD_PROTOTYPES = 100
"""Centres of the OOD reference, at most (and at most one per OOD_POINTS_PER_PROTOTYPE fitted images).
Measured on the digits demo model (CC, 300 epochs): a uniform red or grey square was farther from the
nearest of 100 prototypes than 100% of held-out training images, but from the nearest of the 10 cluster
centroids than only 87%: a cluster is not one ball around its centroid."""
OOD_POINTS_PER_PROTOTYPE = 8
OOD_SAMPLE = 20_000
"""At most this many images fit the prototypes and as many others calibrate them (a random draw)."""


def fit_ood_prototypes(embedding: np.ndarray, centre: np.ndarray, seed: int = 0
                       ) -> tuple[np.ndarray | None, np.ndarray]:
    """embedding (N, D) L2-normalised, the cluster centroids (K, D) -> (prototypes (P, D), calibration
    distances (M,)).

    The prototypes are a spherical k-means of a random half of the images; the distances are those of
    the other half to their nearest prototype, so the calibration is measured on images the prototypes
    were not fit to (on the fitted half the distances run smaller, and the flag would fire too often).
    Under 2 * OOD_POINTS_PER_PROTOTYPE images: no prototypes (None: the centroids stand in) and the
    distances of all images to the centroids."""
    if len(embedding) < 2 * OOD_POINTS_PER_PROTOTYPE:
        return None, nearest_centroid_distance(embedding, centre)
    order = np.random.default_rng(seed).permutation(len(embedding))
    half = len(order) // 2
    fit, held_out = embedding[order[:half][:OOD_SAMPLE]], embedding[order[half:][:OOD_SAMPLE]]
    count = min(OOD_PROTOTYPES, len(fit) // OOD_POINTS_PER_PROTOTYPE)
    result = spherical_kmeans(torch.from_numpy(np.ascontiguousarray(fit, np.float32)), count, restarts=3,
                              generator=torch.Generator().manual_seed(seed))
    prototypes = result.centroids.numpy()
    return prototypes, nearest_centroid_distance(held_out, prototypes)


def centroids(embedding: np.ndarray, cluster: np.ndarray, num_clusters: int) -> np.ndarray:
    """embedding (N, D), cluster (N,) -> (K, D) L2-normalised member means; NaN rows for empty clusters."""
    out = np.full((num_clusters, embedding.shape[1]), np.nan, np.float32)
    for k in np.unique(cluster):
        mean = embedding[cluster == k].astype(np.float64).mean(0)
        out[k] = mean / max(np.linalg.norm(mean), 1e-12)
    return out


def most_confident(probabilities: np.ndarray, cluster: np.ndarray, count: int) -> list[tuple[int, ...]]:
    """Per cluster, the indices of its `count` images with the highest probability of that cluster."""
    chosen = probabilities[np.arange(len(cluster)), cluster]
    samples = []
    for k in range(probabilities.shape[1]):
        members = np.flatnonzero(cluster == k)
        samples.append(tuple(int(i) for i in members[np.argsort(-chosen[members], kind="stable")[:count]]))
    return samples


def class_mapping(labels: np.ndarray, cluster: np.ndarray, num_clusters: int, num_classes: int
                  ) -> tuple[np.ndarray, list[int | None]]:
    """(K, C) contingency counts and the Hungarian class index of each cluster (None: unmatched)."""
    table = np.zeros((num_clusters, num_classes), np.int64)
    np.add.at(table, (cluster, labels), 1)
    rows, cols = hungarian_match(table)
    mapping: list[int | None] = [None] * num_clusters
    for r, c in zip(rows, cols, strict=True):
        if table[r, c] > 0:
            mapping[r] = int(c)
    return table, mapping


def cluster_stats(embedding: np.ndarray, probabilities: np.ndarray, cluster: np.ndarray,
                  labels: np.ndarray | None = None, class_names: list[str] | None = None,
                  samples_per_cluster: int = SAMPLES_PER_CLUSTER) -> ClusterStats:
    """embedding (N, D) L2-normalised, probabilities (N, K), cluster (N,) int, labels (N,) int or None."""
    cluster = np.asarray(cluster, np.int64)
    num_clusters = probabilities.shape[1]
    centre = centroids(embedding, cluster, num_clusters)
    prototypes, distance = fit_ood_prototypes(embedding, centre)
    confidence = probabilities[np.arange(len(cluster)), cluster]
    sizes = np.bincount(cluster, minlength=num_clusters)
    samples = most_confident(probabilities, cluster, samples_per_cluster)
    table, mapping, names = None, [None] * num_clusters, None
    if labels is not None:
        labels = np.asarray(labels, np.int64)
        num_classes = max(len(class_names or []), int(labels.max()) + 1)
        names = list(class_names) if class_names else [str(c) for c in range(num_classes)]
        table, mapping = class_mapping(labels, cluster, num_clusters, num_classes)
    clusters = []
    for k in range(num_clusters):
        extra = {}
        if table is not None and sizes[k]:
            majority = int(table[k].argmax())
            extra = {"majority_class": names[majority], "purity": float(table[k, majority] / sizes[k]),
                     "mapped_class": None if mapping[k] is None else names[mapping[k]],
                     "mapped_share": None if mapping[k] is None else float(table[k, mapping[k]] / sizes[k])}
        clusters.append(ClusterInfo(k, int(sizes[k]), None if np.isnan(centre[k]).any() else
                                    tuple(float(v) for v in centre[k]), samples[k], **extra))
    return ClusterStats(
        num_images=int(len(cluster)), clusters=tuple(clusters),
        confidence=Calibration.measure(confidence, LOW_CONFIDENCE_QUANTILE, higher_is_unusual=False),
        ood=Calibration.measure(distance, OOD_QUANTILE, higher_is_unusual=True),
        class_names=None if names is None else tuple(names),
        contingency=None if table is None else tuple(tuple(int(v) for v in row) for row in table),
        ood_prototypes=None if prototypes is None else tuple(tuple(float(v) for v in row) for row in prototypes))
