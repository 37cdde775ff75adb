"""train.cluster_stats: the OOD reference follows the data's shape and is calibrated on images it was not fit to."""

from __future__ import annotations

import numpy as np

from contract.card import nearest_centroid_distance
from train.cluster_stats import OOD_POINTS_PER_PROTOTYPE, OOD_PROTOTYPES, cluster_stats


def ring(count: int, seed: int) -> np.ndarray:
    """Unit vectors on the circle at height 0.5 around (0, 0, 1): one cluster that is no ball around its centroid."""
    angle = np.random.default_rng(seed).uniform(0, 2 * np.pi, count)
    radius = np.sqrt(0.75)
    return np.stack([radius * np.cos(angle), radius * np.sin(angle), np.full(count, 0.5)], 1).astype(np.float32)


def one_cluster_stats(embedding: np.ndarray):
    return cluster_stats(embedding, np.ones((len(embedding), 1), np.float32), np.zeros(len(embedding), np.int64))


def test_the_centre_of_a_ring_is_out_of_distribution_though_it_is_the_clusters_centroid():
    stats = one_cluster_stats(ring(2000, seed=0))
    centre = np.array([[0, 0, 1]], np.float32)
    np.testing.assert_allclose(stats.centroids(), centre, atol=0.02)  # the old reference: distance ~0
    assert nearest_centroid_distance(centre, stats.centroids())[0] < 1e-3
    reference = stats.ood_reference()
    assert reference.shape == (OOD_PROTOTYPES, 3)
    distance = nearest_centroid_distance(centre, reference)
    assert distance[0] > 0.45  # cos 60 degrees away from every image
    assert stats.ood.flag(distance)[0] and stats.ood.score(distance)[0] == 1.0


def test_new_images_from_the_training_distribution_are_flagged_at_the_calibrated_rate():
    stats = one_cluster_stats(ring(2000, seed=0))
    fresh = ring(20_000, seed=1)
    flagged = stats.ood.flag(nearest_centroid_distance(fresh, stats.ood_reference())).mean()
    assert 0.002 < flagged < 0.025, flagged  # the 99th percentile of held-out images: about 1%


def test_a_tiny_training_set_falls_back_to_the_centroids():
    embedding = ring(2 * OOD_POINTS_PER_PROTOTYPE - 1, seed=0)
    stats = one_cluster_stats(embedding)
    assert stats.ood_prototypes is None
    np.testing.assert_array_equal(stats.ood_reference(), stats.centroids())
    assert stats.ood.threshold == np.percentile(nearest_centroid_distance(embedding, stats.centroids()), 99)
