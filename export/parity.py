"""Parity: the exported graphs must give what PyTorch gives, on real images, or the export fails.

    images, stored = read_sample(run_dir / "parity_sample.npz")  # saved by the trainer
    reference = torch_outputs(model, images)                  # model.predict on images / 255
    candidate, providers = onnx_outputs(encoder, head, images)  # onnxruntime, encoder then head
    report = compare(reference, candidate, tolerance=1e-4)    # raises nothing; check() does

Float outputs pass when max |a - b| <= tolerance; integer outputs (cluster, CoHiClust's path) must be
identical. This is the fp32 check (of the ONNX graphs, and of fp32 TensorRT plans); a reduced-precision
model is judged by its agreement with the fp32 graph instead (export/agreement.py). Torch is imported
lazily, so export/tensorrt.py can use compare() inside the serving container.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contract.names import FEATURES, IMAGES
from contract.sessions import open_session

FP32_TOLERANCE = 1e-4
DYNAMIC_BATCHES = (1, 17)


class ParityError(RuntimeError):
    """The exported model does not reproduce the PyTorch model."""


def read_sample(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A run's or repository's parity_sample.npz -> (images uint8 (n, C, S, S), reference outputs by name)."""
    with np.load(path, allow_pickle=False) as data:
        images = data["images"]
        reference = {k.removeprefix("reference_"): data[k] for k in data.files if k.startswith("reference_")}
    return images, reference


def torch_outputs(model, images: np.ndarray) -> dict[str, np.ndarray]:
    """PyTorch reference: model.predict on uint8 images scaled to [0, 1] (as in training)."""
    import torch

    with torch.no_grad():
        out = model.eval().predict(torch.from_numpy(images).float().div(255))
    return {k: v.cpu().numpy() for k, v in out.items()}


def onnx_outputs(encoder: Path, head: Path, images: np.ndarray, providers: Sequence[str] | None = None,
                 batch: int | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """Run encoder then head with onnxruntime (`batch` images at a time; None: all at once), each session opened
    as the gateway opens its sessions (contract.sessions); returns the head's outputs and the providers really used."""
    enc, hd = open_session(encoder, providers=providers), open_session(head, providers=providers)
    names = [o.name for o in hd.get_outputs()]
    step = batch or max(1, len(images))
    parts = []
    for start in range(0, len(images), step):
        (features,) = enc.run([FEATURES], {IMAGES: images[start:start + step]})
        parts.append(hd.run(names, {FEATURES: features}))
    outputs = {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(names)}
    return outputs, sorted(set(enc.get_providers()) | set(hd.get_providers()))


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
            tolerance: float = FP32_TOLERANCE) -> dict[str, Any]:
    """Per-output differences and the verdict; never raises (see `check`)."""
    report: dict[str, Any] = {"passed": True, "tolerance": tolerance, "outputs": {}, "problems": []}
    missing = sorted(set(reference) - set(candidate))
    if missing:
        report["problems"].append(f"outputs missing from the export: {missing}")
    for name, ref in reference.items():
        if name not in candidate:
            continue
        got = np.asarray(candidate[name])
        if got.shape != ref.shape:
            got = got.reshape(ref.shape) if got.size == ref.size else got
        if got.shape != ref.shape:
            report["problems"].append(f"{name}: shape {got.shape}, PyTorch gives {ref.shape}")
            continue
        if np.issubdtype(ref.dtype, np.floating):
            diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
            report["outputs"][name] = {"max_abs_diff": diff}
            if not diff <= tolerance:  # also catches NaN
                report["problems"].append(f"{name}: max |difference| {diff:.3g} > tolerance {tolerance:g}")
        else:
            rows = (got != ref).reshape(ref.shape[0], -1).any(axis=1)
            report["outputs"][name] = {"mismatches": int(rows.sum()),
                                       "agreement": float(1 - rows.mean()) if rows.size else 1.0}
            if rows.any():
                report["problems"].append(f"{name}: {int(rows.sum())} of {rows.size} rows differ")
    report["passed"] = not report["problems"]
    return report


def check(report: dict[str, Any], what: str) -> None:
    """Raise ParityError with the numbers when a report did not pass."""
    if not report["passed"]:
        raise ParityError(f"parity check failed for {what}: " + "; ".join(report["problems"]))


def check_onnx(encoder: Path, head: Path, images: np.ndarray, reference: dict[str, np.ndarray],
               tolerance: float = FP32_TOLERANCE, providers: Sequence[str] | None = None) -> dict[str, Any]:
    """onnxruntime vs the reference on all images, and again at batch sizes 1 and 17 (dynamic batch)."""
    candidate, used = onnx_outputs(encoder, head, images, providers)
    report = compare(reference, candidate, tolerance)
    batches = [b for b in DYNAMIC_BATCHES if b <= images.shape[0]]
    for batch in batches:
        part, _ = onnx_outputs(encoder, head, images[:batch], providers)
        sub = compare({k: v[:batch] for k, v in reference.items()}, part, tolerance)
        report["problems"] += [f"batch {batch}: {p}" for p in sub["problems"]]
    report["passed"] = not report["problems"]
    import onnxruntime as ort

    report.update(runtime="onnxruntime", runtime_version=ort.__version__, providers=used,
                  num_images=int(images.shape[0]), batch_sizes=[*batches, int(images.shape[0])])
    return report
