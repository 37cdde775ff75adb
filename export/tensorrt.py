"""TensorRT plans from the exported ONNX graphs, built in place in a Triton model repository.

    python -m export.tensorrt --repository /models [--fp16] [--max-batch N] [--opt-batch N]

For every model of the repository (ensembles with a complete version) and every version v of it,
NAME_encoder/<v>/ and NAME_head/<v>/ get model.plan built from model.onnx on the GPU this runs on
(versions share one config, so every version needs its plan), and their config.pbtxt becomes a
tensorrt_plan config generated from the engine's own I/O (names, dtypes, dims match the plan and its
profile; batching, instances and version policy kept). model.onnx stays (the gateway's embedded
backend uses it). Each version's plans then run on the parity images stored at export time
(NAME/<v>/parity_sample.npz) and must match PyTorch's outputs (fp32: 1e-4, TF32 off; fp16: 2e-2,
cluster flips only at near ties); the figures go to that version's parity.json and metadata.json
under "tensorrt". The repository's export lock is held meanwhile (export/versions.py).
A plan already built for the same GPU, TensorRT version, ONNX
file and settings is kept (its stamp, model.plan.json, says so): the serving container may call this
at every start; --force rebuilds.

Three modules: export/trt_runtime.py (is TensorRT usable, CUDA calls, running a plan),
export/trt_build.py (building and inspecting plans: `PlanOptions`, `TensorRTEngines`) and this one, the repository
rewrite, which needs no GPU itself: it takes the engines object as an argument.

A plan only runs on the GPU model and TensorRT version it was built with, so build it where it is
served: inside NVIDIA's Triton container (docker/), which has TensorRT. Never fakes an engine:
without tensorrt or a CUDA GPU it exits 2 saying what is missing.
Imports neither torch nor onnx: runs with tensorrt, numpy, protobuf and tritonclient[grpc].
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contract import files
from contract.metadata import ModelMetadata, TensorSpec
from contract.names import METADATA_FILE, ONNX_MODEL_FILE, PARITY_FILE, PARITY_SAMPLE_FILE, PLAN_MODEL_FILE
from contract.repository import complete_versions
from export.parity import check
from export.triton import (
    FLAVOURS,
    component_config,
    list_models,
    options_from_config,
    read_config,
    specs_from_config,
    write_config,
)
from export.trt_build import DEFAULT_WORKSPACE_MB, PlanOptions, TensorRTEngines
from export.trt_runtime import TensorRTUnavailable, missing_requirements, require_tensorrt
from export.versions import export_lock

STAMP_SUFFIX = ".json"
__all__ = ["PlanOptions", "TensorRTUnavailable", "convert_model", "convert_repository", "missing_requirements"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wanted_stamp(engines, onnx_file: Path, options: PlanOptions) -> dict[str, Any]:
    """What a plan must have been built from to be reused: TensorRT version, GPU, ONNX file, settings."""
    return {"tensorrt_version": engines.version, "gpu": engines.gpu, "onnx_sha256": sha256(onnx_file),
            "fp16_requested": options.fp16, "max_batch": options.max_batch, "opt_batch": options.opt_batch}


def up_to_date(plan_file: Path, wanted: dict[str, Any]) -> bool:
    """The plan exists and its stamp records exactly `wanted`."""
    stamp = plan_file.with_name(plan_file.name + STAMP_SUFFIX)
    if not (plan_file.is_file() and stamp.is_file()):
        return False
    try:
        recorded = files.read_json(stamp)
    except ValueError:
        return False
    return isinstance(recorded, dict) and {k: recorded.get(k) for k in wanted} == wanted


def same_specs(engine: list[TensorSpec], expected: list[TensorSpec], model: str) -> None:
    """RuntimeError unless the plan's I/O equals the exported graph's (or the ensemble would not connect)."""
    got = {(s.name, s.dtype, s.shape[1:]) for s in engine}
    want = {(s.name, s.dtype, s.shape[1:]) for s in expected}
    if got != want:
        raise RuntimeError(f"{model}: the TensorRT engine's I/O {sorted(got)} differs from the exported "
                           f"graph's {sorted(want)}; the ensemble would not connect")


def merge_metadata(meta: ModelMetadata, plans: dict[str, dict[str, Any]], report: dict[str, Any],
                   max_batch: int) -> ModelMetadata:
    """metadata.json after a conversion: flavour tensorrt, the plans' stamps, and the TensorRT parity."""
    return meta.replace(flavour="tensorrt", max_batch_size=max_batch, tensorrt={"plans": plans, "parity": report},
                        parity={**meta.parity, "tensorrt": report})


def build_component(engines, model_dir: Path, version: int, model: str, options: PlanOptions,
                    log: Callable[[str], None]) -> tuple[bytes, dict[str, Any]]:
    """One model version's plan (reused when up to date) and its stamp; rewrites the model's config.pbtxt
    to tensorrt_plan (batching, instances and version policy kept). options: with max_batch and opt_batch set."""
    onnx_file, plan_file = model_dir / str(version) / ONNX_MODEL_FILE, model_dir / str(version) / PLAN_MODEL_FILE
    stamp_file = plan_file.with_name(plan_file.name + STAMP_SUFFIX)
    wanted = wanted_stamp(engines, onnx_file, options)
    if not options.force and up_to_date(plan_file, wanted):
        log(f"{model} v{version}: plan up to date ({engines.gpu}, TensorRT {engines.version})")
        return plan_file.read_bytes(), files.read_json(stamp_file)
    log(f"{model} v{version}: building a TensorRT {engines.version} plan on {engines.gpu} "
        f"(batch 1/{options.opt_batch}/{options.max_batch}, {'fp16' if options.fp16 else 'fp32'}) ...")
    old = read_config(model_dir)
    plan, build = engines.build(onnx_file, options, log)
    inputs, outputs = engines.specs(plan)
    same_specs(inputs, specs_from_config(old.input), model)
    same_specs(outputs, specs_from_config(old.output), model)
    files.write_bytes(plan_file, plan)
    stamp = {**wanted, **build}
    files.write_json(stamp_file, stamp)
    write_config(model_dir, component_config(model, inputs, outputs, options.max_batch, FLAVOURS["tensorrt"],
                                             options_from_config(old)))
    return plan, stamp


def convert_model(engines, repository: Path, name: str, options: PlanOptions,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every version of NAME: plans, configs, the TensorRT parity check, the merged metadata.

    Returns the report of the latest version; raises ParityError on the first version that fails."""
    ensemble = read_config(repository / name)
    options = options.for_max_batch(ensemble.max_batch_size)
    if ensemble.max_batch_size != options.max_batch:
        ensemble.max_batch_size = options.max_batch
        write_config(repository / name, ensemble)
    report: dict[str, Any] = {}
    for version in complete_versions(repository, name):
        report = convert_version(engines, repository, name, version, options, log)
    return report


def convert_version(engines, repository: Path, name: str, version: int, options: PlanOptions,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """Plans of one version of NAME, checked on that version's parity sample, recorded in its metadata."""
    ensemble_dir = repository / name / str(version)
    meta = ModelMetadata.read(ensemble_dir / METADATA_FILE)
    plans, stamps = {}, {}
    for model in (meta.encoder, meta.head):
        plans[model], stamps[model] = build_component(engines, repository / model, version, model, options, log)
    precision = stamps[meta.head].get("precision", "fp32")
    report: dict[str, Any] = {"passed": None, "problems": ["no parity sample stored"]}
    sample = ensemble_dir / PARITY_SAMPLE_FILE
    if sample.is_file():
        report = engines.parity(plans[meta.encoder], plans[meta.head], sample, options.max_batch, precision)
        log(f"{name} v{version}: TensorRT parity {'PASSED' if report['passed'] else 'FAILED'}: "
            + ", ".join(f"{k} {v}" for k, v in report["outputs"].items()))
    parity_file = ensemble_dir / PARITY_FILE
    parity_all = files.read_json(parity_file) if parity_file.is_file() else {}
    files.write_json(parity_file, {**parity_all, "tensorrt": report})
    merge_metadata(meta, stamps, report, options.max_batch).write(ensemble_dir / METADATA_FILE)
    if report["passed"] is False:
        check(report, f"{name} version {version} (TensorRT plan vs PyTorch)")
    return report


def convert_repository(repository: Path, options: PlanOptions | None = None, names: list[str] | None = None,
                       log: Callable[[str], None] = print, engines=None) -> dict[str, dict[str, Any]]:
    """Convert every exported model of `repository` (or `names`) to TensorRT plans, in place.

    options: default PlanOptions(); their timing_cache defaults to REPOSITORY/.trt_timing_cache.
    `engines` builds and checks the plans (default: export.trt_build.TensorRTEngines, which needs
    TensorRT and a GPU: TensorRTUnavailable otherwise).
    """
    if engines is None:
        require_tensorrt()
        engines = TensorRTEngines()
    repository = Path(repository)
    models = [p.name for p in list_models(repository)]
    if names:
        unknown = sorted(set(names) - set(models))
        if unknown:
            raise ValueError(f"no exported model(s) {unknown} in {repository}; found {models}")
        models = names
    if not models:
        raise FileNotFoundError(f"{repository} holds no exported model (no */<version>/{METADATA_FILE}); "
                                "export one with `python -m export --engine onnx`")
    options = options or PlanOptions()
    options = dataclasses.replace(options, timing_cache=options.timing_cache or repository / ".trt_timing_cache")
    with export_lock(repository):
        return {name: convert_model(engines, repository, name, options, log) for name in models}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.tensorrt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True, help="exported (onnxruntime) Triton repository")
    parser.add_argument("--name", action="append", help="only this model (repeatable); default: all")
    parser.add_argument("--fp16", action="store_true", help="allow FP16 kernels (TensorRT 10; ignored by 11)")
    parser.add_argument("--max-batch", type=int, help="profile max batch (default: the config's max_batch_size)")
    parser.add_argument("--opt-batch", type=int, help="profile optimum batch (default: max/2)")
    parser.add_argument("--workspace-mb", type=int, default=DEFAULT_WORKSPACE_MB, help="builder workspace limit")
    parser.add_argument("--timing-cache", type=Path, help="default: REPOSITORY/.trt_timing_cache")
    parser.add_argument("--force", action="store_true", help="rebuild plans that are up to date")
    args = parser.parse_args(argv)
    options = PlanOptions(fp16=args.fp16, max_batch=args.max_batch, opt_batch=args.opt_batch,
                          workspace_mb=args.workspace_mb, timing_cache=args.timing_cache, force=args.force)
    try:
        convert_repository(args.repository, options, args.name)
    except TensorRTUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
