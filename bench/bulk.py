"""Bulk clustering on Ray Data against a plain loop, and the training decode cold and warm.

What it measures, in one run on one machine, on the same `--images` PNG files (scikit-learn's digits
upsampled to `--size` px, grey, in 10 folders) and the same exported model (CC with a ResNet-18
CIFAR-stem backbone at 32 px, random weights, exported by the export package: bench/gateway_load.py's):
- plain: one process, one loop: decode a batch with the gateway's preprocessing, then the gateway's
  embedded onnxruntime backend on it (`--threads` intra-op threads); nothing written;
- bulk, 1 actor and 2 actors: `serve.bulk.run_job` (a local Ray started by the job, actors x
  `--threads` threads, blocks of `--block-size`), writing the Parquet shards, summary and galleries.
  Two figures each: end to end (Ray start, actors' start, all blocks; not the summary) and steady (the
  images over the span from the first block started to the last one finished, as the actors timed
  them: the start-up that a long job pays once left out);
- training decode (train/data/cache.py) of the same files at the model's size: cold with 1 process,
  cold with every core, and warm (the cache hit of a second run).
It prints images/s, the ratios the issue asks for (1 actor / plain, 2 actors / 1 actor; medians over
`--rounds` alternating rounds), CPU milliseconds per image (the plain process's; the actors' processes'
while they run blocks: Ray's overhead in CPU, whatever else runs on the machine) and the load average
before and after, since the machine may be shared.

    python bench/bulk.py                       # 10,000 images, 1 thread per actor
    python bench/bulk.py --images 2000 --keep build/bench-bulk
    python bench/bulk.py --precision int8      # the model's int8 export (NAME_int8), in every phase
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gateway_load import make_model  # noqa: E402

from contract.names import precision_model  # noqa: E402


def digit_pngs(folder: Path, count: int, size: int) -> list[Path]:
    """count grey PNGs of the 1797 digits (repeated), upsampled to size x size, in 10 sub-folders."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits().images
    paths = []
    for i in range(count):
        pixels = np.rint(digits[i % len(digits)] * 255 / 16).astype(np.uint8)
        path = folder / f"{i % 10}" / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR).save(path)
        paths.append(path)
    return paths


def plain_loop(paths: list[Path], repository: Path, name: str, threads: int, batch_size: int) -> dict[str, float]:
    """images/s and CPU seconds of decode + inference in one process, batch by batch (backend loaded beforehand)."""
    from contract.preprocess import prepare_source
    from serve.backends.embedded import EmbeddedBackend

    backend = EmbeddedBackend(repository, threads, instances=1)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(backend.start())
    spec = backend.models()[name]
    size, channels = spec.input.size, spec.input.channels
    began, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(paths), batch_size):
        images = np.stack([prepare_source(p, size, channels) for p in paths[start:start + batch_size]])
        loop.run_until_complete(backend.infer(name, images))
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    loop.run_until_complete(backend.close())
    loop.close()
    return {"images_per_second": len(paths) / seconds, "steady_images_per_second": len(paths) / seconds,
            "cpu_ms_per_image": 1000 * cpu / len(paths)}


def bulk_job(folder: Path, repository: Path, name: str, out: Path, actors: int, args: argparse.Namespace) -> dict:
    from serve.bulk.job import BulkOptions, run_job

    shutil.rmtree(out, ignore_errors=True)
    opts = BulkOptions(str(folder), str(out), str(repository), name, actors=actors, threads=args.threads,
                       num_cpus=args.cpus, batch_size=args.batch_size, block_size=args.block_size)
    run = run_job(opts, log=lambda msg: None)["run"]
    return {**run, "cpu_ms_per_image": 1000 * run["actor_cpu_seconds"] / run["images"]}


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] or float("nan") for r in runs)  # None: one block only, no steady phase


def training_decode(paths: list[Path], size: int, cache: Path) -> dict[str, float]:
    from train.data.cache import FolderDecoder, cpu_count

    rates = {}
    for label, decoder in (("cold, 1 process", FolderDecoder(workers=1)),
                           (f"cold, {cpu_count()} processes", FolderDecoder(cache_dir=cache)),
                           ("warm (cache hit)", FolderDecoder(cache_dir=cache))):
        decoded = decoder.decode(paths, 3, size)
        assert decoded.cache_hit == label.startswith("warm")
        rates[label] = len(paths) / decoded.seconds
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64, help="side of the PNG files, px")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads of the plain loop and per actor")
    parser.add_argument("--cpus", type=int, default=0, help="CPUs of the local Ray (0: all)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--block-size", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of the three phases (medians)")
    parser.add_argument("--keep", type=Path, help="keep the images, model and outputs here")
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                        help="the model's precision (int8: its encoder quantized, model NAME_int8)")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import ray

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    began = time.perf_counter()
    try:
        paths = digit_pngs(work / "images", args.images, args.size)
        repository, base = make_model(work, [p.read_bytes() for p in paths[:64]], precisions=(args.precision,))
        name = precision_model(base, args.precision)
        print(f"{args.images:,} PNGs ({args.size} px digits) -> model {name} (32 px); {os.cpu_count()} CPUs, "
              f"onnxruntime {ort.__version__} ({args.threads} thread(s) per process/actor), ray {ray.__version__}, "
              f"blocks of {args.block_size}, batches of {args.batch_size}", flush=True)
        phases: dict[str, list[dict]] = {"plain": [], "1 actor": [], "2 actors": []}
        for round_ in range(args.rounds):  # alternating, because the machine may be shared
            phases["plain"].append(plain_loop(paths, repository, name, args.threads, args.batch_size))
            for actors in (1, 2):
                phases[f"{actors} actor{'s' if actors > 1 else ''}"].append(
                    bulk_job(work / "images", repository, name, work / f"out-{actors}", actors, args))
            for label, runs in phases.items():
                run = runs[-1]
                print(f"round {round_ + 1}, {label:8s}: {run['images_per_second']:7.1f} images/s end to end, "
                      f"{run['steady_images_per_second'] or float('nan'):7.1f} steady, "
                      f"{run['cpu_ms_per_image']:6.2f} CPU ms/image", flush=True)
        plain, one, two = phases.values()
        for kind, key in (("end to end", "images_per_second"), ("steady", "steady_images_per_second")):
            print(f"medians ({kind}): plain {median(plain, key):.1f}, 1 actor {median(one, key):.1f}, 2 actors "
                  f"{median(two, key):.1f} images/s; 1 actor / plain {median(one, key) / median(plain, key):.2f} "
                  f"(goal >= 0.8), 2 actors / 1 actor {median(two, key) / median(one, key):.2f} (goal >= 1.6)")
        cpu = [median(runs, "cpu_ms_per_image") for runs in (plain, one, two)]
        print(f"CPU per image (the plain process; the actors' processes while running blocks): plain {cpu[0]:.2f} ms, "
              f"1 actor {cpu[1]:.2f} ms ({cpu[0] / cpu[1]:.2f}x the plain loop's efficiency), 2 actors {cpu[2]:.2f} ms")
        for label, rate in training_decode(paths, 32, work / "cache").items():
            print(f"training decode at 32 px, {label}: {rate:10.1f} images/s", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
          f"wall time {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
