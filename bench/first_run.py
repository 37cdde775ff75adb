"""A new user's first run on a folder of their own (issue 25), tried on this machine.

Writes FOLDER: 200 PNGs (64 px) in 4 class folders of generated shapes (circle, square, triangle, cross),
each of a random size, place and rotation, light on a dark background (`--colour`: random colours on
random backgrounds), so the class is the shape. Then, with `python -m train` as a user types it:

1. the issue's first command, `--method cc --dataset folder --data-dir FOLDER --epochs 2`: it runs, or
   stops with one line that names --batch-size;
2. the same with `--batch-size 64` (the paper preset: ResNet-34 at 96 px): the seconds until the
   projected time is printed, the projection, and the advice; the run is stopped there;
3. the CPU-sized command of docs/clusters.md, to its end: wall time, NMI / ACC of its clusters;
4. k-means on the pixels of the same images (at the run's 16 px and at 32 px, RGB; k = 4, 10 restarts):
   NMI / ACC, the baseline a deep method has to beat.

The load average is printed before and after (this machine is shared).

    python bench/first_run.py [--folder build/first_run/shapes] [--runs build/first_run]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = ("circle", "square", "triangle", "cross")
PER_CLASS = 50
SIDE = 64
CPU_SIZED = ["--backbone", "smallcnn", "--image-size", "16", "--batch-size", "32", "--lr", "1e-3", "--epochs", "200"]
"""The CPU-sized folder command of docs/clusters.md (its other options: the paper preset's)."""


def shape_image(shape: str, rng: np.random.Generator, colour: bool) -> Image.Image:
    """One 64 px RGB image of `shape`: random size, centre, rotation; light on dark, or with `colour` random
    colours (the foreground far from the background)."""
    if colour:
        background = rng.integers(0, 256, 3)
        foreground = (background + rng.integers(80, 176, 3)) % 256
    else:
        background, foreground = np.full(3, rng.integers(0, 60)), np.full(3, rng.integers(180, 256))
    image = Image.new("RGB", (SIDE, SIDE), tuple(int(v) for v in background))
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(12, 24)
    cx, cy = rng.uniform(radius, SIDE - radius, 2)
    angle = rng.uniform(0, 2 * np.pi)
    colour = tuple(int(v) for v in foreground)

    def polygon(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        c, s = np.cos(angle), np.sin(angle)
        return [(cx + radius * (x * c - y * s), cy + radius * (x * s + y * c)) for x, y in points]

    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    elif shape == "square":
        draw.polygon(polygon([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]), fill=colour)
    elif shape == "triangle":
        draw.polygon(polygon([(0, -1), (0.87, 0.5), (-0.87, 0.5)]), fill=colour)
    else:
        arm = 0.3
        draw.polygon(polygon([(-arm, -1), (arm, -1), (arm, -arm), (1, -arm), (1, arm), (arm, arm), (arm, 1),
                              (-arm, 1), (-arm, arm), (-1, arm), (-1, -arm), (-arm, -arm)]), fill=colour)
    return image


def write_folder(folder: Path, colour: bool, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        (folder / shape).mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            shape_image(shape, rng, colour).save(folder / shape / f"{i:03d}.png")


def train_command(folder: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "train", "--method", "cc", "--dataset", "folder", "--data-dir", str(folder), *extra]


def shown(command: list[str]) -> str:
    """The command as a user types it."""
    return shlex.join(["python", *command[1:]])


def first_command(folder: Path, runs: Path) -> None:
    command = train_command(folder, "--epochs", "2", "--run-dir", str(runs / "first"))
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    print(f"1. {shown(command)}\n   exit {done.returncode}: {done.stderr.strip() or '(ran)'}", flush=True)


def projection(folder: Path, runs: Path) -> None:
    """Start the paper preset with --batch-size 64; stop it once the projection (and any advice) is out."""
    command = train_command(folder, "--batch-size", "64", "--progress", "false", "--run-dir", str(runs / "paper"))
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(f"2. {shown(command)}", flush=True)
    try:
        lines = iter(process.stdout)
        for line in lines:
            if line.startswith("projected:"):
                print(f"   after {time.perf_counter() - began:.0f} s: {line.rstrip()}", flush=True)
                advice = next(lines, "")
                if advice.startswith("that is far beyond"):
                    print(f"   {advice.rstrip()}\n   {next(lines, '').rstrip()}", flush=True)
                break
    finally:
        process.terminate()
        process.wait(timeout=60)


def cpu_sized(folder: Path, runs: Path) -> tuple[dict, float]:
    run_dir = runs / "cpu-sized"
    command = train_command(folder, *CPU_SIZED, "--progress", "false", "--run-dir", str(run_dir))
    began = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - began
    results = json.loads((run_dir / "results.json").read_text())
    print(f"3. {shown(command)}\n   {seconds:.0f} s wall ({results['train_seconds']:.0f} s training): "
          + "  ".join(f"{k.upper()} {results['metrics'][k]:.3f}" for k in ("nmi", "acc", "ari")), flush=True)
    return results["metrics"], seconds


def kmeans_on_pixels(folder: Path) -> None:
    from sklearn.cluster import KMeans

    from train.data.datasets import load_dataset
    from train.metrics import clustering_metrics

    for side in (16, 32):
        data = load_dataset("folder", folder, side)
        pixels = data.images.numpy().reshape(len(data.images), -1).astype(np.float32) / 255
        found = KMeans(len(SHAPES), n_init=10, random_state=0).fit_predict(pixels)
        scores = clustering_metrics(data.labels.numpy(), found)
        print(f"4. k-means on the pixels ({side} px RGB, k = 4, 10 restarts): "
              + "  ".join(f"{k.upper()} {scores[k]:.3f}" for k in ("nmi", "acc", "ari")), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=ROOT / "build" / "first_run" / "shapes")
    parser.add_argument("--runs", type=Path, default=ROOT / "build" / "first_run")
    parser.add_argument("--steps", nargs="+", type=int, default=[1, 2, 3, 4], help="which of the four to run")
    parser.add_argument("--colour", action="store_true", help="shapes of random colours on random backgrounds "
                        "(default: light on dark)")
    args = parser.parse_args()
    if not args.folder.is_dir():
        write_folder(args.folder, args.colour)
    print(f"{sum(1 for _ in args.folder.rglob('*.png'))} PNGs of {len(SHAPES)} shapes in {args.folder}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    steps = {1: first_command, 2: projection, 3: cpu_sized}
    for step in args.steps:
        if step == 4:
            kmeans_on_pixels(args.folder)
        else:
            steps[step](args.folder, args.runs)
    print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)


if __name__ == "__main__":
    main()
