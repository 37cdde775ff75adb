"""How much the digits figures move with the seed: each method's digits preset for seeds 0, 1, 2.

Runs `python -m train --method M --dataset digits --seed S --threads 1` for every registered method
(C3 fine-tuning the CC run of the same seed), then prints per method the mean and standard deviation
(n - 1) of NMI / ACC / ARI over the seeds, their range, and the mean training time of one run (its
results.json `train_seconds`). Runs go `--jobs` at a time, one torch thread each; the total wall time
is printed at the end. Started again after an interruption, it resumes the unfinished runs from their
last completed epoch (same final weights) and only re-evaluates the finished ones.

    python bench/digits_seeds.py                  # paper preset (the README's digits figures), 2 at a time
    python bench/digits_seeds.py --preset fast --seeds 0 1 --jobs 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from contract.names import RESULTS_FILE
from train.methods import METHODS

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("nmi", "acc", "ari")


def run(method: str, seed: int, preset: str, runs: Path, init: Path | None, options: tuple[str, ...] = (),
        name: str = "") -> dict:
    """One training run in its own process (`options`: more command-line flags, `name`: a variant's name in
    its run directory and its line); returns its metrics, clusters used and training seconds."""
    label = f"{method}{'-' + name if name else ''}"
    run_dir = runs / f"{label}-seed{seed}"
    command = [sys.executable, "-m", "train", "--method", method, "--dataset", "digits", "--preset", preset,
               "--seed", str(seed), "--threads", "1", "--progress", "false", "--run-dir", str(run_dir), *options]
    if init is not None:
        command += ["--init", str(init)]
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                   stdout=subprocess.DEVNULL)
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    metrics, seconds = results["metrics"], results["train_seconds"]
    print(f"  {label} seed {seed}: " + "  ".join(f"{k.upper()} {metrics[k]:.4f}" for k in METRICS)
          + f"  {metrics['clusters_used']} clusters used  {seconds:.0f} s", flush=True)
    return {**{k: metrics[k] for k in METRICS}, "clusters_used": metrics["clusters_used"], "seconds": seconds}


def summary(method: str, results: list[dict]) -> str:
    def spread(key: str) -> str:
        values = [r[key] for r in results]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} +- {std:.3f} ({min(values):.3f}-{max(values):.3f})"

    seconds = statistics.mean(r["seconds"] for r in results)
    return f"| {method} | {spread('nmi')} | {spread('acc')} | {spread('ari')} | {seconds:.0f} s |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=sorted(METHODS))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    parser.add_argument("--runs", type=Path, default=ROOT / "build" / "digits_seeds")
    args = parser.parse_args()
    print(f"digits, preset {args.preset}, seeds {args.seeds}, {args.jobs} run(s) at a time, 1 torch thread each, "
          f"{os.cpu_count()} CPUs", flush=True)
    start = time.perf_counter()
    parents = {m: METHODS[m].parent for m in args.methods}
    missing = {p for p in parents.values() if p is not None and p not in args.methods}
    if missing:
        parser.error(f"--methods: the parent method(s) {sorted(missing)} must run too")
    results: dict[str, list[dict]] = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        first = {(m, s): pool.submit(run, m, s, args.preset, args.runs, None)
                 for m in args.methods if parents[m] is None for s in args.seeds}
        children = {}
        for m in args.methods:
            if parents[m] is not None:  # fine-tunes the parent's run of the same seed, once that has finished
                for s in args.seeds:
                    first[(parents[m], s)].result()
                    children[(m, s)] = pool.submit(run, m, s, args.preset, args.runs,
                                                   args.runs / f"{parents[m]}-seed{s}")
        for (m, _), future in {**first, **children}.items():
            results.setdefault(m, []).append(future.result())
    print("\n| method | NMI | ACC | ARI | mean training time |\n|---|---|---|---|---|")
    for m in args.methods:
        print(summary(m, results[m]))
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
