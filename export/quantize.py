"""int8: the encoder graph quantized with onnxruntime's static QDQ quantization, calibrated on the run's own images.

    sample = read_calibration(run_dir, calibration_images=512, log=print)  # calibrate on some, judge on the others
    record = quantize_encoder(encoder_fp32, encoder_int8, sample.calibrate, "percentile")  # what onnxruntime serves
    quantize_encoder(encoder_fp32, symmetric_int8, sample.calibrate, "percentile", symmetric=True)
    write_tensorrt_encoding(symmetric_int8, encoder_int8_tensorrt)      # the same calibration, as TensorRT reads it

How, and why (figures in docs/export.md, "int8"):
- QDQ format (QuantizeLinear/DequantizeLinear pairs around float ops): onnxruntime fuses them into its integer
  kernels, TensorRT builds an explicitly quantized engine from them (no calibrator), NVIDIA's onnxruntime backend
  runs them as they are.
- weights int8, symmetric, per output channel (ResNet convolutions differ widely from channel to channel).
- activations, for onnxruntime (model.onnx): uint8 with asymmetric ranges, what its x86 integer kernels (uint8 x
  int8 dot products, VNNI) run fastest: a range that starts at 0 after a ReLU lets onnxruntime drop the ReLU
  into the quantization, where a symmetric range leaves a DequantizeLinear -> Relu -> QuantizeLinear in float
  after every convolution (a quarter of the int8 graph's time; 2.3x fp32 instead of 3.1x at batch 8 and 64,
  bench/export_speed.py). TensorRT accepts only symmetric int8, so the TensorRT graph (model.tensorrt.onnx) is
  quantized again from the same calibration images with symmetric ranges, encoded as uint8 with zero point 128
  by the quantizer and rewritten by `tensorrt_encoding` to int8 with zero point 0 (the same numbers, q_int8 =
  q_uint8 - 128); both graphs are judged against fp32 at export.
- the preprocessing inside the encoder (uint8 -> float, /255, the standardisation) and the first convolution stay
  float: the pixels reach the network exactly as in fp32 (a requantized input would lose the pixel grid), at
  the cost of one convolution of three input channels.
- onnxruntime's quantization pre-processing first (shape inference, constant folding): without it the exporter's
  shared bias constants (Identity nodes) keep most convolutions of ResNet-18 from being fused.
- the head (a few small matrix products) stays fp32: quantizing it saves nothing measurable and costs accuracy.
- calibration: Percentile by default (each activation's range is the 99.999th percentile of its absolute values
  on the calibration images: a rare outlier does not widen the steps of every other value), or MinMax (the
  whole range seen). Percentile agreed better with fp32 on both runs measured (docs/export.md, "int8");
  onnxruntime's Entropy gave exactly MinMax's figures there, so it is not offered. The calibration images go
  through onnxruntime one batch at a time, each batch's histograms merged into the last (its strided
  calibration), so memory holds one batch's activations, not all of them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from contract.names import CALIBRATION_SAMPLE_FILE, IMAGES, PARITY_SAMPLE_FILE

if TYPE_CHECKING:  # onnx and onnxruntime are imported on use: `python -m export --help` reads the constants
    import onnx

CALIBRATION_METHODS = ("percentile", "minmax")
DEFAULT_CALIBRATION_IMAGES = 512
CALIBRATION_BATCH = 32
ACTIVATION_ZERO_POINT = 128  # the quantizer's uint8 encoding of a symmetric range


@dataclass(frozen=True)
class CalibrationSample:
    """The run's images split in two: those quantized with and those agreement is judged on."""

    calibrate: np.ndarray  # uint8 (n, C, S, S)
    judge: np.ndarray  # uint8 (m, C, S, S), none of them in `calibrate`
    judge_sources: np.ndarray  # (m,) where each judged image came from
    description: str  # for the metadata: which file, how many images each


def read_calibration(run_dir: Path, calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
                     log: Callable[[str], None] = print) -> CalibrationSample:
    """The run's calibration sample (written by the trainer at the end of training): its first
    `calibration_images` images calibrate, the others judge. A run without one (trained before it existed,
    or unfinished) falls back to its parity sample, with a warning: every other image calibrates, the rest judge.

    ValueError when fewer than one image would be left on either side."""
    if calibration_images < 1:
        raise ValueError(f"--calibration-images must be >= 1, got {calibration_images}")
    sample = run_dir / CALIBRATION_SAMPLE_FILE
    if sample.is_file():
        with np.load(sample, allow_pickle=False) as data:
            images, sources = data["images"], data["sources"]
        if calibration_images >= len(images):
            raise ValueError(f"--calibration-images {calibration_images} leaves none of the {len(images)} images of "
                             f"{sample} to judge agreement on; use fewer")
        return CalibrationSample(images[:calibration_images], images[calibration_images:],
                                 sources[calibration_images:],
                                 f"{sample.name}: calibrated on {calibration_images} training images, judged on the "
                                 f"other {len(images) - calibration_images}")
    parity = run_dir / PARITY_SAMPLE_FILE
    if not parity.is_file():
        raise FileNotFoundError(f"{sample} and {parity} are missing: start the run's training command again to "
                                "write them")
    with np.load(parity, allow_pickle=False) as data:
        images = data["images"]
        sources = data["sources"] if "sources" in data.files else np.array([str(i) for i in range(len(images))])
    calibrate = images[::2][:calibration_images]
    log(f"warning: {sample} is missing (a run trained before calibration samples, or unfinished): calibrating on "
        f"{len(calibrate)} images of {parity.name} and judging agreement on its other {len(images[1::2])}, a coarse "
        f"judgement (one image is {1 / max(1, len(images[1::2])):.1%}); start the run's training command again "
        "(a finished run is evaluated again) to write the calibration sample")
    return CalibrationSample(calibrate, images[1::2], sources[1::2],
                             f"{parity.name} (no calibration sample): calibrated on {len(calibrate)} images, judged "
                             f"on the other {len(images[1::2])}")


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over uint8 images: {images: batch} until exhausted, over the
    batches [start, end) that `set_range` chose (its strided calibration: one range per collection)."""

    def __init__(self, images: np.ndarray, batch: int) -> None:
        self._batches = [images[i:i + batch] for i in range(0, len(images), batch)]
        self._pending = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pending = iter(self._batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._pending, None)
        return None if batch is None else {IMAGES: batch}


def float_prefix(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The encoder's nodes up to and including its first convolution (uint8 -> float, /255, standardisation,
    the first conv): what stays float."""
    nodes = list(model.graph.node)
    first = next((i for i, n in enumerate(nodes) if n.op_type == "Conv"), None)
    if first is None:
        raise ValueError("the encoder graph has no convolution to quantize")
    return nodes[:first + 1]


@contextmanager
def _quiet_onnxruntime_quantization():
    """onnxruntime's quantizer logs advice through the root logger and prints its histogram steps; keep both off
    the export's output (its errors still raise)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def tidy(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop what the quantizer leaves that is not the graph: value_info (onnx.compose would rename a graph output
    listed there when joining encoder and head) and opset imports of domains no node uses."""
    del model.graph.value_info[:]
    used = {n.domain for n in model.graph.node}
    keep = [o for o in model.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return model


def quantize_encoder(encoder: Path, out: Path, images: np.ndarray, method: str = CALIBRATION_METHODS[0],
                     symmetric: bool = False) -> dict[str, Any]:
    """fp32 encoder graph -> int8 QDQ graph at `out`, calibrated on `images` uint8 (n, C, S, S), its activation
    ranges asymmetric (onnxruntime's) or `symmetric` (TensorRT's); returns what the metadata records about it."""
    import onnx
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose from {list(CALIBRATION_METHODS)}")
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp, _quiet_onnxruntime_quantization():
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(encoder), str(prepared))
        kept_float = float_prefix(onnx.load(str(prepared)))
        quantize_static(
            str(prepared), str(out), _Batches(images, CALIBRATION_BATCH), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method],
            nodes_to_exclude=[n.name for n in kept_float],
            # CalibStridedMinMax (any method, despite its name): collect one batch at a time, merging as it goes
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, "CalibStridedMinMax": 1},
            calibration_providers=["CPUExecutionProvider"])
    model = tidy(onnx.load(str(out)))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out))
    return {"parts": ["encoder"], "format": "QDQ", "weights": "int8, symmetric, per output channel",
            "activations": (f"symmetric ranges, uint8 with zero point {ACTIVATION_ZERO_POINT} (int8 with zero point 0 "
                            "in the TensorRT encoding)") if symmetric else "uint8, asymmetric ranges",
            "float": [f"{n.op_type} {n.name}" for n in kept_float], "calibration_method": method,
            "calibration_images": int(len(images)), "onnxruntime": ort_version}


def tensorrt_encoding(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same QDQ graph with its activations as int8 with zero point 0 (what TensorRT accepts) instead of uint8
    with zero point 128: every uint8 zero point of a QuantizeLinear/DequantizeLinear becomes int8 (value - 128).
    ValueError when one is not 128 (an asymmetric range, which TensorRT cannot run)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    zero_points = {n.input[2] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2}
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name in zero_points and tensor.data_type == onnx.TensorProto.UINT8:
            values = numpy_helper.to_array(tensor)
            if np.any(values != ACTIVATION_ZERO_POINT):
                raise ValueError(f"zero point {tensor.name} is {values.tolist()}, not {ACTIVATION_ZERO_POINT}: an "
                                 "asymmetric range, which TensorRT cannot run")
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(
                (values.astype(np.int16) - ACTIVATION_ZERO_POINT).astype(np.int8), tensor.name))
    onnx.checker.check_model(model, full_check=True)
    return model


def write_tensorrt_encoding(quantized: Path, out: Path) -> None:
    """`tensorrt_encoding` of the QDQ graph file `quantized`, written to `out`."""
    import onnx

    onnx.save(tensorrt_encoding(onnx.load(str(quantized))), str(out))
