"""One export: run directory -> ONNX graphs -> parity check -> Triton repositories (GPU and CPU flavours).

    result = export_run("runs/cc-cifar10-resnet34", Path("model_repository"), Path("model_repository_cpu"))

The parity images come from the run directory (parity_sample.npz, saved by the trainer), so no data
set is needed. Nothing is written to a repository unless parity passes. An unfinished run is refused
unless `allow_unfinished` (and then marked so in the metadata); a model of the same name exported from
another run is not replaced unless `force`.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.metadata import ImageInput, ModelMetadata
from contract.names import METADATA_FILE, PARITY_SAMPLE_FILE
from contract.runs import read_run
from export import parity
from export.naming import check_name, model_name
from export.onnx_export import OPSET, export_onnx, graph_specs
from export.triton import FLAVOURS, ModelSet, write_repository


class ExportRefused(ValueError):
    """The export would be wrong without an explicit flag (unfinished run, a model of another run)."""


@dataclass
class ExportResult:
    name: str
    repositories: dict[str, Path]  # flavour -> ensemble directory
    parity: dict[str, Any]
    models: ModelSet


def build_metadata(name: str, meta: dict[str, Any], models: ModelSet, source_run: Path, epoch: int,
                   finished: bool, parity_report: dict[str, Any]) -> ModelMetadata:
    """metadata.json of the ensemble directory: what a client needs to call the model, and its provenance."""
    (images,) = models.encoder_inputs
    (features,) = models.encoder_outputs
    return ModelMetadata(
        name=name, num_clusters=int(meta["num_clusters"]),
        input=ImageInput(channels=images.shape[1], height=images.shape[2], width=images.shape[3]),
        outputs={s.name: s for s in models.head_outputs}, method=meta["method"], dataset=meta["dataset"],
        feature_dim=features.shape[1], class_names=meta.get("class_names"), source_run=str(source_run),
        epoch=epoch, finished=finished, max_batch_size=models.max_batch_size, opset=OPSET,
        exported_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), parity=parity_report)


def check_replacing(repository: Path, name: str, source_run: Path, force: bool) -> None:
    """ExportRefused when `repository` already serves `name` exported from another run (and not `force`)."""
    file = repository / name / METADATA_FILE
    if force or not file.is_file():
        return
    try:
        existing = ModelMetadata.read(file).source_run
    except ValueError:
        existing = None  # unreadable: replacing it is the fix
    if existing is not None and existing != str(source_run):
        raise ExportRefused(f"{repository}/{name} was exported from another run ({existing}); give --name to export "
                            f"{source_run} beside it, or --force to replace it")


def export_run(run: Path, output: Path, cpu_output: Path | None, name: str | None = None, max_batch: int = 64,
               tolerance: float = parity.FP32_TOLERANCE, allow_unfinished: bool = False, force: bool = False,
               log: Callable[[str], None] = print) -> ExportResult:
    """Export a run to `output` (onnxruntime_onnx, KIND_GPU) and `cpu_output` (python backend, KIND_CPU).

    Raises ParityError (after printing the numbers) when onnxruntime does not reproduce PyTorch,
    ExportRefused for an unfinished run or a model of another run (see the module docstring).
    """
    from train.checkpoint import load_run

    if max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {max_batch}")
    info = read_run(run)
    if not info.finished and not allow_unfinished:
        raise ExportRefused(f"{info.path} has not finished training (no {info.path}/results.json with "
                            "\"finished\": true); finish it, or export it as it is with --allow-unfinished")
    sample = info.path / PARITY_SAMPLE_FILE
    if not sample.is_file():
        raise FileNotFoundError(f"{sample} is missing: it is written when training starts (runs trained before "
                                "this version lack it; start the run's command again to write it)")
    loaded = load_run(run)
    meta = {**loaded.meta, "method": loaded.meta.get("method", loaded.config.method)}
    name = check_name(name) if name else model_name(meta["method"], meta["dataset"])
    run_dir = loaded.path.parent.resolve()
    for repository in (output, cpu_output):
        if repository is not None:
            check_replacing(Path(repository), name, run_dir, force)
    log(f"exporting {meta['method']} on {meta['dataset']} (epoch {loaded.epoch}"
        f"{'' if info.finished else ', UNFINISHED'}) from {run_dir} as {name!r}")
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        tmp = Path(tmp)
        encoder, head, _ = export_onnx(loaded.model, meta["in_channels"], meta["image_size"], tmp)
        images, stored = parity.read_sample(sample)
        reference = parity.torch_outputs(loaded.model, images)
        report = parity.check_onnx(encoder, head, images, reference, tolerance)
        report["images"] = f"{sample.name}: {images.shape[0]} training images"
        if stored:  # the checkpoint reproduces what the trainer's model gave at the end of training
            report["training_outputs"] = parity.compare(stored, reference, tolerance)["outputs"]
        log(format_report(report))
        parity.check(report, f"{name} (onnxruntime vs PyTorch)")
        np.savez_compressed(tmp / PARITY_SAMPLE_FILE, images=images,
                            **{f"reference_{k}": v for k, v in reference.items()})
        (enc_in, enc_out), (head_in, head_out) = graph_specs(encoder), graph_specs(head)
        models = ModelSet(name, encoder, head, enc_in, enc_out, head_in, head_out, max_batch, None, report,
                          tmp / PARITY_SAMPLE_FILE)
        models.metadata = build_metadata(name, meta, models, run_dir, loaded.epoch, info.finished, report)
        repositories = {"onnxruntime": write_repository(output, models, FLAVOURS["onnxruntime"])}
        if cpu_output is not None:
            repositories["python"] = write_repository(cpu_output, models, FLAVOURS["python"])
    for flavour, path in repositories.items():
        log(f"wrote {flavour} repository models {name}, {name}_encoder, {name}_head under {path.parent}")
    return ExportResult(name, repositories, report, models)


def format_report(report: dict[str, Any]) -> str:
    parts = []
    for name, values in report["outputs"].items():
        if "max_abs_diff" in values:
            parts.append(f"{name} max|diff| {values['max_abs_diff']:.2e}")
        else:
            parts.append(f"{name} {values['mismatches']} mismatches")
    verdict = "PASSED" if report["passed"] else "FAILED"
    return (f"parity {verdict} ({report.get('runtime', '?')} {report.get('providers', '')}, "
            f"{report.get('num_images', '?')} images, batches {report.get('batch_sizes', '?')}, "
            f"tolerance {report['tolerance']:g}): " + ", ".join(parts))
