"""Inference speed of the exported model: PyTorch eager vs onnxruntime fp32 and int8 [vs TensorRT], images per second.

What it measures: the whole inference path from uint8 images (B, C, S, S) to the head's outputs
(embedding, probabilities, cluster). PyTorch eager runs model.predict(images / 255) under
inference_mode; onnxruntime runs one session with every thread (contract.sessions: encoder and head
fused into one graph, the shared session settings: what export's parity check and the gateway with
--ort-instances 1 run; its default pool of two sessions is measured by bench/gateway_load.py),
printed with the providers really used from session.get_providers()). The int8 row runs the same
fused graph with the encoder quantized as `python -m export --precision int8` does (export/quantize.py:
QDQ, per-channel int8 weights, symmetric uint8 activations), calibrated on the run's calibration sample
(a random-weight model: on random images; speed does not depend on the calibration) and is printed
with its ratio to fp32 onnxruntime as well as to eager (`--no-int8` leaves it out). `--variants` adds onnxruntime
with one setting changed at a time
(onnxruntime's own defaults with two sessions, as before; spinning on; two sessions; optimisation
level basic / extended; no memory arena) and times the uint8 -> float preprocessing inside the
graph on its own: that is how the settings were chosen. With a GPU (`--device cuda`): eager on the
GPU (fp32, TF32 off as in the onnxruntime sessions), onnxruntime's CUDA execution provider when
this onnxruntime build has it, and the TensorRT plans of export/tensorrt.py when the tensorrt
package is here (fp32, fp16, and int8 from the int8 encoder's TensorRT encoding); host-to-device
copies included (images start on the host, as in serving).

Timing: `--rounds` rounds after `--warmup` calls; in each round every runtime runs in turn (each call
repeated to last >= `--turn-s`, 0.25 s, after a pause in which the previous runtime's threads stop spinning), so a
machine shared with other work slows all of them alike; printed:
images/s from the median round and the median of the per-round ratios to eager. Threads are pinned
(torch.set_num_threads and onnxruntime's intra-op threads, the same number) and printed.

Default model: CC with a ResNet-18 CIFAR-stem backbone at 32 px, 3 channels, 10 clusters, random
weights (no training needed; --backbone, --stem, --image-size, --channels choose another). --run
benchmarks a trained run instead.

    python bench/export_speed.py [--run RUN] [--batches 1 8 64] [--threads N] [--no-int8] [--variants] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import interleaved, median_speedup  # noqa: E402
from contract.names import FEATURES, IMAGES  # noqa: E402
from contract.sessions import CPU, CUDA, default_threads, fused_model, open_session, session_options, settings_of  # noqa: E402
from export.onnx_export import export_onnx  # noqa: E402

GEMM_SIDE = 2048
TARGET = 1.3
"""The issue's goal for onnxruntime against eager, which the ceiling line below prices in GFLOP/s."""
PREPROCESSING = "(the graph's uint8 -> float nodes alone)"
ORT_FP32 = "onnxruntime (shared settings, fused graph)"
ORT_INT8 = "onnxruntime int8 (QDQ encoder, fused graph)"
Runner = Callable[[np.ndarray], object]


def random_model(backbone: str, stem: str, size: int, channels: int) -> tuple[torch.nn.Module, int, int, str]:
    """A CC model with random weights (no training needed): model, channels, size, description."""
    from train.methods import get_method, make_config

    torch.manual_seed(0)
    cfg = make_config("cc", dataset="cifar10", backbone=backbone, stem=stem, image_size=size)
    return get_method("cc")(cfg, channels, 10).eval(), channels, size, (
        f"CC {backbone} ({stem} stem) {size} px, {channels} channel(s), random weights")


def gflop_per_image(model: torch.nn.Module, channels: int, size: int) -> float:
    """The model's floating-point operations per image, GFLOP (torch's FlopCounterMode: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.predict(torch.zeros(1, channels, size, size))
    return counter.get_total_flops() / 1e9


def gemm_gflops(threads: int) -> dict[str, float]:
    """GFLOP/s of one square fp32 matrix product (GEMM_SIDE^3, median of 5 interleaved rounds) in torch (its
    BLAS) and in an onnxruntime MatMul session with the shared settings: what each runtime's best kernel
    does here, the rate no network of smaller convolutions reaches."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a, b = (rng.random((GEMM_SIDE, GEMM_SIDE), dtype=np.float32) for _ in range(2))
    spec = [GEMM_SIDE, GEMM_SIDE]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, spec)],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, spec)],
                              [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    session = open_session(model.SerializeToString(), threads, [CPU])
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    times = interleaved({"torch": lambda: ta @ tb, "onnxruntime": lambda: session.run(None, {"a": a})},
                        warmup=1, rounds=5)
    return {name: 2 * GEMM_SIDE**3 / statistics.median(seconds) / 1e9 for name, seconds in times.items()}


def session_runner(session) -> Runner:
    names = [o.name for o in session.get_outputs()]
    return lambda images: session.run(names, {IMAGES: images})


def two_session_runner(encoder, head) -> Runner:
    names = [o.name for o in head.get_outputs()]
    return lambda images: head.run(names, {FEATURES: encoder.run([FEATURES], {IMAGES: images})[0]})


def onnxruntime_variants(encoder: Path, head: Path, fused: bytes, threads: int,
                         providers: list[str]) -> dict[str, tuple[Runner, dict]]:
    """Sessions that differ from the shared settings in one respect each (the first row: onnxruntime's
    own defaults with two sessions, what this project ran before)."""
    import onnxruntime as ort

    def session(model, spinning=False, **changes):
        options = session_options(threads, spinning)
        for key, value in changes.items():
            setattr(options, key, value)
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=providers)

    level = ort.GraphOptimizationLevel
    plain = [ort.InferenceSession(str(p), providers=providers) for p in (encoder, head)]
    two = [session(p) for p in (encoder, head)]
    variants = {
        "onnxruntime defaults, two sessions (before)": (two_session_runner(*plain), plain[0]),
        "shared settings but spinning on": session(fused, spinning=True),
        "shared settings but two sessions": (two_session_runner(*two), two[0]),
        "shared settings but optimisation basic": session(fused, graph_optimization_level=level.ORT_ENABLE_BASIC),
        "shared settings but optimisation extended": session(fused,
                                                             graph_optimization_level=level.ORT_ENABLE_EXTENDED),
        "shared settings but no memory arena": session(fused, enable_cpu_mem_arena=False),
    }
    out = {}
    for label, value in variants.items():
        runner, reference = value if isinstance(value, tuple) else (session_runner(value), value)
        out[label] = (runner, settings_of(reference))
    return out


def int8_encoder(encoder: Path, run: Path | None, channels: int, size: int, out: Path) -> Path:
    """The encoder quantized as `python -m export --precision int8` quantizes it, calibrated on the run's
    calibration sample (its first 512 images), or on 256 random images for a random-weight model."""
    from export.quantize import quantize_encoder, read_calibration

    if run is not None:
        images = read_calibration(run if run.is_dir() else run.parent, log=print).calibrate
    else:
        images = np.random.default_rng(1).integers(0, 256, (256, channels, size, size), dtype=np.uint8)
    quantize_encoder(encoder, out, images)
    return out


def onnxruntime_sessions(args: argparse.Namespace, device: torch.device, encoder: Path, head: Path, threads: int,
                         channels: int, size: int, tmp: Path) -> dict[str, tuple[Runner, dict]]:
    """The onnxruntime runners to time, with their settings: on the CPU the fused fp32 graph, the int8 one and
    (--variants) the other settings; on CUDA the CUDA provider's session, when this onnxruntime build has it."""
    import onnxruntime as ort

    fused = fused_model(encoder, head)
    sessions: dict[str, tuple[Runner, dict]] = {}
    if device.type == "cpu":
        main_session = open_session(fused, threads, [CPU])
        sessions[ORT_FP32] = (session_runner(main_session), settings_of(main_session))
        if args.int8:
            quantized = int8_encoder(encoder, args.run, channels, size, tmp / "encoder_int8.onnx")
            int8_session = open_session(fused_model(quantized, head), threads, [CPU])
            sessions[ORT_INT8] = (session_runner(int8_session), settings_of(int8_session))
        if args.variants:
            sessions.update(onnxruntime_variants(encoder, head, fused, threads, [CPU]))
    elif CUDA in ort.get_available_providers():
        gpu_session = open_session(fused, threads, [CUDA, CPU])
        sessions[f"onnxruntime {gpu_session.get_providers()[0]}"] = (session_runner(gpu_session),
                                                                     settings_of(gpu_session))
    else:
        print(f"onnxruntime: no {CUDA} in this build (onnxruntime-gpu is not installed): eager only")
    return sessions


def preprocessing_graph(encoder: Path, out: Path) -> Path | None:
    """The encoder's nodes before its first Conv (uint8 -> float, /255, standardisation) as a model of its own."""
    import onnx

    graph = onnx.load(str(encoder)).graph
    first_conv = next((n for n in graph.node if n.op_type == "Conv"), None)
    if first_conv is None:
        return None
    onnx.utils.extract_model(str(encoder), str(out), [IMAGES], [first_conv.input[0]])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: a random-weight CC model, as below)")
    parser.add_argument("--backbone", default="resnet18", help="random-weight model: backbone")
    parser.add_argument("--stem", default="cifar", help="random-weight model: stem (cifar or imagenet)")
    parser.add_argument("--image-size", type=int, default=32, help="random-weight model: input side, pixels")
    parser.add_argument("--channels", type=int, default=3, help="random-weight model: image channels")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--turn-s", type=float, default=0.25,
                        help="each runtime's turn in a round lasts at least this long (bench/timing.py: a turn of a "
                        "few calls after the pause charges the thread pool's wake-up to the fastest runtime)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch and onnxruntime (0: the CPUs this process may use)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--variants", action="store_true", help="also time onnxruntime with other settings")
    parser.add_argument("--no-int8", dest="int8", action="store_false",
                        help="leave out the int8 (quantized encoder) row")
    args = parser.parse_args(argv)

    if args.run:
        from train.checkpoint import load_run

        loaded = load_run(args.run)
        model, channels, size = loaded.model, loaded.meta["in_channels"], loaded.meta["image_size"]
        what = f"{loaded.meta['method']} on {loaded.meta['dataset']} from {args.run}"
    else:
        model, channels, size, what = random_model(args.backbone, args.stem, args.image_size, args.channels)
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA GPU")
        # fp32 on both sides: the onnxruntime sessions run with TF32 off (contract.sessions)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    import onnxruntime as ort

    print(f"model: {what}")
    print(f"torch {torch.__version__} on {device}, {torch.get_num_threads()} threads; onnxruntime {ort.__version__} "
          f"(available providers {ort.get_available_providers()}); {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start")

    with tempfile.TemporaryDirectory() as tmp:
        encoder, head, _ = export_onnx(model, channels, size, Path(tmp))
        sessions = onnxruntime_sessions(args, device, encoder, head, threads, channels, size, Path(tmp))
        pre = preprocessing_graph(encoder, Path(tmp) / "preprocess.onnx") if args.variants else None
        preprocess = session_runner(open_session(pre, threads, [CPU])) if pre else None
        plans = _tensorrt_plans(encoder, head, max(args.batches), args.run, channels, size, Path(tmp)) \
            if device.type == "cuda" else {}

        print("\nonnxruntime settings (from the sessions):")
        for label, (_, settings) in sessions.items():
            print(f"  {label}: {settings}")

        model = model.to(device).eval()
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        rows = []
        for batch in args.batches:
            images = np.random.default_rng(0).integers(0, 256, (batch, channels, size, size), dtype=np.uint8)

            def eager(images=images):
                with torch.inference_mode():
                    return model.predict(torch.from_numpy(images).to(device).float().div(255))

            runners: dict[str, Callable[[], object]] = {f"pytorch eager ({device})": eager}
            for label, (runner, _) in sessions.items():
                runners[label] = lambda runner=runner, images=images: runner(images)
            if preprocess is not None:
                runners[PREPROCESSING] = lambda images=images: preprocess(images)
            for label, (encoder_plan, head_plan) in plans.items():
                runners[label] = (lambda images=images, enc=encoder_plan, hd=head_plan:
                                  hd({FEATURES: enc({IMAGES: images})[FEATURES]}))
            times = interleaved(runners, args.warmup, args.rounds, sync, min_call_s=args.turn_s)
            base = times[f"pytorch eager ({device})"]
            for label, seconds in times.items():
                ratio = median_speedup(base, seconds)
                versus_fp32 = median_speedup(times[ORT_FP32], seconds) if ORT_FP32 in times else None
                rows.append((batch, label, statistics.median(seconds), ratio, versus_fp32))
    gflop = gflop_per_image(model.cpu(), channels, size)
    print(f"\n{'batch':>5}  {'runtime':<50} {'ms/batch':>9} {'images/s':>10} {'GFLOP/s':>8} {'vs eager':>8} "
          f"{'vs ort fp32':>11}")
    for batch, label, seconds, ratio, versus_fp32 in rows:
        versus, rate = ("", "") if label == PREPROCESSING else (f"{ratio:>7.2f}x", f"{batch / seconds * gflop:8.1f}")
        fp32 = f"{versus_fp32:>10.2f}x" if versus_fp32 is not None and label not in (PREPROCESSING, ORT_FP32) else ""
        print(f"{batch:>5}  {label:<50} {seconds * 1e3:>9.2f} {batch / seconds:>10.1f} {rate:>8} {versus:>8} "
              f"{fp32:>11}")
    if device.type == "cpu":
        # what the goal asks of the CPU, against the best one kernel of each runtime does on these threads
        gemm = gemm_gflops(threads)
        needed = {batch: TARGET * batch / seconds * gflop for batch, label, seconds, _, _ in rows
                  if label.startswith("pytorch eager")}
        print(f"\nceiling: {gflop:.3f} GFLOP per image; {TARGET}x eager needs "
              + " / ".join(f"{rate:.0f}" for rate in needed.values())
              + f" GFLOP/s at batch {' / '.join(map(str, needed))}; one fp32 {GEMM_SIDE}^3 matrix product on "
              f"{threads} threads: torch {gemm['torch']:.0f}, onnxruntime {gemm['onnxruntime']:.0f} GFLOP/s")
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end ({os.cpu_count()} CPUs); ratios are medians of "
          f"per-round ratios over {args.rounds} interleaved rounds")


def _tensorrt_plans(encoder: Path, head: Path, max_batch: int, run: Path | None, channels: int, size: int,
                    tmp: Path) -> dict[str, tuple]:
    """{label: (encoder runner, head runner)} of fp32, fp16 and int8 plans when TensorRT and a GPU are here, else
    {} (and say why). int8: the encoder quantized as export does, built from its TensorRT encoding; head fp32."""
    from export.trt_runtime import PlanRunner, missing_requirements, require_tensorrt

    problem = missing_requirements()
    if problem:
        print(f"TensorRT: skipped ({problem.split('. ')[0]})")
        return {}
    from export.quantize import write_tensorrt_encoding
    from export.trt_build import PlanOptions, build_engine

    version = require_tensorrt().__version__
    int8 = tmp / "encoder_int8.tensorrt.onnx"
    write_tensorrt_encoding(int8_encoder(encoder, run, channels, size, tmp / "encoder_int8.onnx"), int8)

    def build(path: Path, precision: str) -> PlanRunner:
        options = PlanOptions(precision=precision, max_batch=max_batch, opt_batch=max(1, max_batch // 2))
        return PlanRunner(build_engine(path, options)[0])

    return {f"tensorrt {version} {precision} plans (incl. copies)": (build(graph, precision), build(head, on_head))
            for precision, graph, on_head in (("fp32", encoder, "fp32"), ("fp16", encoder, "fp16"),
                                              ("int8", int8, "fp32"))}


if __name__ == "__main__":
    main()
