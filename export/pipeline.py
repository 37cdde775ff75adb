"""One export: run directory -> ONNX graphs -> parity check [-> int8] -> Triton repositories (GPU and CPU flavours).

    result = export_run("runs/cc-cifar10-resnet34", Path("model_repository"), Path("model_repository_cpu"))
    result = export_run(run, output, cpu_output, precision=PrecisionOptions("int8"))   # model NAME_int8

The parity images come from the run directory (parity_sample.npz, saved by the trainer), so no data
set is needed. The output paths and the compatibility with the model's existing versions are checked
first, then parity; nothing is written to a repository unless both pass, and then each repository
gains a complete new version (export/versions.py) or nothing. An unfinished run is refused unless
`allow_unfinished` (and then marked so in the metadata and the card). The model card comes from the
run's cluster_stats.json and cluster_levels.json (written by the trainer) and results.json.

Reduced precision (model NAME_int8 or NAME_fp16, contract.names.precision_model): the fp32 graphs are
exported and parity-checked as always, then int8 quantizes the encoder (export/quantize.py) on the run's
calibration sample and judges it against the fp32 graph on the sample's other images (export/agreement.py):
below the thresholds it is refused (AgreementTooLow) before anything is written. fp16 keeps the fp32 graphs
for TensorRT to build FP16 plans from (export/tensorrt.py judges those); it goes to `output` only, as the CPU
repository's onnxruntime would run it in fp32. Both keep the judged images and the fp32 graph's outputs on
them (agreement_sample.npz), so plans built later are judged alike.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.card import ClusterStats, ModelCard
from contract.levels import ClusterLevels
from contract.metadata import ExtraOutput, ImageInput, ModelMetadata
from contract.names import (
    AGREEMENT_SAMPLE_FILE,
    CLUSTER_LEVELS_FILE,
    CLUSTER_SAMPLES_FILE,
    CLUSTER_STATS_FILE,
    FP16,
    FP32,
    PARITY_SAMPLE_FILE,
    PRECISIONS,
    PROJECTION_FILE,
    REQUIRED_OUTPUTS,
    RUN_FILES_SERVED,
    TENSORRT_ONNX_FILE,
    precision_model,
)
from contract.runs import RunInfo, read_run
from export import agreement, parity
from export.naming import check_name, model_name
from export.onnx_export import OPSET, export_onnx, graph_specs
from export.projection import write_projection
from export.quantize import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_IMAGES,
    CalibrationSample,
    quantize_encoder,
    read_calibration,
    write_tensorrt_encoding,
)
from export.triton import DEFAULT_OPTIONS, FLAVOURS, ModelSet, TritonOptions, default_names, write_repository
from export.versions import carried_names, check_compatible

JUDGE_BATCH = 64


class ExportRefused(ValueError):
    """The export would be wrong without an explicit flag (an unfinished run)."""


@dataclass(frozen=True)
class PrecisionOptions:
    """The precision an export is at and, below fp32, how it is made and judged (python -m export --precision)."""

    precision: str = FP32  # contract.names.PRECISIONS
    thresholds: agreement.Thresholds = agreement.Thresholds()
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES  # of the calibration sample; the rest judge
    calibration_method: str = CALIBRATION_METHODS[0]  # export.quantize.CALIBRATION_METHODS: percentile, minmax

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {list(PRECISIONS)}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {self.calibration_method!r}; "
                             f"choose from {list(CALIBRATION_METHODS)}")
        if self.calibration_images < 1:
            raise ValueError(f"--calibration-images must be >= 1, got {self.calibration_images}")


FP32_EXPORT = PrecisionOptions()


@dataclass
class Reduced:
    """What a reduced-precision export adds to the fp32 one."""

    encoder: Path  # the encoder graph the model serves (int8: the QDQ graph; fp16: the fp32 graph)
    agreement: dict[str, Any] | None  # int8: its figures against the fp32 graph (fp16: judged when plans are built)
    quantization: dict[str, Any] | None
    version_files: dict[str, Path]  # agreement_sample.npz
    encoder_files: dict[str, Path]  # int8: the TensorRT encoding beside the encoder's model.onnx


@dataclass
class ExportResult:
    name: str
    repositories: dict[str, Path]  # flavour -> the new version's ensemble directory, NAME/<version>
    parity: dict[str, Any]
    models: ModelSet

    @property
    def version(self) -> int:
        return int(next(iter(self.repositories.values())).name)


def build_metadata(name: str, meta: dict[str, Any], models: ModelSet, extra_outputs: tuple[ExtraOutput, ...],
                   source_run: Path, epoch: int, finished: bool, parity_report: dict[str, Any],
                   exported_at: str, crop: float = 1.0) -> ModelMetadata:
    """metadata.json of the ensemble directory: what a client needs to call the model, and its provenance.

    ValueError when the head graph's outputs beyond the required three are not the method's declared
    `extra_outputs` (names, dtypes and shapes)."""
    (images,) = models.encoder_inputs
    (features,) = models.encoder_outputs
    return ModelMetadata(
        name=name, num_clusters=int(meta["num_clusters"]),
        input=ImageInput(channels=images.shape[1], height=images.shape[2], width=images.shape[3], crop=crop),
        outputs={s.name: s for s in models.head_outputs}, extra_outputs=extra_outputs, method=meta["method"],
        dataset=meta["dataset"], feature_dim=features.shape[1], class_names=meta.get("class_names"),
        source_run=str(source_run), epoch=epoch, finished=finished, max_batch_size=models.max_batch_size,
        opset=OPSET, exported_at=exported_at, parity=parity_report)


def check_head_outputs(method: str, names: list[str], declared: tuple[ExtraOutput, ...]) -> None:
    """ValueError unless the head's outputs are the required three and exactly the declared extras."""
    extras = [n for n in names if n not in REQUIRED_OUTPUTS]
    if sorted(extras) != sorted(e.name for e in declared):
        raise ValueError(f"method {method!r}: head_outputs gives {extras} beyond {list(REQUIRED_OUTPUTS)}, but "
                         f"extra_outputs() declares {[e.name for e in declared]}")


def build_card(name: str, meta: dict[str, Any], info: RunInfo, epoch: int, exported_at: str | None,
               log: Callable[[str], None]) -> ModelCard:
    """The model card of this export (its version is set when written): provenance, metrics, clusters."""
    stats_file = info.path / CLUSTER_STATS_FILE
    stats = ClusterStats.read(stats_file) if stats_file.is_file() else None
    if stats is None:
        log(f"note: {stats_file} is missing (a run trained before cluster statistics, or unfinished): the card has "
            "no clusters and the gateway gives no names, low-confidence or OOD flags; finish the run (start its "
            "command again) to write it")
    levels_file = info.path / CLUSTER_LEVELS_FILE
    levels = ClusterLevels.read(levels_file) if levels_file.is_file() else None
    if levels is None and stats is not None:
        log(f"note: {levels_file} is missing (a run finished before merge hierarchies): the gateway answers at the "
            f"{len(stats.clusters)} trained clusters only; start the run's command again to write it")
    results = info.results
    training = {k: results.get(k) for k in ("epochs", "num_images", "train_seconds", "backbone") if k in results}
    return ModelCard(name=name, version=0, method=meta["method"], dataset=meta["dataset"], source_run=info.path.name,
                     finished=info.finished, epoch=epoch, exported_at=exported_at,
                     metrics=dict(results.get("metrics", {})), training=training, stats=stats, levels=levels)


def check_output(path: Path | None, what: str) -> None:
    """ValueError (before any work) when an output repository path cannot be a directory."""
    if path is None:
        return
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{what} {path}: {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK):
                raise ValueError(f"{what} {path}: {parent} is not writable")
            return


def reduce_precision(encoder: Path, head: Path, sample: CalibrationSample, name: str, opts: PrecisionOptions,
                     tmp: Path, log: Callable[[str], None]) -> Reduced:
    """int8: quantize the encoder and judge it against the fp32 graph (AgreementTooLow below the thresholds);
    fp16: keep the fp32 graphs for TensorRT. Both: the judged images and the fp32 outputs, for later plans."""
    reference, _ = parity.onnx_outputs(encoder, head, sample.judge, batch=JUDGE_BATCH)
    agreement.write_sample(tmp / AGREEMENT_SAMPLE_FILE, sample.judge, sample.judge_sources, reference,
                           opts.thresholds)
    files = {AGREEMENT_SAMPLE_FILE: tmp / AGREEMENT_SAMPLE_FILE}
    if opts.precision == FP16:
        log(f"fp16: the fp32 graphs, for TensorRT to build FP16 plans from (python -m export.tensorrt); they are "
            f"judged against the fp32 graph on {len(sample.judge)} images when built")
        return Reduced(encoder, None, None, files, {})
    quantized = tmp / "encoder_int8.onnx"
    quantization = quantize_encoder(encoder, quantized, sample.calibrate, opts.calibration_method)
    candidate, providers = parity.onnx_outputs(quantized, head, sample.judge, batch=JUDGE_BATCH)
    report = agreement.measure(reference, candidate, opts.thresholds)
    report.update(images=sample.description, reference="the fp32 graphs (onnxruntime)", runtime="onnxruntime",
                  runtime_version=quantization["onnxruntime"], providers=providers)
    log(f"int8 agreement {'PASSED' if report['passed'] else 'FAILED'} ({opts.calibration_method} calibration, "
        f"{sample.description}; {', '.join(providers)}): {agreement.describe(report)}")
    agreement.check(report, f"{name} (int8)")
    # TensorRT runs symmetric ranges only: the same calibration images quantized again with them, in int8. Judged
    # here as onnxruntime runs it (TensorRT's plans are judged when built) by the same thresholds, and recorded.
    symmetric, tensorrt = tmp / "encoder_int8_symmetric.onnx", tmp / TENSORRT_ONNX_FILE
    quantize_encoder(encoder, symmetric, sample.calibrate, opts.calibration_method, symmetric=True)
    write_tensorrt_encoding(symmetric, tensorrt)
    encoded, _ = parity.onnx_outputs(tensorrt, head, sample.judge, batch=JUDGE_BATCH)
    encoded_report = agreement.measure(reference, encoded, opts.thresholds)
    agreement.check(encoded_report, f"{name}'s int8 encoder in its TensorRT encoding (run by onnxruntime)")
    quantization.update(images=sample.description, tensorrt_encoding={
        k: encoded_report[k] for k in ("cluster_agreement", "embedding_cosine_mean", "embedding_cosine_min",
                                       "probability_max_abs_diff")})
    return Reduced(quantized, report, quantization, files, {TENSORRT_ONNX_FILE: tensorrt})


def export_run(run: Path, output: Path, cpu_output: Path | None, name: str | None = None, max_batch: int = 64,
               tolerance: float = parity.FP32_TOLERANCE, allow_unfinished: bool = False,
               options: TritonOptions = DEFAULT_OPTIONS, output_kind: str = "gpu", projection: str = "none",
               log: Callable[[str], None] = print, precision: PrecisionOptions = FP32_EXPORT) -> ExportResult:
    """Export a run as a new version in `output` (onnxruntime_onnx on KIND_GPU, or KIND_CPU with
    output_kind "cpu") and `cpu_output` (python backend, KIND_CPU; not for fp16), as model NAME at fp32,
    NAME_int8 or NAME_fp16 (`precision`).

    Raises ValueError for unusable output paths, IncompatibleVersion when the model's existing versions
    have another interface (and not options.force), ParityError (after printing the numbers) when
    onnxruntime does not reproduce PyTorch, AgreementTooLow when an int8 encoder's answers are too far
    from the fp32 graph's, ExportRefused for an unfinished run; all before writing.
    """
    from train.checkpoint import load_run

    if max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {max_batch}")
    if output_kind not in ("gpu", "cpu"):
        raise ValueError(f"output kind must be gpu or cpu, got {output_kind!r}")
    if precision.precision == FP16 and cpu_output is not None:
        log("fp16 is built by TensorRT: the CPU repository gets no fp16 model (its onnxruntime would run fp32)")
        cpu_output = None
    outputs = [Path(output), *([Path(cpu_output)] if cpu_output is not None else [])]
    if len(outputs) == 2 and outputs[0].resolve() == outputs[1].resolve():
        raise ValueError(f"--output and --cpu-output are the same directory ({output}); the two flavours need "
                         "their own repositories")
    check_output(Path(output), "--output")
    check_output(None if cpu_output is None else Path(cpu_output), "--cpu-output")
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
    name = precision_model(check_name(name) if name else model_name(meta["method"], meta["dataset"]),
                           precision.precision)
    run_dir = loaded.path.parent.resolve()
    log(f"exporting {meta['method']} on {meta['dataset']} (epoch {loaded.epoch}"
        f"{'' if info.finished else ', UNFINISHED'}) from {run_dir} as {name!r}")
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        tmp = Path(tmp)
        encoder, head, head_names = export_onnx(loaded.model, meta["in_channels"], meta["image_size"], tmp)
        extra_outputs = loaded.model.extra_outputs()
        check_head_outputs(meta["method"], head_names, extra_outputs)
        (enc_in, enc_out), (head_in, head_out) = graph_specs(encoder), graph_specs(head)
        models = ModelSet(name, encoder, head, enc_in, enc_out, head_in, head_out, max_batch, None, {})
        exported_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        models.metadata = build_metadata(name, meta, models, extra_outputs, run_dir, loaded.epoch, info.finished,
                                         {}, exported_at, loaded.config.eval_crop()).replace(
                                             precision=precision.precision)
        for repository in outputs:  # before parity: a refusal costs nothing
            check_compatible(repository, models.metadata, options.force)
        calibration = None if precision.precision == FP32 else read_calibration(
            info.path, precision.calibration_images, log)
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
        models.version_files = {PARITY_SAMPLE_FILE: tmp / PARITY_SAMPLE_FILE}
        models.parity = report
        if calibration is not None:
            reduced = reduce_precision(encoder, head, calibration, name, precision, tmp, log)
            models.encoder_onnx, models.encoder_files = reduced.encoder, reduced.encoder_files
            models.version_files |= reduced.version_files
            report = {**report, "graph": "fp32 (the graphs the reduced precision is made from)"}
            models.parity = {**report, "precision": precision.precision, "agreement": reduced.agreement}
            models.metadata = models.metadata.replace(agreement=reduced.agreement, quantization=reduced.quantization)
        models.metadata = models.metadata.replace(parity=report)
        models.card = dataclasses.replace(build_card(name, meta, info, loaded.epoch, exported_at, log),
                                          precision=precision.precision, agreement=models.metadata.agreement)
        models.version_files |= {f: info.path / f for f in RUN_FILES_SERVED if (info.path / f).is_file()}
        if write_projection(info.path / CLUSTER_SAMPLES_FILE, tmp / PROJECTION_FILE, projection, log):
            models.version_files[PROJECTION_FILE] = tmp / PROJECTION_FILE
        flavours = {Path(output): FLAVOURS["onnxruntime" if output_kind == "gpu" else "onnxruntime_cpu"]}
        if cpu_output is not None:
            flavours[Path(cpu_output)] = FLAVOURS["python"]
        repositories = {}
        for repository, flavour in flavours.items():
            names, note = carried_names(repository, models.metadata, default_names(models))
            if note:
                log(f"{repository.resolve()}: {note}")
            repositories[flavour.name] = write_repository(repository, models, flavour, options, names)
    for flavour_name, path in repositories.items():
        log(f"wrote {flavour_name} repository: {name} version {path.name} ({name}, {name}_encoder, {name}_head) "
            f"under {path.parent.parent.resolve()}")
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
