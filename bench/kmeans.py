"""Benchmark: the spherical k-means of train/kmeans.py against faiss (the anchor) and scikit-learn, one run.

What it measures: wall-clock time and objective on `--n` x `--dim` L2-normalised points, a mixture of
k blobs on the sphere (random unit centres plus isotropic Gaussian noise, renormalised), for each k
of `--ks`, with the same number of restarts for everyone:
- ours: spherical_kmeans with its defaults (restarts on a sample of 256 points per cluster, greedy
  k-means++ seeding, Lloyd iterations with Hamerly's bounds until no label changes or max_iter 300,
  the winner refined on all points); on CUDA when `--device cuda` (synchronised, after a warm-up);
- faiss (faiss-cpu, when installed): faiss.Kmeans(spherical=True, nredo=restarts) with faiss's other
  defaults (niter 25, max_points_per_centroid 256: it trains on a sample too, random seeding), then
  index.search for every point's label;
- scikit-learn (when installed, k <= --sklearn-max-k): KMeans(n_init=restarts, max_iter=300).
Every partition is scored with the same spherical objective sum_i 1 - cos(x_i, centroid): faiss's
and scikit-learn's with the normalised means of their own clusters (one more Lloyd half-step, in
their favour). Printed per k: seconds, and ours / faiss ratios of time and inertia (below 1 favours
ours). `--threads` pins torch's, faiss's and scikit-learn's CPU threads (0: the CPUs this process may use).

    python bench/kmeans.py [--ks 10 100 1000] [--restarts 3] [--threads 0] [--n 60000] [--dim 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contract.sessions import default_threads  # noqa: E402
from train.kmeans import centroids_of, spherical_inertia, spherical_kmeans  # noqa: E402


def sphere_mixture(n: int, dim: int, k: int, noise: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(k, dim, generator=g), dim=1)
    labels = torch.randint(k, (n,), generator=g)
    return F.normalize(centres[labels] + noise * torch.randn(n, dim, generator=g), dim=1)


def own_means_inertia(x: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Objective of a partition (N,) with the normalised means of its own clusters as centroids."""
    return spherical_inertia(x, centroids_of(x, labels, k), labels)


def timed_ours(x: torch.Tensor, k: int, restarts: int) -> tuple[float, float, int]:
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = spherical_kmeans(x, k, restarts=restarts, max_iter=300,
                              generator=torch.Generator(x.device).manual_seed(0))
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result.inertia, result.iterations


def timed_faiss(faiss, x: torch.Tensor, k: int, restarts: int) -> tuple[float, float]:
    points = x.numpy()
    start = time.perf_counter()
    kmeans = faiss.Kmeans(x.shape[1], k, nredo=restarts, spherical=True, seed=0)
    kmeans.train(points)
    _, nearest = kmeans.index.search(points, 1)
    seconds = time.perf_counter() - start
    return seconds, own_means_inertia(x, torch.from_numpy(nearest[:, 0]).long(), k)


def timed_sklearn(x: torch.Tensor, k: int, restarts: int) -> tuple[float, float]:
    from sklearn.cluster import KMeans

    start = time.perf_counter()
    fit = KMeans(k, n_init=restarts, max_iter=300, random_state=0).fit(x.numpy())
    seconds = time.perf_counter() - start
    return seconds, own_means_inertia(x, torch.from_numpy(fit.labels_).long(), k)


def optional(module: str):
    try:
        return __import__(module)
    except ImportError:
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60_000, help="number of points")
    parser.add_argument("--dim", type=int, default=256, help="dimension")
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 100, 1000], help="numbers of clusters")
    parser.add_argument("--restarts", type=int, default=3, help="restarts (nredo, n_init) for everyone")
    parser.add_argument("--noise", type=float, default=0.1, help="per-coordinate noise std around each centre")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for all (0: the CPUs this process may use)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where ours runs")
    parser.add_argument("--sklearn-max-k", type=int, default=100, help="largest k scikit-learn runs at (slow)")
    args = parser.parse_args(argv)
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU")
    faiss = optional("faiss")
    if faiss is not None:
        faiss.omp_set_num_threads(threads)
    sklearn = optional("sklearn")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.n} x {args.dim} points, {args.restarts} restarts; ours on {where} (torch {torch.__version__}), "
          f"faiss {faiss.__version__ + ' on cpu' if faiss else 'not installed'}, scikit-learn "
          f"{sklearn.__version__ + ' on cpu' if sklearn else 'not installed'}; {threads} threads pinned, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    for k in args.ks:
        x = sphere_mixture(args.n, args.dim, k, args.noise, seed=k)
        x_dev = x.to(device)
        if device.type == "cuda":
            timed_ours(x_dev[:2048], min(k, 2048), 1)  # warm-up: CUDA context and kernels
        seconds, inertia, iterations = timed_ours(x_dev, k, args.restarts)
        line = f"k={k:4d}: ours {seconds:7.2f} s, inertia {inertia:10.1f} ({iterations} Lloyd iterations)"
        if faiss is not None:
            f_seconds, f_inertia = timed_faiss(faiss, x, k, args.restarts)
            line += (f" | faiss {f_seconds:7.2f} s, inertia {f_inertia:10.1f} | ours/faiss: time "
                     f"{seconds / f_seconds:.3f}, inertia {inertia / f_inertia:.4f}")
        if sklearn is not None and k <= args.sklearn_max_k:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(threads):
                s_seconds, s_inertia = timed_sklearn(x, k, args.restarts)
            line += (f" | scikit-learn {s_seconds:7.2f} s, inertia {s_inertia:10.1f} | ours/scikit-learn: "
                     f"time {seconds / s_seconds:.3f}, inertia {inertia / s_inertia:.4f}")
        print(line, flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
