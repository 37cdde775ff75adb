"""How the K clusters of a finished run merge into fewer, and how many clusters to suggest.

    levels = cluster_levels(embedding, probabilities, cluster, tree=model.cluster_tree(), seed=cfg.seed)
    levels.write(run_dir / CLUSTER_LEVELS_FILE)                      # contract.levels.ClusterLevels

Merges: average linkage of the cosine distance between the training images of two groups,
d(A, B) = mean over a in A, b in B of (1 - x_a . x_b) = 1 - m_A . m_B, m being a group's mean
L2-normalised embedding (unnormalised), so the exact image-level average linkage runs on K means and a
merged group's mean is its members' size-weighted mean. It is monotone (no merge lower than one before
it). A cluster without training images counts with its probability mass and the probability-weighted
mean of the embeddings, so it joins the group its probability points to. Measured on digits against a
criterion on the head's co-assignment probabilities (bench/choose_k.py; docs/clusters.md has the figures):
as good on the runs measured, and it still sees which clusters lie close when the head is confident.
With a learned tree (CoHiClust, `ClusteringMethod.cluster_tree`) only the tree's sibling groups may
merge, the nearest pair of them first; heights are then kept non-decreasing (the running maximum).

Suggested k: where the merge heights bend, if they do; else the best silhouette. The heights of the
merges that end levels 2..K form a curve with a knee when K over-clusters: a few high merges join groups
that have nothing in common, a long tail of low ones joins the pieces a group was cut into. The knee is
the L-method's (Salvador & Chan, ICTAI 2004: the level that splits the curve into the two least-squares
lines of least total error, each error weighted by its share of the points, each line on at least
MIN_LINE_POINTS levels), and it counts when the merges below it average less than TAIL_SHARE of the
lowest merge it keeps apart. Without such a tail (K about right) the level with the best mean cosine
silhouette wins (the smaller on a tie): measured on a seeded sample of at most SILHOUETTE_SAMPLE training
embeddings labelled with their merged cluster. The silhouette
alone would keep the pieces: over-clustered CC on digits has real sub-styles of digits in its embedding
(silhouette 0.67 at 17 clusters, 0.57-0.60 at 10) that the knee sees as the tail. Each level also records
the merge-height gap: how many times higher the merge that ends it is than the one that made it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from contract.levels import KNEE, SILHOUETTE, ClusterLevels, LevelScore, best_silhouette

SILHOUETTE_SAMPLE = 2000
"""Images the silhouettes are measured on (a seeded random sample; all of them below this)."""
MAX_CLUSTERS = 1000
"""Above this many clusters no hierarchy is computed (the merges cost K^3)."""
MIN_LINE_POINTS = 3
"""Levels on each of the L-method's two lines at least (a line through two fits them exactly, whatever they are)."""
TAIL_SHARE = 2 / 3
"""A knee of the merge heights counts when the merges below it average less than this share of the lowest above."""
CRITERION = "average linkage of the training embeddings' cosine distance"
TREE_CRITERION = "the method's learned tree, nearest sibling groups first"

Distance = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(G, D) group vectors, (D,) one group's vector -> (G,) distances."""


def cosine_to_means(means: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Average cosine distance of two groups from their mean embeddings: 1 - m_A . m_B."""
    return 1.0 - means @ mean


def agglomerate(vectors: np.ndarray, weights: np.ndarray, distance: Distance = cosine_to_means,
                tree: Sequence[frozenset[int]] | None = None) -> np.ndarray:
    """Merge K groups pairwise, the nearest allowed pair first -> (K-1, 4) scipy linkage.

    vectors (K, D): one per head cluster; a merged group's vector is its members' weighted mean
    (weights (K,) > 0). tree: the groups of head clusters that may form (each the union of two smaller
    ones, K-1 of them); None: any pair may merge."""
    k = len(vectors)
    slots = 2 * k - 1
    vec = np.zeros((slots, vectors.shape[1]), np.float64)
    vec[:k] = vectors
    weight = np.zeros(slots, np.float64)
    weight[:k] = weights
    members: list[frozenset[int]] = [frozenset([c]) for c in range(k)] + [frozenset()] * (k - 1)
    allowed = None if tree is None else set(tree)
    dist = np.full((slots, slots), np.inf)

    def fill(i: int, active: list[int]) -> None:
        others = [j for j in active if j != i and (allowed is None or members[i] | members[j] in allowed)]
        if others:
            dist[i, others] = dist[others, i] = distance(vec[others], vec[i])

    active = list(range(k))
    for i in active:
        fill(i, active)
    rows, height = [], 0.0
    for new in range(k, slots):
        flat = int(np.argmin(dist))
        a, b = divmod(flat, slots)
        if not np.isfinite(dist[a, b]):
            raise ValueError("the tree leaves groups that cannot merge: it is not a binary tree over the clusters")
        height = max(height, float(dist[a, b]))
        a, b = min(a, b), max(a, b)
        weight[new] = weight[a] + weight[b]
        vec[new] = (weight[a] * vec[a] + weight[b] * vec[b]) / weight[new]
        members[new] = members[a] | members[b]
        rows.append((a, b, height, len(members[new])))
        dist[[a, b], :] = np.inf
        dist[:, [a, b]] = np.inf
        active = [j for j in active if j not in (a, b)] + [new]
        fill(new, active)
    return np.array(rows, np.float64).reshape(-1, 4)


def group_means(embedding: np.ndarray, probabilities: np.ndarray, cluster: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(K, D) mean embedding per head cluster and (K,) its weight: its image count, or for a cluster
    without images its probability mass and probability-weighted mean."""
    k = probabilities.shape[1]
    x = embedding.astype(np.float64)
    count = np.bincount(cluster, minlength=k).astype(np.float64)
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, cluster, x)
    mass = probabilities.sum(0).astype(np.float64)
    soft = probabilities.T.astype(np.float64) @ x
    empty = count == 0
    sums[empty], count[empty] = soft[empty], np.maximum(mass[empty], 1e-12)
    return sums / count[:, None], count


def silhouettes(embedding: np.ndarray, cluster: np.ndarray, linkage: np.ndarray, num_clusters: int
                ) -> list[float | None]:
    """Mean cosine silhouette at every level: [level 1, ..., level K] (None where fewer than two groups hold
    points). embedding (n, D) L2-normalised, cluster (n,) their head clusters."""
    x = embedding.astype(np.float64)
    dist = np.clip(1.0 - x @ x.T, 0.0, None)
    np.fill_diagonal(dist, 0.0)
    slots = 2 * num_clusters - 1
    sums = np.zeros((len(x), slots))  # per point: summed distance to each group's points
    sums[:, :num_clusters] = dist @ np.eye(num_clusters)[cluster]
    count = np.zeros(slots)
    count[:num_clusters] = np.bincount(cluster, minlength=num_clusters)
    group = cluster.copy()
    active = list(range(num_clusters))
    out: list[float | None] = [None] * (num_clusters + 1)
    out[num_clusters] = _silhouette(sums, count, group, active)
    for i, (a, b) in enumerate(linkage[:, :2].astype(np.int64).tolist()):
        new = num_clusters + i
        sums[:, new], count[new] = sums[:, a] + sums[:, b], count[a] + count[b]
        group[(group == a) | (group == b)] = new
        active = [j for j in active if j not in (a, b)] + [new]
        out[num_clusters - i - 1] = _silhouette(sums, count, group, active)
    return out[1:]


def _silhouette(sums: np.ndarray, count: np.ndarray, group: np.ndarray, active: list[int]) -> float | None:
    held = [g for g in active if count[g] > 0]
    if len(held) < 2:
        return None
    rows = np.arange(len(group))
    own = count[group]
    inner = np.where(own > 1, sums[rows, group] / np.maximum(own - 1, 1), 0.0)
    mean = sums[:, held] / count[held]
    mean[group[:, None] == np.array(held)[None, :]] = np.inf
    outer = mean.min(1)
    s = np.where(own > 1, (outer - inner) / np.maximum(np.maximum(outer, inner), 1e-12), 0.0)
    return float(s.mean())


def height_gaps(linkage: np.ndarray, num_clusters: int) -> list[float | None]:
    """[level 1, ..., level K]: how many times higher the merge that ends level k is than the merge that made
    it (None for level 1, level K and a merge at height 0)."""
    heights = linkage[:, 2]
    out: list[float | None] = [None] * (num_clusters + 1)
    for k in range(2, num_clusters):
        ends, made = heights[num_clusters - k], heights[num_clusters - k - 1]
        out[k] = float(ends / made) if made > 0 else None
    return out[1:]


def knee(heights: np.ndarray) -> int | None:
    """heights (K-1,) of the merges in row order -> the level where their curve bends (the L-method), or None
    where it has no knee or the merges below the knee are not a tail (mean >= TAIL_SHARE x the lowest above)."""
    curve = np.asarray(heights, np.float64)[::-1]  # the height of the merge that ends level 2, 3, ..., K
    points = len(curve)
    if points < 2 * MIN_LINE_POINTS:
        return None
    levels = np.arange(2, points + 2, dtype=np.float64)

    def line_error(x: np.ndarray, y: np.ndarray) -> float:
        design = np.stack([x, np.ones_like(x)], 1)
        coef = np.linalg.lstsq(design, y, rcond=None)[0]
        return float(np.sqrt(np.mean((design @ coef - y) ** 2)))

    def total_error(c: int) -> float:  # c points on the left line (levels 2..c+1), the rest on the right one
        return (c * line_error(levels[:c], curve[:c]) + (points - c) * line_error(levels[c:], curve[c:])) / points

    c = min(range(MIN_LINE_POINTS, points - MIN_LINE_POINTS + 1), key=total_error)
    return int(levels[c - 1]) if curve[c:].mean() < TAIL_SHARE * curve[:c].min() else None


def cluster_levels(embedding: np.ndarray, probabilities: np.ndarray, cluster: np.ndarray,
                   tree: Sequence[frozenset[int]] | None = None, seed: int = 0) -> ClusterLevels | None:
    """embedding (N, D) L2-normalised, probabilities (N, K), cluster (N,) of the training images -> the merge
    hierarchy and the scores per level; None above MAX_CLUSTERS clusters."""
    k = probabilities.shape[1]
    if k > MAX_CLUSTERS:
        return None
    cluster = np.asarray(cluster, np.int64)
    means, weights = group_means(embedding, probabilities, cluster)
    linkage = agglomerate(means, weights, tree=tree)
    sample = np.sort(np.random.default_rng(seed).permutation(len(cluster))[:SILHOUETTE_SAMPLE])
    silhouette = silhouettes(embedding[sample], cluster[sample], linkage, k)
    gaps = height_gaps(linkage, k)
    scores = tuple(LevelScore(level, silhouette[level - 1], gaps[level - 1]) for level in range(1, k + 1))
    bend = knee(linkage[:, 2])
    if bend is not None:
        suggested, suggested_by = bend, KNEE
    else:
        best = best_silhouette(scores)
        suggested, suggested_by = (None if best is None else best.k), SILHOUETTE
    rows = tuple((int(a), int(b), float(h), int(n)) for a, b, h, n in linkage)
    return ClusterLevels(k, rows, TREE_CRITERION if tree is not None else CRITERION, scores, suggested, len(sample),
                         suggested_by)
