"""Decode + preprocess throughput per core, against a full decode + resize and against the model's pace.

What it measures, in one run on one machine, one thread (images/s per core):
- decode path: `contract.preprocess.prepare_source`, the one function of training, export parity (the
  run's parity sample) and the gateway: the header's size gives the centre region first, a JPEG is
  decoded by libjpeg at 1/2..1/8 scale (draft), larger-than-needed images are integer-reduced, then
  one bilinear resample of the region to S x S;
- full decode + resize: every pixel decoded, the whole image resized (shorter side -> S) and cropped:
  the path before issue 17, the reference it is compared with (ratio = decode path / full);
- decode alone: the path's decode step and nothing after it (a JPEG: libjpeg at the draft scale); the
  ratio it gives against the full decode + resize bounds the decode path's (everything after is free);
- model: the exported CC / ResNet-18 (CIFAR stem, the project's default at 32 and 96 px), random weights,
  onnxruntime with 1 intra-op and 1 inter-op thread, batches of 64 prepared images.
Inputs are generated photo-like content (smooth colour fields, texture, sensor noise) at 640x480 and
4000x3000, as JPEG (quality 90, 4:2:0) and PNG (zlib level 6); their sizes in bits per pixel are printed.
It also checks that the training path (the folder data set loader, `train.data.datasets`) and the
gateway (`serve.images.prepare_uploads`) give the same arrays, bit for bit, on these files.
Timing: the three take turns within each round (bench/timing.py); images/s from the median round,
ratios the median of the per-round ratios.

    python bench/decode.py                     # sizes 32 and 96
    python bench/decode.py --sizes 96 --rounds 9
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image, ImageOps  # noqa: E402

from bench.timing import interleaved, median_speedup  # noqa: E402
from contract.preprocess import decode_for_size, prepare_source, to_mode  # noqa: E402

SHAPES = ((640, 480), (4000, 3000))
FORMATS = {"JPEG": {"quality": 90}, "PNG": {}}


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Photo-like RGB: smooth colour fields, mid-frequency texture and +-3 levels of sensor noise."""
    rng = np.random.default_rng(seed)

    def field(step: int) -> np.ndarray:
        small = rng.integers(0, 256, (max(height // step, 2), max(width // step, 2), 3), dtype=np.uint8)
        return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC), np.int16)

    pixels = (3 * field(64) + field(8)) // 4 + rng.integers(-3, 4, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **FORMATS[fmt])
    return buf.getvalue()


def full_decode_resize(data: bytes, size: int, channels: int) -> np.ndarray:
    """The reference: decode every pixel, resize the whole image (shorter side -> size), crop the centre."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        img = to_mode(ImageOps.exif_transpose(img), channels)
        width, height = img.size
        scaled = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
        img = img.resize(scaled, Image.Resampling.BILINEAR)
        left, top = round((scaled[0] - size) / 2.0), round((scaled[1] - size) / 2.0)
        array = np.asarray(img.crop((left, top, left + size, top + size)), np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def decode_alone(data: bytes, size: int) -> Image.Image:
    """The decode path's decode step and nothing after it (no region, mode or resample): its floor."""
    with Image.open(io.BytesIO(data)) as img:
        return decode_for_size(img, size)


def training_equals_gateway(files: dict[str, bytes], size: int) -> bool:
    """The folder loader of training and the gateway's decode give identical arrays for `files`."""
    from serve.images import Upload, prepare_uploads
    from serve.settings import load_settings
    from train.data.datasets import load_dataset

    with tempfile.TemporaryDirectory(prefix="decode-bench-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        training = load_dataset("folder", tmp, size)
    by_name = {Path(source).name: training.images[i].numpy() for i, source in enumerate(training.sources)}
    uploads = [Upload(i, name, data) for i, (name, data) in enumerate(files.items())]
    with ThreadPoolExecutor(1) as pool:
        settings = load_settings({}, decode_timeout_ms=600_000)
        images, ok, errors = asyncio.run(prepare_uploads(uploads, size, 3, settings, pool))
    return not errors and all(np.array_equal(images[j], by_name[uploads[i].filename]) for j, i in enumerate(ok))


def model_per_second(size: int, repeats: int) -> float:
    """images/s per core of the exported model at `size` px (1 onnxruntime thread, batch 64)."""
    import torch

    from bench.gateway_load import make_model, random_pngs, raw_onnxruntime

    torch.set_num_threads(1)
    pngs = random_pngs(64, size)
    with tempfile.TemporaryDirectory(prefix="decode-bench-model-") as tmp:
        repository, name = make_model(Path(tmp), pngs, size=size)
        batch = np.stack([prepare_source(p, size, 3) for p in pngs])
        return max(raw_onnxruntime(repository, name, batch, 1, threads=1) for _ in range(repeats))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 96], help="model input sizes S")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds per case (images/s: the median round; ratios: median per round)")
    parser.add_argument("--no-model", action="store_true", help="skip the model's throughput")
    args = parser.parse_args(argv)

    import PIL
    from PIL import features

    print(f"one thread; Pillow {PIL.__version__} (libjpeg-turbo {features.check_feature('libjpeg_turbo')}, "
          f"zlib {features.version('zlib')}), {os.cpu_count()} CPUs; {args.rounds} interleaved rounds per case")
    files: dict[str, bytes] = {}
    for width, height in SHAPES:
        img = photo(width, height)
        for fmt in FORMATS:
            data = encode(img, fmt)
            files[f"{width}x{height}.{fmt.lower()}"] = data
            bits = 8 * len(data) / (width * height)
            print(f"  {width}x{height} {fmt}: {len(data) / 1e6:.2f} MB ({bits:.2f} bits/px)")

    rows = []
    for size in args.sizes:
        model = None if args.no_model else model_per_second(size, args.rounds)
        equal = training_equals_gateway(files, size)
        for name, data in files.items():
            ours = prepare_source(data, size, 3)
            full = full_decode_resize(data, size, 3)
            diff = np.abs(ours.astype(np.int16) - full)
            times = interleaved({"path": lambda d=data, s=size: prepare_source(d, s, 3),
                                 "full": lambda d=data, s=size: full_decode_resize(d, s, 3),
                                 "alone": lambda d=data, s=size: decode_alone(d, s)},
                                warmup=1, rounds=args.rounds, pause_s=0.0)
            rate = {key: 1.0 / statistics.median(seconds) for key, seconds in times.items()}
            rows.append((size, name, rate["path"], rate["full"], rate["alone"],
                         median_speedup(times["full"], times["path"]), median_speedup(times["full"], times["alone"]),
                         diff, model, equal))

    print(f"\n{'S':>3} {'input':<15} {'decode path':>12} {'full+resize':>12} {'ratio':>6} {'decode alone':>13} "
          f"{'bound':>6} {'mean|d|':>8} {'max|d|':>6} {'model':>9}  training == gateway")
    for size, name, fast, slow, floor, ratio, bound, diff, model, equal in rows:
        model_text = "-" if model is None else f"{model:9.1f}"
        print(f"{size:>3} {name:<15} {fast:9.1f}/s {slow:9.1f}/s {ratio:6.1f} {floor:10.1f}/s "
              f"{bound:6.1f} {diff.mean():8.2f} {int(diff.max()):6d} {model_text:>9}  {'yes' if equal else 'NO'}")
    print("(images/s per core; decode alone: the path's decode step by itself (JPEG: libjpeg at the draft scale),\n"
          " bound: the ratio the path would reach if everything after decoding were free; mean|d| / max|d|: decode\n"
          " path vs full decode + resize, levels 0..255; model: ONNX CC/ResNet-18 at S px, 1 thread, batch 64)")
    target = [r for r in rows if r[0] == 96 and r[1] == "4000x3000.jpeg"]
    if target:
        *_, ratio, bound, _, _, equal = target[0]
        print(f"4000x3000 JPEG for a 96 px model: decode path {ratio:.1f}x a full decode + resize "
              f"(target >= 5: {'met' if ratio >= 5 else 'NOT met'}; libjpeg's decode at 1/8 scale alone "
              f"bounds it at {bound:.1f}x); training == gateway: {'yes' if equal else 'NO'}")
    return 0 if all(r[-1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
