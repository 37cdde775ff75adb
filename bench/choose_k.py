"""Choosing k after training (issue 25): over-cluster digits with K=30, read the suggested k, answer at 10.

For each method and seed, two runs of the method's digits preset (the demo's epochs: CC 300, DRC 80):
one with --num-clusters 30, one with the data set's 10. For each run it prints the suggested k (the run's
cluster_levels.json, train/levels.py: where the merge heights bend, else the best silhouette; the K=10 run
should keep 10) and for the K=30 run the NMI / ACC of its answers at
clusters=10 (the merge the gateway and serve.bulk apply, contract/levels.py), beside the K=10 run's NMI /
ACC and the difference. It also merges the same K=30 heads by the alternative criterion the project's
linkage was measured against: the cosine similarity of the head's probability columns over the training
images (co-assignment), merged groups summing their columns, and prints its NMI at 10 too.

Runs go to --runs (default build/choose_k/<method>-k<K>-seed<S>), one at a time, `--threads` torch
threads each; a run started again resumes or, finished, is only evaluated again. The machine, its load
and the wall time are printed.

    python bench/choose_k.py                              # cc and drc, seeds 0 1 2
    python bench/choose_k.py --methods cc --seeds 0       # the sanity check: one seed
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contract.levels import ClusterLevels  # noqa: E402
from contract.names import CLUSTER_LEVELS_FILE  # noqa: E402
from train.metrics import clustering_metrics  # noqa: E402

LEVEL = 10
OVER = 30


def train_run(method: str, k: int, seed: int, runs: Path, threads: int) -> Path:
    from train.methods import make_config
    from train.trainer import train

    run_dir = runs / f"{method}-k{k}-seed{seed}"
    train(make_config(method, dataset="digits", num_clusters=k, seed=seed, threads=threads, progress=False,
                      run_dir=str(run_dir)))
    return run_dir


def head_outputs(run_dir: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The finished run's head outputs on every digit, and the labels."""
    import contextlib

    from train.checkpoint import load_run
    from train.data.datasets import load_dataset
    from train.trainer import predict_dataset

    loaded = load_run(run_dir)
    data = load_dataset("digits", None, loaded.config.stored_side())
    outputs = predict_dataset(loaded.model.eval(), data.images, 512, contextlib.nullcontext, loaded.config.image_size)
    return {k: v.numpy() for k, v in outputs.items()}, data.labels.numpy()


def coassignment_levels(probabilities: np.ndarray) -> ClusterLevels:
    """The alternative criterion: merge the two groups whose probability columns (summed over members) have
    the highest cosine similarity over the training images."""
    from train.levels import agglomerate

    mass = probabilities.sum(0).astype(np.float64)
    columns = (probabilities / np.maximum(mass, 1e-12)).T.astype(np.float64)  # (K, N): weighted means add up

    def distance(groups: np.ndarray, group: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(groups, axis=1) * np.linalg.norm(group)
        return 1.0 - groups @ group / np.maximum(norms, 1e-12)

    rows = agglomerate(columns, np.maximum(mass, 1e-12), distance)
    return ClusterLevels(probabilities.shape[1], tuple((int(a), int(b), float(h), int(n)) for a, b, h, n in rows),
                         "co-assignment")


def measure(method: str, seed: int, runs: Path, threads: int) -> dict[str, float]:
    over = train_run(method, OVER, seed, runs, threads)
    flat = train_run(method, LEVEL, seed, runs, threads)
    levels = ClusterLevels.read(over / CLUSTER_LEVELS_FILE)
    outputs, labels = head_outputs(over)
    cluster = outputs["cluster"]
    merged = clustering_metrics(labels, levels.assignment(LEVEL)[cluster])
    alternative = clustering_metrics(labels, coassignment_levels(outputs["probabilities"]).assignment(LEVEL)[cluster])
    flat_outputs, _ = head_outputs(flat)
    flat_levels = ClusterLevels.read(flat / CLUSTER_LEVELS_FILE)
    baseline = clustering_metrics(labels, flat_outputs["cluster"])
    at_30 = clustering_metrics(labels, cluster)
    row = {"suggested": levels.suggested, "by": levels.suggested_by, "suggested_k10": flat_levels.suggested,
           "nmi_30": at_30["nmi"], "nmi_at_10": merged["nmi"], "acc_at_10": merged["acc"],
           "nmi_coassignment": alternative["nmi"], "nmi_k10": baseline["nmi"], "acc_k10": baseline["acc"]}
    print(f"  {method} seed {seed}: K=30 suggests {levels.summary()}; K=30 NMI {at_30['nmi']:.3f}; at 10: NMI "
          f"{merged['nmi']:.3f} ACC {merged['acc']:.3f} (co-assignment merge NMI {alternative['nmi']:.3f}); "
          f"K=10 run NMI {baseline['nmi']:.3f} ACC {baseline['acc']:.3f}, suggests {flat_levels.summary()}",
          flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["cc", "drc"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    parser.add_argument("--runs", type=Path, default=ROOT / "build" / "choose_k")
    args = parser.parse_args()
    print(f"digits, K={OVER} vs K={LEVEL}, seeds {args.seeds}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the start", flush=True)
    start = time.perf_counter()
    rows: dict[str, list[dict[str, float]]] = {}
    for method in args.methods:
        for seed in args.seeds:
            row = measure(method, seed, args.runs, args.threads)
            rows.setdefault(method, []).append(row)
    print("\n| method | seed | K=30 suggests (by) | NMI at 10 of K=30 | NMI of K=10 | difference | "
          "co-assignment merge NMI at 10 | K=10 suggests |\n|---|---|---|---|---|---|---|---|")
    for method, found in rows.items():
        for seed, r in zip(args.seeds, found, strict=True):
            print(f"| {method} | {seed} | {r['suggested']} ({r['by']}) | {r['nmi_at_10']:.3f} | {r['nmi_k10']:.3f} | "
                  f"{r['nmi_at_10'] - r['nmi_k10']:+.3f} | {r['nmi_coassignment']:.3f} | {r['suggested_k10']} |")
        if len(found) > 1:
            gap = [r["nmi_at_10"] - r["nmi_k10"] for r in found]
            print(f"| {method} | mean | | {statistics.mean(r['nmi_at_10'] for r in found):.3f} | "
                  f"{statistics.mean(r['nmi_k10'] for r in found):.3f} | {statistics.mean(gap):+.3f} | "
                  f"{statistics.mean(r['nmi_coassignment'] for r in found):.3f} | |")
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
