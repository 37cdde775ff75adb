"""Inference speed of the exported model: PyTorch eager vs onnxruntime [vs TensorRT], images per second.

What it measures: the whole inference path from uint8 images (B, C, S, S) to the head's outputs
(embedding, probabilities, cluster): PyTorch eager runs model.predict(images / 255) under no_grad;
onnxruntime runs the exported encoder graph then the head graph, once per available execution
provider (CPU here; CUDA and TensorRT providers where a GPU is lent: the provider that really ran,
from session.get_providers(), is printed); with a GPU and the tensorrt package, the TensorRT plans
built by export/tensorrt.py are timed too. Batch sizes 1, 8 and 64; the median of `--repeats`
timed runs after `--warmup` runs; host-to-device copies included for GPU runtimes (images start
on the host, as in serving). Ratios are against PyTorch eager on the same device, from one run.

Default model: CC with a ResNet-18 CIFAR-stem backbone at 32 px, 3 channels, 10 clusters, random
weights (no training needed). --run benchmarks a trained run instead.

    python bench/export_speed.py [--run RUN] [--batches 1 8 64] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contract.names import FEATURES, IMAGES  # noqa: E402
from export.onnx_export import export_onnx  # noqa: E402


def default_model() -> tuple[torch.nn.Module, int, int, str]:
    from train.methods.cc import CC, CCConfig

    torch.manual_seed(0)
    cfg = CCConfig(method="cc", dataset="cifar10", backbone="resnet18", stem="cifar", image_size=32)
    return CC(cfg, 3, 10).eval(), 3, 32, "CC ResNet-18 (CIFAR stem) 32 px, random weights"


def median_seconds(fn: Callable[[], object], warmup: int, repeats: int, sync: Callable[[], None]) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: random-weight CC ResNet-18 at 32 px)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch and onnxruntime (0: default)")
    args = parser.parse_args(argv)

    if args.run:
        from train.checkpoint import load_run

        loaded = load_run(args.run)
        model, channels, size = loaded.model, loaded.meta["in_channels"], loaded.meta["image_size"]
        what = f"{loaded.meta['method']} on {loaded.meta['dataset']} from {args.run}"
    else:
        model, channels, size, what = default_model()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    import onnxruntime as ort

    print(f"model: {what}")
    print(f"torch {torch.__version__} on {device} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__}")

    with tempfile.TemporaryDirectory() as tmp:
        encoder, head, _ = export_onnx(model, channels, size, Path(tmp))
        available = ort.get_available_providers()
        provider_sets = [["CPUExecutionProvider"]]
        for gpu in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            if gpu in available and device.type == "cuda":
                provider_sets.append([gpu, "CPUExecutionProvider"])
        sessions = []
        for providers in provider_sets:
            options = ort.SessionOptions()
            if args.threads:
                options.intra_op_num_threads = args.threads
            enc = ort.InferenceSession(str(encoder), options, providers=providers)
            hd = ort.InferenceSession(str(head), options, providers=providers)
            used = enc.get_providers()[0]
            sessions.append((f"onnxruntime {used}" + ("" if used == providers[0] else f" (asked {providers[0]})"),
                             enc, hd))
        plans = _tensorrt_plans(encoder, head, max(args.batches))

        model = model.to(device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        rows = []
        for batch in args.batches:
            images = np.random.default_rng(0).integers(0, 256, (batch, channels, size, size), dtype=np.uint8)

            def eager(images=images):
                with torch.no_grad():
                    return model.predict(torch.from_numpy(images).to(device).float().div(255))

            base = median_seconds(eager, args.warmup, args.repeats, sync)
            rows.append((batch, f"pytorch eager ({device})", base, 1.0))
            for label, enc, hd in sessions:
                names = [o.name for o in hd.get_outputs()]

                def run(images=images, enc=enc, hd=hd, names=names):
                    (features,) = enc.run([FEATURES], {IMAGES: images})
                    return hd.run(names, {FEATURES: features})

                seconds = median_seconds(run, args.warmup, args.repeats, lambda: None)
                rows.append((batch, label, seconds, base / seconds))
            if plans is not None:
                version, encoder_plan, head_plan = plans

                def run_plan(images=images, encoder_plan=encoder_plan, head_plan=head_plan):
                    return head_plan({FEATURES: encoder_plan({IMAGES: images})[FEATURES]})

                seconds = median_seconds(run_plan, args.warmup, args.repeats, lambda: None)
                rows.append((batch, f"tensorrt {version} plans (fp32, incl. cudaMalloc+copies)", seconds,
                             base / seconds))
    print(f"\n{'batch':>5}  {'runtime':<58} {'ms/batch':>9} {'images/s':>10} {'vs eager':>8}")
    for batch, label, seconds, ratio in rows:
        print(f"{batch:>5}  {label:<58} {seconds * 1e3:>9.2f} {batch / seconds:>10.1f} {ratio:>7.2f}x")


def _tensorrt_plans(encoder: Path, head: Path, max_batch: int):
    """(version, encoder runner, head runner) when TensorRT and a GPU are here, else None (and say why)."""
    from export.trt_runtime import PlanRunner, missing_requirements, require_tensorrt

    problem = missing_requirements()
    if problem:
        print(f"TensorRT: skipped ({problem.split('. ')[0]})")
        return None
    from export.trt_build import build_engine

    trt = require_tensorrt()
    runners = [PlanRunner(build_engine(p, max_batch, max(1, max_batch // 2), False, 2048, None)[0])
               for p in (encoder, head)]
    return trt.__version__, *runners


if __name__ == "__main__":
    main()
