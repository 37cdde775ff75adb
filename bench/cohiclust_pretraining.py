"""CoHiClust's tree after SimCLR-only epochs (issue 26): digits with 40 of them against none.

For each seed, two runs of CoHiClust's digits recipe (`bench/digits_seeds.py`'s runs: one process, one torch
thread each) with `--prune-start-epoch 60 --epochs 80`: one with `--simclr-epochs 40` (the tree head left out
of the first 40 epochs, then 40 epochs of SimCLR + tree loss, pruning from epoch 60), one with
`--simclr-epochs 0` (80 epochs of both). Prints NMI / ACC / ARI and clusters used per run, the means and the
difference of the means. `--jobs` runs at a time; a finished run is only evaluated again.

    python bench/cohiclust_pretraining.py                  # seeds 0 1 2, 2 at a time
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from digits_seeds import run  # noqa: E402

SCHEDULE = ("--prune-start-epoch", "60", "--epochs", "80")
VARIANTS = {"simclr40": ("--simclr-epochs", "40", *SCHEDULE), "simclr0": ("--simclr-epochs", "0", *SCHEDULE)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    parser.add_argument("--runs", type=Path, default=ROOT / "build" / "cohiclust_pretraining")
    args = parser.parse_args()
    print(f"cohiclust on digits, {' '.join(SCHEDULE)}, seeds {args.seeds}, {args.jobs} run(s) at a time, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {(name, seed): pool.submit(run, "cohiclust", seed, "paper", args.runs, None, options, name)
                   for seed in args.seeds for name, options in VARIANTS.items()}
        results = {key: future.result() for key, future in futures.items()}
    print("\n| seed | NMI, 40 SimCLR-only epochs | NMI, none | difference | clusters used |\n|---|---|---|---|---|")
    for seed in args.seeds:
        a, b = results[("simclr40", seed)], results[("simclr0", seed)]
        print(f"| {seed} | {a['nmi']:.3f} | {b['nmi']:.3f} | {a['nmi'] - b['nmi']:+.3f} | "
              f"{a['clusters_used']} / {b['clusters_used']} |")
    means = {name: statistics.mean(results[(name, s)]["nmi"] for s in args.seeds) for name in VARIANTS}
    after, without = means["simclr40"], means["simclr0"]
    print(f"| mean | {after:.3f} | {without:.3f} | {after - without:+.3f} | |")
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
