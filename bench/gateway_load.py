"""Gateway load test: POST /cluster throughput and latency, against raw onnxruntime on the same model.

What it measures, in one run on one machine:
- raw: onnxruntime alone (the sessions the embedded backend runs: encoder and head fused into one
  graph, contract.sessions' settings, providers and instances, one batch per instance at a time) on
  already-prepared uint8 batches of `--images` images: the ceiling;
- gateway: `python -m serve` (embedded backend) started as a subprocess on 127.0.0.1, driven by
  `--concurrency` concurrent calls of the project's AsyncClient (serve/client.py), each request
  carrying `--images` PNG files (multipart), so the gateway's figure includes HTTP, multipart parsing,
  PNG decoding and preprocessing, batching and JSON output. The PNGs are encoded once; the client
  only frames them (httpx multipart) and parses the answers.
Phases alternate (raw, gateway, raw, ...) for `--rounds` rounds, because the machine may be shared;
it prints images/s per phase, p50/p95/p99 request latency, and the gateway/raw ratio (medians).
`--precision fp32 int8` exports and serves both models of the run (one gateway, NAME and NAME_int8,
chosen per request with ?precision=) and alternates the precisions within each round too, then prints
the int8 / fp32 ratio of the gateway's images/s (medians of the per-round ratios).

Default model: CC with a ResNet-18 CIFAR-stem backbone at 32 px (random weights), exported by the
export package into a temporary repository. `--repository` and `--model` use an existing export.

    python bench/gateway_load.py                        # defaults: 64 images/request, concurrency 4
    python bench/gateway_load.py --instances 1          # one onnxruntime session with every thread
    python bench/gateway_load.py --precision fp32 int8  # the int8 model beside the fp32 one, side by side
    python bench/gateway_load.py --rounds 3 --requests 12 --keep build/bench   # then:
    scripts/perf_analyzer.sh -r build/bench/model_repository_cpu -b 64 -c 1:2
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract.names import IMAGES, precision_model  # noqa: E402
from serve.backends.repository import resolve  # noqa: E402
from serve.client import AsyncClient  # noqa: E402


def make_model(workdir: Path, images: list[bytes], keep: Path | None = None, size: int = 32,
               backbone: str = "resnet18", precisions: tuple[str, ...] = ("fp32",)) -> tuple[Path, str]:
    """Random-weight CC / `backbone` (CIFAR stem) at `size` px, exported by export.pipeline (parity on `images`)
    at each of `precisions`; returns the repository and the fp32 model's name.

    An untrained run (epoch 0) with a parity sample made of `images`: exported with allow_unfinished,
    as its metadata then says (finished: false). int8 is calibrated on half of those images (the run has no
    calibration sample) with no agreement threshold: random weights have no clusters to agree on, and this
    measures speed."""
    import torch

    from contract.names import CHECKPOINT_FILE, PARITY_SAMPLE_FILE
    from contract.preprocess import prepare_source
    from export.agreement import Thresholds
    from export.pipeline import PrecisionOptions, export_run
    from train.checkpoint import save_checkpoint
    from train.data.datasets import ImageData
    from train.methods import get_method, make_config
    from train.trainer import save_parity_sample

    run = workdir / f"run-{backbone}-{size}"
    cfg = make_config("cc", dataset="folder", backbone=backbone, stem="cifar", image_size=size, preset="fast",
                      run_dir=str(run))
    torch.manual_seed(0)
    model = get_method("cc")(cfg, 3, 10)
    run.mkdir()
    meta = {"method": "cc", "dataset": "folder", "in_channels": 3, "num_clusters": 10, "class_names": None,
            "image_size": size}
    save_checkpoint({"method": "cc", "config": cfg.to_dict(), "meta": meta, "model": model.state_dict(),
                     "epoch": 0}, run / CHECKPOINT_FILE)
    pixels = torch.from_numpy(np.stack([prepare_source(data, size, 3) for data in images]))
    save_parity_sample(run / PARITY_SAMPLE_FILE, ImageData(pixels, None, None, [f"{i}.png" for i in range(len(images))],
                                                           "folder", []), size)
    name = f"cc_{backbone}_{size}"
    out = keep or workdir
    cpu = out / "model_repository_cpu" if keep else None  # the CPU flavour for scripts/perf_analyzer.sh
    for precision in precisions:
        export_run(run, out / "model_repository", cpu, name=name, allow_unfinished=True, log=lambda m: None,
                   precision=PrecisionOptions(precision, Thresholds(0.0, 0.0)))
    return out / "model_repository", name


def random_pngs(count: int, size: int, seed: int = 0) -> list[bytes]:
    """Smooth random colour images (compress like photos, unlike pure noise) as PNG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR)
        noisy = np.clip(np.asarray(img, np.int16) + rng.integers(-8, 9, (size, size, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def multipart(images: list[bytes]) -> tuple[bytes, str]:
    boundary = "gatewayloadboundary7d1c"
    parts = []
    for i, data in enumerate(images):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{i}.png"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def raw_onnxruntime(repository: Path, name: str, batch: np.ndarray, batches: int, threads: int = 0,
                    instances: int = 0) -> float:
    """images/s of the sessions the embedded backend runs (contract.sessions.SessionPool: encoder and head
    fused, the same settings and instances; threads 0: from the affinity mask), one thread per instance
    running `batch` until `batches` runs are done (after one warm-up run of every session)."""
    from concurrent.futures import ThreadPoolExecutor

    from contract.sessions import SessionPool, fused_model

    version = resolve(repository, name)  # the latest, as the gateway serves it
    pool = SessionPool(fused_model(version.encoder_onnx, version.head_onnx), instances, threads)
    pool.warm_up({IMAGES: batch})
    with ThreadPoolExecutor(pool.instances) as runners:
        began = time.perf_counter()
        list(runners.map(lambda _: pool.run({IMAGES: batch}), range(batches)))
        return batches * len(batch) / (time.perf_counter() - began)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gateway(repository: Path, port: int, args: argparse.Namespace, source: Path = ROOT) -> subprocess.Popen:
    """`python -m serve` of the checkout at `source` (another one's, to compare versions), embedded backend."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    cmd = [sys.executable, "-m", "serve", "--backend", "embedded", "--model-repository", str(repository),
           "--host", "127.0.0.1", "--port", str(port), "--max-batch-size", str(args.max_batch_size),
           "--max-wait-ms", str(args.max_wait_ms), "--log-level", "warning"]
    if getattr(args, "instances", 0):  # bench/gateway_soak.py runs older checkouts without the option
        cmd += ["--ort-instances", str(args.instances)]
    return subprocess.Popen(cmd, env=env, cwd=source)


async def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited with status {process.returncode}")
            try:
                if (await client.get(f"{url}/readyz", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.25)
    raise RuntimeError(f"the gateway was not ready within {timeout:.0f} s")


async def drive(url: str, pngs: list[bytes], requests: int, concurrency: int,
                **choice: str) -> tuple[float, list[float]]:
    """`requests` calls of AsyncClient.cluster(pngs, **choice), `concurrency` at a time -> (images/s, latencies
    in s); choice: model, precision."""
    latencies: list[float] = []
    remaining = requests
    async with AsyncClient(url, timeout=300, retries=0, batch_size=len(pngs)) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:  # bounded: `requests` in all
                remaining -= 1
                began = time.perf_counter()
                results = await client.cluster(pngs, **choice)
                latencies.append(time.perf_counter() - began)
                if len(results) != len(pngs) or not all(r.ok for r in results):
                    raise RuntimeError("gateway returned errors or a wrong count")

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return requests * len(pngs) / elapsed, latencies


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repository", type=Path, help="existing exported repository (default: make one)")
    parser.add_argument("--model", help="model name in --repository")
    parser.add_argument("--keep", type=Path, help="export the default model (both flavours) here and keep it")
    parser.add_argument("--images", type=int, default=64, help="PNG images per request (and raw batch size)")
    parser.add_argument("--requests", type=int, default=10, help="requests per gateway phase")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=3, help="alternating raw/gateway rounds")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--instances", type=int, default=0,
                        help="onnxruntime sessions per model, raw and gateway (0: the gateway's default)")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "int8"), default=["fp32"],
                        help="the model's precisions to serve and measure, side by side (--repository: NAME and "
                             "NAME_int8 must be there)")
    args = parser.parse_args(argv)
    precisions = tuple(dict.fromkeys(args.precision))

    with tempfile.TemporaryDirectory(prefix="gateway-load-") as tmp:
        if args.repository is None:
            pngs = random_pngs(args.images, 32)
            repository, name = make_model(Path(tmp), pngs, args.keep, precisions=precisions)
        else:
            repository, name = args.repository, args.model
            pngs = random_pngs(args.images, resolve(repository, name).metadata.input.size)
        meta = resolve(repository, name).metadata
        size, channels = meta.input.size, meta.input.channels
        from contract.preprocess import prepare_source

        batch = np.stack([prepare_source(p, size, channels) for p in pngs])
        body_kib = sum(len(p) for p in pngs) / 1024
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_gateway(repository, port, args)
        try:
            asyncio.run(wait_ready(url, process))
            for precision in precisions:  # warm-up
                asyncio.run(drive(url, pngs, 2, 1, model=name, precision=precision))
            raw = {p: [] for p in precisions}
            gateway = {p: [] for p in precisions}
            latencies = {p: [] for p in precisions}
            batches = args.requests  # the same number of images in both phases
            for r in range(args.rounds):
                for precision in precisions:
                    model = precision_model(name, precision)
                    raw[precision].append(raw_onnxruntime(repository, model, batch, batches, instances=args.instances))
                    ips, lat = asyncio.run(drive(url, pngs, args.requests, args.concurrency, model=name,
                                                 precision=precision))
                    gateway[precision].append(ips)
                    latencies[precision] += lat
                    print(f"round {r + 1} {precision}: raw onnxruntime {raw[precision][-1]:7.1f} images/s   gateway "
                          f"{ips:7.1f} images/s   ratio {ips / raw[precision][-1]:.2f}", flush=True)
        finally:
            process.terminate()
            process.wait(30)

    import onnxruntime as ort

    print(f"\nmodel {name} ({channels}x{size}x{size}), {args.images} PNG images/request "
          f"({body_kib:.0f} KiB of PNG), concurrency {args.concurrency}, {args.rounds} rounds x "
          f"{args.requests} requests; onnxruntime {ort.__version__} {ort.get_available_providers()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end")
    for precision in precisions:
        report(precision, raw[precision], gateway[precision], latencies[precision])
    if len(precisions) == 2:
        ratios = [b / a for a, b in zip(gateway["fp32"], gateway["int8"], strict=True)]
        print(f"gateway int8 / fp32: {statistics.median(ratios):.2f}x images/s (median of per-round ratios "
              f"{', '.join(f'{x:.2f}' for x in ratios)})")
    return 0


def report(precision: str, raw: list[float], gateway: list[float], latencies: list[float]) -> None:
    """One precision's medians: raw onnxruntime, the gateway, its latency and the gateway / raw ratio."""
    raw_m, gw_m = statistics.median(raw), statistics.median(gateway)
    print(f"{precision} raw onnxruntime : {raw_m:8.1f} images/s (median of {', '.join(f'{x:.1f}' for x in raw)})")
    print(f"{precision} gateway /cluster: {gw_m:8.1f} images/s (median of {', '.join(f'{x:.1f}' for x in gateway)})")
    print(f"{precision} gateway latency per request: p50 {percentile(latencies, 50) * 1000:.0f} ms, "
          f"p95 {percentile(latencies, 95) * 1000:.0f} ms, p99 {percentile(latencies, 99) * 1000:.0f} ms "
          f"({len(latencies)} requests)")
    ratio = gw_m / raw_m
    print(f"{precision} ratio gateway / raw onnxruntime: {ratio:.2f} "
          f"(target >= 0.90: {'met' if ratio >= 0.9 else 'NOT met'})")


if __name__ == "__main__":
    sys.exit(main())
