"""Spherical k-means: planted clusters, scikit-learn's objective, empty clusters, reproducibility, and the
shortcuts (Hamerly's bounds, restarts on a sample) giving what plain Lloyd iterations give."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

import train.kmeans as kmeans
from train.kmeans import _lloyd, assign, centroids_of, kmeans_plus_plus, spherical_inertia, spherical_kmeans


def sphere_blobs(n: int, k: int, dim: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(k, dim, generator=g), dim=1)
    labels = torch.arange(n) % k
    return F.normalize(centres[labels] + noise * torch.randn(n, dim, generator=g), dim=1), labels


def test_recovers_well_separated_clusters_exactly():
    x, y = sphere_blobs(1200, 12, 32, 0.05, seed=0)
    result = spherical_kmeans(x, 12, restarts=3, generator=torch.Generator().manual_seed(0))
    assert adjusted_rand_score(y.numpy(), result.labels.numpy()) == 1.0
    assert torch.allclose(result.centroids.norm(dim=1), torch.ones(12), atol=1e-5)
    assert result.inertia == pytest.approx(spherical_inertia(x, result.centroids, result.labels))


def test_objective_within_one_percent_of_scikit_learn():
    # Overlapping blobs, so the objective depends on the optimiser. Both partitions are scored with
    # the same spherical objective; scikit-learn's with the normalised means of its own clusters.
    x, _ = sphere_blobs(3000, 20, 16, 0.6, seed=1)
    ours = spherical_kmeans(x, 20, restarts=10, generator=torch.Generator().manual_seed(0))
    sk = KMeans(20, n_init=10, random_state=0).fit(x.numpy())
    sk_labels = torch.from_numpy(sk.labels_).long()
    sk_inertia = spherical_inertia(x, centroids_of(x, sk_labels, 20), sk_labels)
    assert ours.inertia <= 1.01 * sk_inertia


def test_more_clusters_than_distinct_points_no_nan():
    distinct = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    x = distinct.repeat(10, 1)
    result = spherical_kmeans(x, 5, restarts=2, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(result.centroids).all()
    assert result.inertia == pytest.approx(0.0, abs=1e-5)
    assert result.labels.unique().numel() == 3


def test_empty_cluster_is_reseeded_on_the_farthest_point():
    g = torch.Generator().manual_seed(2)
    pole = F.one_hot(torch.tensor(0), 8).float()
    x = F.normalize(pole + 0.3 * torch.randn(300, 8, generator=g), dim=1)   # a cap around the pole
    init = torch.stack([x[0], x[1], -pole])   # the third centroid, at the antipode, wins no point
    assert assign(x, init)[0].bincount(minlength=3)[2] == 0
    result = _lloyd(x, init, max_iter=100, tol=1e-6, chunk_size=64)
    assert torch.isfinite(result.centroids).all()
    assert result.labels.bincount(minlength=3).min() > 0


def test_reproducible_and_chunking_invariant():
    x, _ = sphere_blobs(500, 5, 8, 0.5, seed=3)
    a = spherical_kmeans(x, 5, restarts=2, generator=torch.Generator().manual_seed(7))
    b = spherical_kmeans(x, 5, restarts=2, generator=torch.Generator().manual_seed(7), chunk_size=37)
    assert torch.equal(a.labels, b.labels)
    assert torch.allclose(a.centroids, b.centroids, atol=1e-6)


def test_bad_arguments():
    x = torch.randn(10, 3)
    for kwargs in (dict(k=0), dict(k=11), dict(k=2, restarts=0), dict(k=2, max_iter=0), dict(k=2, tol=-1.0),
                   dict(k=2, sample_per_cluster=0), dict(k=2, init_per_cluster=0)):
        with pytest.raises(ValueError):
            spherical_kmeans(x, **kwargs)
    with pytest.raises(ValueError):
        spherical_kmeans(torch.randn(10), 2)


def test_assign_is_nearest_by_cosine():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    centroids = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels, sims = assign(x, centroids, chunk_size=2)
    assert labels.tolist() == [0, 1, 1]
    np.testing.assert_allclose(sims.numpy(), [1.0, 1.0, 0.8], atol=1e-6)


def plain_lloyd(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Reference: assign every point, recompute every mean, until no label changes."""
    labels, iterations = None, 0
    while True:
        iterations += 1
        new_labels, _ = assign(x, centroids)
        if labels is not None and torch.equal(new_labels, labels):
            return centroids, labels, iterations
        labels = new_labels
        centroids = centroids_of(x, labels, centroids.shape[0])


@pytest.mark.parametrize("bounds", [True, False])
def test_lloyd_with_or_without_bounds_gives_the_labels_of_plain_lloyd(monkeypatch, bounds):
    # overlapping blobs: many iterations, many points changing label, so the bounds are exercised
    x, _ = sphere_blobs(4000, 20, 16, 0.5, seed=4)
    init = kmeans_plus_plus(x, 20, torch.Generator().manual_seed(0))
    rows_compared = []
    nearest = kmeans._nearest
    monkeypatch.setattr(kmeans, "_nearest", lambda x, *a, **kw: rows_compared.append(len(x)) or nearest(x, *a, **kw))
    result = _lloyd(x, init, max_iter=300, tol=0.0, chunk_size=512, bounds=bounds)
    centroids, labels, iterations = plain_lloyd(x, init)
    assert iterations > 10
    assert torch.equal(result.labels, labels) and result.iterations == iterations
    torch.testing.assert_close(result.centroids, centroids, atol=1e-5, rtol=0)
    assert result.inertia == pytest.approx(spherical_inertia(x, centroids, labels), rel=1e-6)
    if bounds:  # late iterations compare a few points with the centroids
        assert min(rows_compared) < len(x) // 4
    else:
        assert set(rows_compared) == {len(x)}


def test_restarts_on_a_sample_then_refined_end_at_a_fixed_point_of_all_points():
    x, _ = sphere_blobs(6000, 6, 16, 0.4, seed=5)
    sampled = spherical_kmeans(x, 6, restarts=3, sample_per_cluster=40, generator=torch.Generator().manual_seed(0))
    full = spherical_kmeans(x, 6, restarts=3, sample_per_cluster=None, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled.labels, assign(x, sampled.centroids)[0])
    torch.testing.assert_close(centroids_of(x, sampled.labels, 6), sampled.centroids, atol=1e-5, rtol=0)
    assert sampled.inertia <= 1.001 * full.inertia


def test_scale_of_the_input_rows_does_not_matter():
    x, _ = sphere_blobs(600, 4, 8, 0.5, seed=6)
    unit = spherical_kmeans(x, 4, restarts=2, generator=torch.Generator().manual_seed(1))
    scaled = spherical_kmeans(x * torch.linspace(0.5, 3.0, 600)[:, None], 4, restarts=2,
                              generator=torch.Generator().manual_seed(1))
    assert torch.equal(unit.labels, scaled.labels)
    torch.testing.assert_close(unit.centroids, scaled.centroids, atol=1e-5, rtol=0)


def test_restart_seeds_make_each_restart_a_run_of_its_own_seed():
    """torch_clustering seeds restart i with random_state + i: the result does not depend on the generator's
    state, restart i alone is the run of seed i, and the restarts keep the best of those runs."""
    x, _ = sphere_blobs(900, 6, 8, 0.6, seed=7)
    full = dict(sample_per_cluster=None, init_per_cluster=None)
    alone = [spherical_kmeans(x, 6, restarts=1, generator=torch.Generator().manual_seed(s), **full) for s in (3, 4, 5)]
    assert len({round(r.inertia, 3) for r in alone}) > 1  # the seeds give different runs
    for generator_seed in (0, 99):
        seeded = spherical_kmeans(x, 6, restarts=3, restart_seeds=[3, 4, 5],
                                  generator=torch.Generator().manual_seed(generator_seed), **full)
        best = min(alone, key=lambda r: r.inertia)
        assert torch.equal(seeded.labels, best.labels) and seeded.inertia == best.inertia
    with pytest.raises(ValueError, match="restart_seeds"):
        spherical_kmeans(x, 6, restarts=2, restart_seeds=[0])


@pytest.mark.parametrize("preset, expected", [
    ("paper", dict(restarts=40, sample_per_cluster=None, init_per_cluster=None, restart_seeds=list(range(40)))),
    ("fast", dict(restarts=3, sample_per_cluster=kmeans.SAMPLE_PER_CLUSTER, init_per_cluster=kmeans.INIT_PER_CLUSTER,
                  restart_seeds=None)),
])
def test_propos_e_step_clusters_as_its_preset_says(preset, expected, monkeypatch, tmp_path):
    """The `paper` preset's E-step is torch_clustering's on the official 4 processes: 10 restarts each, seeds
    0-39, every restart on all points; `fast` keeps the restarts on a sample."""
    import train.methods.propos as propos
    from train.methods import make_config
    from train.methods.base import EpochContext

    cfg = make_config("propos", dataset="cifar10", preset=preset, backbone="smallcnn", hidden_dim=16, feature_dim=8)
    model = propos.ProPos(cfg, 3, 4)
    features, _ = sphere_blobs(64, 4, 8, 0.3, seed=8)
    calls = []
    monkeypatch.setattr(propos, "spherical_kmeans",
                        lambda x, k, **kwargs: calls.append(kwargs) or spherical_kmeans(x, k, **kwargs))
    ctx = EpochContext(0, 1, torch.zeros(64, 3, 8, 8, dtype=torch.uint8), torch.Generator(), lambda fn: features,
                       tmp_path)
    model.e_step(ctx)
    got = {k: (list(v) if k == "restart_seeds" and v is not None else v) for k, v in calls[0].items() if k in expected}
    assert got == expected
    assert model.pseudo_labels.shape == (64,)
