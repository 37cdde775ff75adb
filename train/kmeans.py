"""Spherical k-means in torch: runs on whatever device the points are on, memory bounded by chunks.

Points and centroids are unit vectors; a point belongs to the centroid of highest cosine similarity,
a centroid is the L2-normalised mean of its points, and the objective ("spherical inertia") is
sum_i (1 - cos(x_i, c_{label_i})), half the squared Euclidean distance on the sphere.

- Restarts run on a random sample of at most `sample_per_cluster * k` points (faiss's
  max_points_per_centroid, 256); the restart of lowest inertia on that sample is then refined by
  Lloyd iterations on all points, from its centroids. With N <= sample_per_cluster * k, or
  sample_per_cluster None (torch_clustering's way, ProPos's `paper` preset), every restart sees all
  points and there is nothing to refine.
- `restart_seeds`: restart i draws its seeding from a generator of its own seeded restart_seeds[i],
  as torch_clustering seeds restart i with random_state + i, so every E-step repeats the same seeds.
- Initialisation: greedy k-means++ (as scikit-learn: each new centroid is the best of 2 + ln k
  candidates drawn with probability proportional to the current objective term), on a random
  subset of at most `init_per_cluster * k` points of the sample (as scikit-learn's MiniBatchKMeans
  init_size): seeding is k sequential passes over its points, Lloyd fixes what a subset misses.
- Lloyd iterations up to `max_iter`, stopping when no label changes (a fixed point: the centroids
  are the means of their own clusters) or when the summed squared centroid shift is at most `tol`.
  Each iteration is one pass over the points: a chunk's similarities (one matmul), its labels
  (argmax) and its contribution to the cluster sums (index_add_) while the chunk is in cache.
  With Hamerly's bounds (for passes of at least BOUNDS_MIN_WORK multiply-adds), an iteration
  compares with the centroids only the points whose bounds do not prove their label unchanged:
  late iterations touch a few points near the boundaries, with the labels of plain Lloyd.
- Rows that are unit vectors already are used as they are (no copy of a large input).
- A cluster left empty is re-seeded with the point farthest from its own centroid (then the next
  farthest, for several empty clusters), so every cluster ends non-empty when N >= k.
- Similarities are computed `chunk_size` points at a time: memory O(chunk_size * k), never N x N.
- Randomness only from the explicit `generator` (on the points' device): same generator state,
  same result, whatever the chunk size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

SAMPLE_PER_CLUSTER = 256
INIT_PER_CLUSTER = 64  # fewer seeds per cluster cost ~0.5% inertia at k = 100 (bench/kmeans.py data)
BOUND_MARGIN = 1e-4  # distance units; float32 cosines of unit vectors are off by ~1e-6
UNIT_TOLERANCE = 1e-6  # rows whose norm is this close to 1 are used as they are
BOUNDS_MIN_WORK = 2**24
"""Multiply-adds of one pass (N * k * D) below which Hamerly's bounds cost more than they save: their
bookkeeping is a few dozen small tensor operations per iteration, whatever N."""


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # (k, D) unit rows
    labels: torch.Tensor     # (N,) int64, the nearest centroid of each point
    inertia: float           # sum_i 1 - cos(x_i, centroids[labels[i]])
    iterations: int          # Lloyd iterations of the winning restart (sample, then all points)


def _nearest(x: torch.Tensor, centroids: torch.Tensor, chunk_size: int, second: bool = False,
             sums: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One pass over x (N, D): nearest centroid by cosine -> labels (N,), similarity (N,) and, with
    `second`, the similarity to the second nearest (N,) (-inf when k = 1).

    With `sums` (k, D), each chunk's points are also added to the sum of their cluster while the
    chunk is in cache, so a Lloyd iteration reads the points once."""
    n, k = x.shape[0], centroids.shape[0]
    labels = torch.empty(n, dtype=torch.long, device=x.device)
    sims = torch.empty(n, dtype=x.dtype, device=x.device)
    seconds = torch.empty(n, dtype=x.dtype, device=x.device) if second else None
    transposed = centroids.T.contiguous()
    buffer = torch.empty(min(chunk_size, n), k, dtype=x.dtype, device=x.device)
    for start in range(0, n, chunk_size):
        chunk = x[start:start + chunk_size]
        stop = start + chunk.shape[0]
        scores = torch.mm(chunk, transposed, out=buffer[:chunk.shape[0]])
        torch.max(scores, 1, out=(sims[start:stop], labels[start:stop]))
        if seconds is not None:  # mask the best in the scratch buffer: the max of the rest is the second
            scores.scatter_(1, labels[start:stop, None], -math.inf)
            torch.amax(scores, 1, out=seconds[start:stop])
        if sums is not None:
            sums.index_add_(0, labels[start:stop], chunk)
    return labels, sims, seconds


def assign(x: torch.Tensor, centroids: torch.Tensor, chunk_size: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid by cosine: x (N, D), centroids (k, D), both unit rows -> labels (N,), similarity (N,)."""
    labels, sims, _ = _nearest(x, centroids, chunk_size)
    return labels, sims


def centroids_of(x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """L2-normalised mean of each cluster: x (N, D), labels (N,) -> (k, D); an empty cluster gives a zero row."""
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    return F.normalize(sums, dim=1)


def spherical_inertia(x: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor) -> float:
    """sum_i 1 - cos(x_i, centroids[labels[i]]); x (N, D) and centroids (k, D) unit rows."""
    return float((1 - (x * centroids[labels]).sum(1)).sum())


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """x (N, D) as float32 unit rows; x itself when its rows already are (no copy of a large input)."""
    x = x.float()
    norms = torch.linalg.vector_norm(x, dim=1)
    if bool(((norms - 1).abs() <= UNIT_TOLERANCE).all()):
        return x
    return x / norms.clamp_(min=1e-12)[:, None]


def _inertia(sims: torch.Tensor) -> float:
    """sum_i 1 - sims_i, from each point's similarity to its own centroid (N,); summed in float64."""
    return float(sims.shape[0] - sims.double().sum())


def _sample(weights: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n indices drawn with probability proportional to the non-negative weights (N,), with replacement."""
    cdf = weights.double().cumsum(0)
    if cdf[-1] <= 0:  # every point already sits on a centroid: uniform
        return torch.randint(weights.shape[0], (n,), generator=generator, device=weights.device)
    r = torch.rand(n, generator=generator, device=weights.device, dtype=torch.float64) * cdf[-1]
    return torch.searchsorted(cdf, r).clamp_(max=weights.shape[0] - 1)


def _random_rows(x: torch.Tensor, m: int | None, generator: torch.Generator) -> torch.Tensor:
    """At most m rows of x (N, D) drawn without replacement (x itself when m is None or >= N)."""
    if m is None or m >= x.shape[0]:
        return x
    return x[torch.randperm(x.shape[0], generator=generator, device=x.device)[:m]]


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator, chunk_size: int = 8192) -> torch.Tensor:
    """Greedy k-means++ seeding on unit rows x (N, D) -> (k, D) initial centroids (rows of x)."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    first = torch.randint(n, (1,), generator=generator, device=x.device)
    centroids = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    centroids[0] = x[first]
    cost = (1 - x @ x[first].T).squeeze(1).clamp_(min=0)  # (N,) distance to the nearest centroid so far
    one = torch.ones((), dtype=x.dtype, device=x.device)
    cand_cost = torch.empty(n, trials, dtype=x.dtype, device=x.device)  # (N, T) cost if a candidate is added
    for i in range(1, k):
        candidates = x[_sample(cost, trials, generator)]                  # (T, D)
        for start in range(0, n, chunk_size):
            part = cand_cost[start:start + chunk_size]
            torch.addmm(one, x[start:start + chunk_size], candidates.T, alpha=-1, out=part)  # 1 - cos
        torch.minimum(cand_cost.clamp_(min=0), cost[:, None], out=cand_cost)
        best = cand_cost.sum(0).argmin()
        centroids[i] = candidates[best]
        cost = cand_cost[:, best].clone()
    return centroids


def _distance(sims: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between unit vectors from their cosine: sqrt(2 - 2 cos) (inf for cos = -inf)."""
    return (2 - 2 * sims).clamp_(min=0).sqrt_()


def _half_separation(centroids: torch.Tensor) -> torch.Tensor:
    """(k,) half the distance from each centroid (k, D) to its nearest other centroid (inf when k = 1)."""
    sims = centroids @ centroids.T
    sims.fill_diagonal_(-math.inf)
    return _distance(sims.amax(1)) / 2


def _lloyd(x: torch.Tensor, centroids: torch.Tensor, max_iter: int, tol: float, chunk_size: int,
           bounds: bool | None = None) -> KMeansResult:
    """Lloyd iterations on unit rows x (N, D) from centroids (k, D), with Hamerly's bounds (SDM 2010)
    when `bounds` (None: when a pass is at least BOUNDS_MIN_WORK multiply-adds).

    Each point keeps an upper bound on its distance to its own centroid and a lower bound on its
    distance to every other one; when a centroid moves by d, the bounds loosen by d (triangle
    inequality). A point whose upper bound is below its lower bound, or below half the distance
    from its centroid to the nearest other centroid, provably keeps its label: only the others
    are compared with every centroid, and the cluster sums are updated by the points that moved.
    Late iterations thus touch only the few points near a boundary; the labels are those of plain
    Lloyd iterations (bounds are trusted only beyond BOUND_MARGIN, far above float error).
    """
    n, k = x.shape[0], centroids.shape[0]
    if bounds is None:
        bounds = n * k * x.shape[1] >= BOUNDS_MIN_WORK
    sums = torch.zeros_like(centroids)
    labels, sims, seconds = _nearest(x, centroids, chunk_size, second=bounds, sums=sums)
    if bounds:
        upper, lower = _distance(sims), _distance(seconds)
    iteration = 1
    while True:
        new_centroids = F.normalize(sums, dim=1)
        empty = (torch.bincount(labels, minlength=k) == 0).nonzero().squeeze(1)
        if empty.numel():  # re-seed on the points farthest from their own centroid
            own = (x * new_centroids[labels]).sum(1)
            new_centroids[empty] = x[own.topk(empty.numel(), largest=False).indices]
        shift = (new_centroids - centroids).norm(dim=1)  # (k,)
        total_shift = float(shift.pow(2).sum())
        if total_shift == 0:  # the means of these labels are the centroids they were assigned to
            return _fixed_point(centroids, labels, sums, iteration)
        centroids = new_centroids
        if total_shift <= tol or iteration == max_iter:
            break
        iteration += 1
        if bounds:
            upper += shift[labels]
            if k > 1:
                top = shift.topk(2)
                lower -= torch.where(labels == top.indices[0], top.values[1], top.values[0])
            bound = torch.maximum(lower, _half_separation(centroids)[labels])
            candidates = (upper > bound - BOUND_MARGIN).nonzero().squeeze(1)
        if not bounds or candidates.numel() > n // 2:  # most points: one plain pass costs less than gathering
            previous = labels
            sums.zero_()
            labels, sims, seconds = _nearest(x, centroids, chunk_size, second=bounds, sums=sums)
            if bounds:
                upper, lower = _distance(sims), _distance(seconds)
            if torch.equal(labels, previous):
                return _fixed_point(centroids, labels, sums, iteration)
            continue
        rows = x[candidates]
        new_labels, sims, seconds = _nearest(rows, centroids, chunk_size, second=True)
        upper[candidates], lower[candidates] = _distance(sims), _distance(seconds)
        moved = (new_labels != labels[candidates]).nonzero().squeeze(1)
        if moved.numel() == 0:
            return _fixed_point(centroids, labels, sums, iteration)
        moved_rows, points = rows[moved], candidates[moved]
        sums.index_add_(0, labels[points], moved_rows, alpha=-1)
        sums.index_add_(0, new_labels[moved], moved_rows)
        labels[points] = new_labels[moved]
    labels, sims, _ = _nearest(x, centroids, chunk_size)  # converged within tol: the labels of these centroids
    return KMeansResult(centroids, labels, _inertia(sims), iteration)


def _fixed_point(centroids: torch.Tensor, labels: torch.Tensor, sums: torch.Tensor, iteration: int) -> KMeansResult:
    """No label changed: the centroids (k, D) are the means of their clusters, whose sums (k, D) give the
    objective at no cost: sum_i x_i . c_{label_i} = sum_j sums_j . c_j."""
    inertia = float(labels.shape[0] - (sums.double() * centroids.double()).sum())
    return KMeansResult(centroids, labels, inertia, iteration)


def spherical_kmeans(x: torch.Tensor, k: int, *, restarts: int = 10, max_iter: int = 300, tol: float = 1e-6,
                     generator: torch.Generator | None = None, chunk_size: int = 8192,
                     sample_per_cluster: int | None = SAMPLE_PER_CLUSTER,
                     init_per_cluster: int | None = INIT_PER_CLUSTER,
                     restart_seeds: Sequence[int] | None = None) -> KMeansResult:
    """Spherical k-means of x (N, D) into k clusters (rows are L2-normalised here, in float32).

    generator: torch.Generator on x's device (default: a fresh one seeded 0, so runs repeat).
    sample_per_cluster, init_per_cluster: the restarts' sample and the seeding subset, in points
    per cluster (None: all points). restart_seeds: one seed per restart for its seeding subset and
    k-means++ (None: every restart draws from `generator`). Returns the restart of lowest spherical
    inertia, refined on all points when the restarts saw a sample.
    """
    if x.dim() != 2:
        raise ValueError(f"expected (N, D) points, got shape {tuple(x.shape)}")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be in [1, N={x.shape[0]}], got {k}")
    if restarts < 1 or max_iter < 1 or tol < 0 or chunk_size < 1:
        raise ValueError(f"need restarts >= 1, max_iter >= 1, tol >= 0, chunk_size >= 1; got "
                         f"{restarts}, {max_iter}, {tol}, {chunk_size}")
    for name, per_cluster in (("sample_per_cluster", sample_per_cluster), ("init_per_cluster", init_per_cluster)):
        if per_cluster is not None and per_cluster < 1:
            raise ValueError(f"{name} must be >= 1 or None (all points), got {per_cluster}")
    if restart_seeds is not None and len(restart_seeds) != restarts:
        raise ValueError(f"restart_seeds has {len(restart_seeds)} seeds for {restarts} restarts")
    if generator is None:
        generator = torch.Generator(x.device).manual_seed(0)
    elif generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device}, points on {x.device}")
    x = _unit_rows(x)
    sample = _random_rows(x, sample_per_cluster and sample_per_cluster * k, generator)
    best: KMeansResult | None = None
    for restart in range(restarts):
        g = generator if restart_seeds is None else torch.Generator(x.device).manual_seed(restart_seeds[restart])
        seeds = _random_rows(sample, init_per_cluster and init_per_cluster * k, g)
        result = _lloyd(sample, kmeans_plus_plus(seeds, k, g, chunk_size), max_iter, tol, chunk_size)
        if best is None or result.inertia < best.inertia:
            best = result
    assert best is not None
    if sample is not x:
        refined = _lloyd(x, best.centroids, max_iter, tol, chunk_size)
        best = replace(refined, iterations=best.iterations + refined.iterations)
    return best
