"""train.levels: the merges are the exact average linkage of the images' cosine distance, the silhouettes
are sklearn's, the suggestion finds the number of blobs, CoHiClust's merges follow its tree, and a finished
run writes and prints it all."""

from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import linkage as scipy_linkage
from sklearn.metrics import normalized_mutual_info_score, silhouette_score

from contract.levels import KNEE, SILHOUETTE, ClusterLevels
from contract.names import CLUSTER_LEVELS_FILE, LEVELS_PLOT_FILE
from tests.support.runs import tiny_config
from train.levels import TAIL_SHARE, agglomerate, cluster_levels, group_means, knee, silhouettes
from train.methods.cohiclust import CoHiClust


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def blobs(groups: int, per_group: int, dim: int = 8, spread: float = 0.15, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised points around `groups` random directions, and their group."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(groups, dim)))
    truth = np.repeat(np.arange(groups), per_group)
    return unit(centres[truth] + spread * rng.normal(size=(len(truth), dim))), truth


def nested_blobs(groups: int, pieces: int, per_piece: int, dim: int = 32, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points in `groups` unrelated directions, each group made of `pieces` tight pieces whose directions are
    alike (the shape of an over-clustered contrastive embedding: a digit written in a few styles); the points,
    their group and their piece (group * pieces + i)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(groups, dim)))
    piece_centres = unit((centres[:, None, :] + 0.12 * rng.normal(size=(groups, pieces, dim))).reshape(-1, dim))
    piece = np.repeat(np.arange(groups * pieces), per_piece)
    return unit(piece_centres[piece] + 0.03 * rng.normal(size=(len(piece), dim))), piece // pieces, piece


def one_hot(cluster: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k, dtype=np.float32)[cluster]


def slow_average_linkage(x: np.ndarray, cluster: np.ndarray, k: int) -> list[tuple[frozenset, float]]:
    """The reference: merge the two groups with the smallest mean cosine distance over all their image pairs."""
    groups = [frozenset([c]) for c in range(k)]
    merges = []
    while len(groups) > 1:
        def mean_distance(a, b):
            xa, xb = x[np.isin(cluster, list(a))], x[np.isin(cluster, list(b))]
            return float((1 - xa @ xb.T).mean())
        a, b = min(itertools.combinations(groups, 2), key=lambda p: mean_distance(*p))
        merges.append((a | b, mean_distance(a, b)))
        groups = [g for g in groups if g not in (a, b)] + [a | b]
    return merges


def test_single_image_clusters_give_scipys_average_cosine_linkage():
    x, _ = blobs(4, 4, seed=1)
    ours = agglomerate(x, np.ones(len(x)))
    np.testing.assert_allclose(ours, scipy_linkage(x, method="average", metric="cosine"), atol=1e-12)


def test_clusters_of_many_images_merge_by_the_mean_distance_of_all_their_image_pairs():
    x, _ = blobs(3, 20, seed=2)
    cluster = np.random.default_rng(0).integers(0, 7, len(x))
    means, weights = group_means(x, one_hot(cluster, 7), cluster)
    ours = agglomerate(means, weights)
    members = [frozenset([c]) for c in range(7)]
    for row, (group, height) in zip(ours, slow_average_linkage(x, cluster, 7), strict=True):
        members.append(members[int(row[0])] | members[int(row[1])])
        assert members[-1] == group and row[2] == pytest.approx(height, abs=1e-9)


def test_silhouettes_at_every_level_are_sklearns():
    x, _ = blobs(3, 30, seed=3)
    cluster = np.random.default_rng(1).integers(0, 6, len(x))
    cluster[0] = 5  # cluster 5 has a single image: its silhouette is 0, as sklearn's
    cluster[cluster == 5] = 4
    cluster[0] = 5
    means, weights = group_means(x, one_hot(cluster, 6), cluster)
    rows = agglomerate(means, weights)
    levels = ClusterLevels(6, tuple((int(a), int(b), float(h), int(n)) for a, b, h, n in rows), "test")
    ours = silhouettes(x, cluster, rows, 6)
    assert ours[0] is None
    for k in range(2, 7):
        assert ours[k - 1] == pytest.approx(silhouette_score(x, levels.assignment(k)[cluster], metric="cosine"))


def test_over_clustered_blobs_suggest_their_number_and_merge_back_into_them():
    x, truth = blobs(5, 60, seed=4)
    # 15 head clusters: each blob cut in three along a random direction
    side = (x @ unit(np.random.default_rng(5).normal(size=(8, 1)))).ravel()
    cut = np.zeros(len(x), np.int64)
    for g in range(5):
        members = truth == g
        cut[members] = np.digitize(side[members], np.quantile(side[members], [1 / 3, 2 / 3]))
    cluster = truth * 3 + cut
    levels = cluster_levels(x, one_hot(cluster, 15), cluster, seed=0)
    assert levels.suggested == 5 and levels.suggested_by == KNEE
    assert normalized_mutual_info_score(truth, levels.assignment(5)[cluster]) == 1.0
    gaps = {s.k: s.gap for s in levels.scores}
    assert max(gaps, key=lambda k: gaps[k] or 0) == 5  # the biggest relative jump in height ends level 5 as well


def test_over_clustered_groups_of_tight_pieces_suggest_the_groups_where_the_silhouette_keeps_the_pieces():
    x, group, piece = nested_blobs(5, 3, 40)
    levels = cluster_levels(x, one_hot(piece, 15), piece, seed=0)
    best = max((s for s in levels.scores if s.silhouette is not None), key=lambda s: s.silhouette)
    assert best.k == 15  # the pieces are tighter than the groups: the best silhouette would answer with them
    assert (levels.suggested, levels.suggested_by) == (5, KNEE)
    assert normalized_mutual_info_score(group, levels.assignment(5)[piece]) == 1.0
    assert levels.summary().startswith("5 (where the merge heights bend; silhouette ")
    assert levels.summary().endswith(f"; best {best.silhouette:.2f} at 15)")


def test_a_model_trained_at_about_the_right_number_has_no_knee_and_the_silhouette_decides():
    for groups, seed in [(5, 4), (10, 5), (4, 6)]:
        x, truth = blobs(groups, 50, dim=16, seed=seed)
        levels = cluster_levels(x, one_hot(truth, groups), truth, seed=0)
        assert (levels.suggested, levels.suggested_by) == (groups, SILHOUETTE)


def test_the_knee_is_the_l_method_split_and_counts_only_over_a_tail():
    # merges ending levels 2..12 (a linkage lists them the other way round): 4 high ones, then a falling tail
    ends = np.array([1.08, 1.06, 1.05, 1.03, 0.45, 0.40, 0.33, 0.25, 0.20, 0.12, 0.05])
    assert knee(ends[::-1]) == 5
    # the same bend over a tail that is not low enough (its mean above TAIL_SHARE x the lowest merge above): none
    shallow = np.concatenate([ends[:4], np.linspace(0.80, 0.72, 7)])
    assert shallow[4:].mean() > TAIL_SHARE * shallow[:4].min()
    assert knee(shallow[::-1]) is None
    assert knee(np.linspace(1.1, 1.0, 9)) is None  # straight: every group as far apart as the next
    assert knee(np.array([0.05, 0.1, 0.15, 1.0, 1.1])) is None  # too few levels for two lines of three
    # one low merge at the bottom is no tail: a line through it and one more would fit any two points exactly
    assert knee(np.array([0.39, 1.01, 1.06, 1.06, 1.06, 1.07, 1.08, 1.08, 1.09])) is None


def test_a_cluster_without_images_joins_the_group_its_probability_points_to():
    x, truth = blobs(2, 40, seed=6)
    cluster = truth.copy()  # head clusters 0 and 1 hold the blobs; 2 is empty
    probabilities = np.zeros((len(x), 3), np.float32)
    probabilities[np.arange(len(x)), cluster] = 0.9
    probabilities[:, 2] = np.where(truth == 1, 0.1, 0.0)  # its little mass sits on blob 1
    probabilities[truth == 0, 0] = 1.0
    levels = cluster_levels(x, probabilities, cluster)
    assert levels.members(2) == {0: [0], 1: [1, 2]}
    assert levels.linkage[0][:2] == (1, 2)


def test_a_tree_decides_which_clusters_merge_even_where_the_embeddings_disagree():
    x, truth = blobs(4, 30, seed=7)
    tree = [frozenset({0, 3}), frozenset({1, 2}), frozenset({0, 1, 2, 3})]  # pairs the embeddings do not make
    free = cluster_levels(x, one_hot(truth, 4), truth)
    forced = cluster_levels(x, one_hot(truth, 4), truth, tree=tree)
    assert free.members(2) not in ({0: [0, 3], 1: [1, 2]},)
    assert forced.members(2) == {0: [0, 3], 1: [1, 2]}
    assert forced.criterion != free.criterion
    heights = forced.heights()
    assert (np.diff(heights) >= 0).all()


def test_cohiclusts_tree_is_the_branching_nodes_of_its_surviving_leaves(tmp_path):
    cfg = tiny_config("cohiclust", tmp_path, depth=3, prune=3, num_clusters=5)
    model = CoHiClust(cfg, in_channels=1, num_clusters=5)
    # leaves 0..7 of depth 3; keep 0, 1, 2, 4, 6: heap 7, 8, 9, 11, 13 -> clusters 0..4
    model.leaf_mask.copy_(torch.tensor([True, True, True, False, True, False, True, False]))
    tree = model.cluster_tree()
    # deepest first: heap node 3 (leaves 0, 1); node 1 (leaves 0-2) and node 2 (leaves 4, 6, whose parents 5 and
    # 6 have one surviving child each, as has leaf 2's parent 4); the root
    assert tree == [frozenset({0, 1}), frozenset({0, 1, 2}), frozenset({3, 4}), frozenset({0, 1, 2, 3, 4})]
    x, truth = blobs(5, 20, seed=8)
    levels = cluster_levels(x, one_hot(truth, 5), truth, tree=tree)
    for k in range(1, 6):
        for members in levels.members(k).values():
            assert len(members) == 1 or frozenset(members) in tree


def test_a_finished_run_writes_its_levels_and_prints_the_suggestion(tiny_run, tmp_path, capsys):
    from train.trainer import train

    run = shutil.copytree(tiny_run("cc"), tmp_path / "run")
    (run / CLUSTER_LEVELS_FILE).unlink()
    train(tiny_config("cc", run))  # finished: evaluated and its artefacts written again
    levels = ClusterLevels.read(run / CLUSTER_LEVELS_FILE)
    out = capsys.readouterr().out
    assert f"suggested clusters: {levels.summary()} of the {levels.num_clusters} trained" in out
    assert levels.num_clusters == 10 and levels.sample == 1797 and 2 <= levels.suggested <= 10
    assert (run / LEVELS_PLOT_FILE).stat().st_size > 10_000
