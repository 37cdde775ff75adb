"""Bulk clustering on Ray Data against a plain loop, and the training decode cold and warm.

What it measures, in one run on one machine, on the same `--images` PNG files (scikit-learn's digits
upsampled to `--size` px, grey, in 10 folders) and the same exported model (CC with a ResNet-18
CIFAR-stem backbone at 32 px, random weights, exported by the export package: bench/gateway_load.py's):
- plain: one process, one loop: decode a batch with the gateway's preprocessing, then the gateway's
  embedded onnxruntime backend on it (`--threads` intra-op threads); nothing written;
- bulk, 1 actor and 2 actors: `serve.bulk.run_job` (a local Ray started by the job, actors x
  `--threads` threads, blocks of `--block-size`), writing the Parquet shards, summary and galleries.
  Two figures each: end to end (Ray start, actors' start, all blocks, summary) and steady (from the
  first finished block to the last, which leaves out the start-up that a long job pays once);
- training decode (train/data/cache.py) of the same files at the model's size: cold with 1 process,
  cold with every core, and warm (the cache hit of a second run).
It prints images/s, the ratios the issue asks for (1 actor / plain, 2 actors / 1 actor) and the load
average before and after, since the machine may be shared.

    python bench/bulk.py                       # 10,000 images, 1 thread per actor
    python bench/bulk.py --images 2000 --keep build/bench-bulk
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gateway_load import make_model  # noqa: E402


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


def plain_loop(paths: list[Path], repository: Path, name: str, threads: int, batch_size: int) -> float:
    """images/s of decode + inference in one process, batch by batch (the backend loaded beforehand)."""
    from contract.preprocess import prepare_source
    from serve.backends.embedded import EmbeddedBackend

    backend = EmbeddedBackend(repository, threads)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(backend.start())
    spec = backend.models()[name]
    size, channels = spec.input.size, spec.input.channels
    began = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        images = np.stack([prepare_source(p, size, channels) for p in paths[start:start + batch_size]])
        loop.run_until_complete(backend.infer(name, images))
    seconds = time.perf_counter() - began
    loop.run_until_complete(backend.close())
    loop.close()
    return len(paths) / seconds


def bulk_job(folder: Path, repository: Path, name: str, out: Path, actors: int, args: argparse.Namespace) -> dict:
    from serve.bulk.job import BulkOptions, run_job

    shutil.rmtree(out, ignore_errors=True)
    opts = BulkOptions(str(folder), str(out), str(repository), name, actors=actors, threads=args.threads,
                       num_cpus=args.cpus, batch_size=args.batch_size, block_size=args.block_size)
    return run_job(opts, log=lambda msg: None)["run"]


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
    parser.add_argument("--keep", type=Path, help="keep the images, model and outputs here")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import ray

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    began = time.perf_counter()
    try:
        paths = digit_pngs(work / "images", args.images, args.size)
        repository, name = make_model(work, [p.read_bytes() for p in paths[:64]])
        print(f"{args.images:,} PNGs ({args.size} px digits) -> model {name} (32 px); {os.cpu_count()} CPUs, "
              f"onnxruntime {ort.__version__} ({args.threads} thread(s) per process/actor), ray {ray.__version__}, "
              f"blocks of {args.block_size}, batches of {args.batch_size}", flush=True)
        plain = plain_loop(paths, repository, name, args.threads, args.batch_size)
        print(f"plain loop (decode + onnxruntime): {plain:8.1f} images/s", flush=True)
        runs = {}
        for actors in (1, 2):
            runs[actors] = run = bulk_job(work / "images", repository, name, work / f"out-{actors}", actors, args)
            steady = run["steady_images_per_second"] or float("nan")  # None: a single block, no steady phase
            print(f"bulk, {actors} actor(s) x {run['threads_per_actor']} thread(s): {run['images_per_second']:8.1f} "
                  f"images/s end to end ({run['seconds']:.1f} s), {steady:8.1f} steady", flush=True)
        for kind, key in (("end to end", "images_per_second"), ("steady", "steady_images_per_second")):
            one, two = (runs[a][key] or float("nan") for a in (1, 2))
            print(f"ratios ({kind}): 1 actor / plain {one / plain:.2f} (goal >= 0.8), "
                  f"2 actors / 1 actor {two / one:.2f} (goal >= 1.6)")
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
