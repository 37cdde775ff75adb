"""A trained clustering model -> two ONNX graphs: encoder (uint8 images -> features) and head.

    encoder: images UINT8 (B, C, S, S) -> /255 -> backbone (its Standardize buffers) -> features FP32 (B, F)
    head:    features FP32 (B, F) -> every output of `model.head_outputs`, in its dict order
             (embedding FP32 (B, D), probabilities FP32 (B, K), cluster INT64 (B,), extras such as
             CoHiClust's path INT64 (B, L))

Separate graphs so several heads can share one encoder. Opset pinned (17), batch dimension dynamic,
weights inside the file, onnx.checker passes. TorchScript-based exporter (dynamo=False): the robust
path for these plain conv/MLP graphs in torch 2.14 (it warns that it is the legacy exporter).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from contract.metadata import TensorSpec
from contract.names import FEATURES, IMAGES, REQUIRED_OUTPUTS
from train.methods.base import ClusteringMethod

OPSET = 17
BATCH = "batch"

_ONNX_TO_NUMPY = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT8: "int8", onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.BOOL: "bool",
}


class EncoderGraph(nn.Module):
    """uint8 pixels -> float [0, 1] (as in training: x.float() / 255) -> backbone features."""

    def __init__(self, model: ClusteringMethod) -> None:
        super().__init__()
        self.backbone = model.backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images.float().div(255))


class HeadGraph(nn.Module):
    """features -> the values of `head_outputs`, as a tuple in the dict's key order."""

    def __init__(self, model: ClusteringMethod, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model.head_outputs(features)
        return tuple(outputs[name] for name in self.names)


def head_output_names(model: ClusteringMethod, features: torch.Tensor) -> list[str]:
    """The head's output names in dict order; the contract's three must be there."""
    with torch.no_grad():
        names = list(model.head_outputs(features))
    missing = [n for n in REQUIRED_OUTPUTS if n not in names]
    if missing:
        raise ValueError(f"{type(model).__name__}.head_outputs lacks {missing}; it returned {names}")
    return names


def _export(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_names: list[str],
            opset: int) -> None:
    """Export with a dynamic batch axis; the outputs' other dims are pinned from a real forward pass
    (the TorchScript exporter leaves some symbolic, e.g. after F.normalize)."""
    with torch.no_grad():
        results = module(example)
    results = results if isinstance(results, tuple) else (results,)
    axes = {name: {0: BATCH} for name in (input_name, *output_names)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # "legacy TorchScript-based exporter"
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=output_names,
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
                          external_data=False)
    model = onnx.load(str(path))
    for value, result in zip(model.graph.output, results, strict=True):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != result.dim():
            raise RuntimeError(f"{path}: output {value.name!r} has rank {len(dims)}, PyTorch gives {result.dim()}")
        for dim, size in zip(list(dims)[1:], result.shape[1:], strict=True):
            dim.Clear()
            dim.dim_value = int(size)
    onnx.save(model, str(path))
    onnx.checker.check_model(model, full_check=True)
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise RuntimeError(f"{path}: weights {external[:3]} were written as external data")


def export_onnx(model: ClusteringMethod, in_channels: int, image_size: int, out_dir: Path,
                opset: int = OPSET) -> tuple[Path, Path, list[str]]:
    """Write out_dir/encoder.onnx and out_dir/head.onnx; returns both paths and the head's output names."""
    model = model.eval().cpu()
    out_dir.mkdir(parents=True, exist_ok=True)
    images = torch.randint(0, 256, (2, in_channels, image_size, image_size), dtype=torch.uint8)
    encoder = EncoderGraph(model).eval()
    with torch.no_grad():
        features = encoder(images)
    names = head_output_names(model, features)
    encoder_path, head_path = out_dir / "encoder.onnx", out_dir / "head.onnx"
    _export(encoder, images, encoder_path, IMAGES, [FEATURES], opset)
    _export(HeadGraph(model, names).eval(), features, head_path, FEATURES, names, opset)
    return encoder_path, head_path, names


def graph_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX file as TensorSpecs (the first dimension must be the dynamic batch)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}

    def spec(value) -> TensorSpec:
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if not dims or dims[0] != -1 or -1 in dims[1:]:
            raise ValueError(f"{path}: tensor {value.name!r} has shape {dims}; expected a dynamic batch "
                             "dimension first and fixed dimensions after it")
        return TensorSpec(value.name, _ONNX_TO_NUMPY[t.elem_type], tuple(dims))

    inputs = [spec(v) for v in graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in graph.output]
