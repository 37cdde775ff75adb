"""TensorRT builds: ONNX file -> serialized plan (one optimisation profile), and a plan's own I/O.

`PlanOptions` are the settings a plan is built with (the flags of `python -m export.tensorrt`).
`TensorRTEngines` is what export/tensorrt.py builds, inspects and checks plans through; the
repository rewrite takes any object with the same three methods (tests pass a CPU stand-in).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.metadata import TensorSpec
from contract.names import FEATURES, IMAGES
from export.parity import FP32_TOLERANCE, compare, read_sample
from export.trt_runtime import PlanRunner, cuda_gpu, numpy_dtype, require_tensorrt

FP16_TOLERANCE = 2e-2
DEFAULT_WORKSPACE_MB = 2048


@dataclass(frozen=True)
class PlanOptions:
    """How TensorRT plans are built. max_batch and opt_batch may be left open (None) until a model's
    config gives them: `for_max_batch` fills them in; building needs both."""

    fp16: bool = False  # allow FP16 kernels (TensorRT 10; TensorRT 11 follows the ONNX graph's types)
    max_batch: int | None = None  # profile max batch (None: the model config's max_batch_size)
    opt_batch: int | None = None  # profile optimum batch (None: max_batch // 2)
    workspace_mb: int = DEFAULT_WORKSPACE_MB  # builder workspace limit, MiB
    timing_cache: Path | None = None  # builder timing cache file, read and updated (None: none)
    force: bool = False  # rebuild plans whose stamp says they are up to date

    def for_max_batch(self, config_max_batch: int) -> PlanOptions:
        """These options with max_batch (default: `config_max_batch`) and opt_batch (default: max/2) set;
        ValueError unless 1 <= opt_batch <= max_batch."""
        max_batch = self.max_batch or config_max_batch
        opt_batch = self.opt_batch or max(1, max_batch // 2)
        if not 1 <= opt_batch <= max_batch:
            raise ValueError(f"need 1 <= opt batch ({opt_batch}) <= max batch ({max_batch})")
        return dataclasses.replace(self, max_batch=max_batch, opt_batch=opt_batch)


def build_engine(onnx_path: Path, options: PlanOptions,
                 log: Callable[[str], None] = print) -> tuple[bytes, dict[str, Any]]:
    """ONNX file -> serialized plan, with one optimisation profile (1, opt, max) on every input."""
    if options.max_batch is None or options.opt_batch is None:
        raise ValueError("building a plan needs max_batch and opt_batch (PlanOptions.for_max_batch)")
    max_batch, opt_batch, timing_cache = options.max_batch, options.opt_batch, options.timing_cache
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10: required; 10: default
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path}: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (1, *rest), (opt_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    precision = "fp32"
    if options.fp16:
        if hasattr(trt.BuilderFlag, "FP16"):
            config.set_flag(trt.BuilderFlag.FP16)
            precision = "fp16"
        else:  # TensorRT 11: strongly typed networks, precision follows the ONNX graph's types
            log(f"TensorRT {trt.__version__} has no FP16 builder flag (strongly typed networks): "
                "building with the ONNX graph's FP32 types")
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: parity is checked at 1e-4
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log(f"timing cache {timing_cache} does not fit this GPU/TensorRT; starting an empty one")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(plan)), {"precision": precision, "max_batch": max_batch, "opt_batch": opt_batch,
                                     "workspace_mb": options.workspace_mb}


def engine_specs(plan: bytes) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The plan's own inputs and outputs (dtype, shape with -1 batch)."""
    trt = require_tensorrt()
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = numpy_dtype(trt, engine.get_tensor_dtype(name)).name
        spec = TensorSpec(name, dtype, tuple(engine.get_tensor_shape(name)))
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
    return inputs, outputs


def plan_parity(encoder_plan: bytes, head_plan: bytes, sample: Path, max_batch: int, precision: str) -> dict[str, Any]:
    """Run the two plans on the stored parity images and compare with the stored PyTorch outputs."""
    trt = require_tensorrt()
    images, reference = read_sample(sample)
    encoder, head = PlanRunner(encoder_plan), PlanRunner(head_plan)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, images.shape[0], max_batch):
        features = encoder({IMAGES: images[start:start + max_batch]})[FEATURES]
        for name, value in head({FEATURES: features}).items():
            parts.setdefault(name, []).append(value)
    candidate = {k: np.concatenate(v) for k, v in parts.items()}
    fp16 = precision == "fp16"
    report = compare(reference, candidate, FP16_TOLERANCE if fp16 else FP32_TOLERANCE,
                     near_tie=FP16_TOLERANCE if fp16 else 0.0)
    report.update(runtime="tensorrt", runtime_version=trt.__version__, providers=["TensorRT"],
                  num_images=int(images.shape[0]), precision=precision)
    return report


class TensorRTEngines:
    """The real thing: builds on this machine's GPU with the installed TensorRT."""

    def __init__(self) -> None:
        self.trt = require_tensorrt()
        self.version = self.trt.__version__
        self.gpu = cuda_gpu()[0] or "?"

    def build(self, onnx_path: Path, options: PlanOptions, log: Callable[[str], None]) -> tuple[bytes, dict[str, Any]]:
        return build_engine(onnx_path, options, log)

    def specs(self, plan: bytes) -> tuple[list[TensorSpec], list[TensorSpec]]:
        return engine_specs(plan)

    def parity(self, encoder_plan: bytes, head_plan: bytes, sample: Path, max_batch: int,
               precision: str) -> dict[str, Any]:
        return plan_parity(encoder_plan, head_plan, sample, max_batch, precision)
