"""python -m export: a trained run -> ONNX graphs (parity-checked) -> Triton repositories [-> TensorRT plans].

    python -m export --engine onnx                      # latest finished run under runs/
    python -m export --engine onnx --run runs/cc-cifar10-resnet34 --name cc_cifar10 --max-batch 64
    python -m export --engine trt --fp16                # needs tensorrt and a CUDA GPU (else exit 2)

--engine onnx: model_repository/ (onnxruntime_onnx, KIND_GPU) and model_repository_cpu/ (python
backend, KIND_CPU). trt: checks for TensorRT first, then does the same and builds plans in place in
model_repository/ (tensorrt_plan). all: writes the ONNX repositories even without TensorRT, then
builds plans (exit 2, after writing, when TensorRT is missing).
The run's own parity sample (written by the trainer) is the parity check's input: no data set needed.
Each export adds a version NAME/<v>/ (Triton's layout) beside the existing ones, from any run, as long
as its interface (input, outputs) is theirs; the gateway serves the latest and picks it up without a
restart; `python -m export.versions --remove V` rolls back (see export/versions.py).
Exit status: 0 done; 1 parity failure; 2 refused or unusable input (unfinished run, an interface other
than the model's existing versions, an output path that is a file, no run, the repository locked by
another export for too long, TensorRT missing). Nothing is written unless every check passed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract.runs import latest_finished_run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("onnx", "trt", "all"), default="onnx",
                        help="onnx: ONNX repositories; trt: also TensorRT plans (TensorRT checked first); "
                             "all: ONNX repositories, then plans where TensorRT is present (default: onnx)")
    parser.add_argument("--run", type=Path, help="run directory or checkpoint (default: the latest finished run "
                        "under --runs-root)")
    parser.add_argument("--runs-root", type=Path, default=Path("runs"),
                        help="where to look for the latest finished run (default: runs)")
    parser.add_argument("--output", type=Path, default=Path("model_repository"),
                        help="Triton repository for NVIDIA's container (onnxruntime_onnx), also what the "
                             "gateway's embedded backend reads (default: model_repository)")
    parser.add_argument("--output-kind", choices=("gpu", "cpu"), default="gpu",
                        help="instance kind of --output's models: gpu (KIND_GPU) or cpu (KIND_CPU, for CPU hosts "
                             "running NVIDIA's container) (default: gpu)")
    parser.add_argument("--cpu-output", type=Path, default=Path("model_repository_cpu"),
                        help="CPU (python backend) Triton repository; 'none' to skip (default: model_repository_cpu)")
    parser.add_argument("--name", help="model name, [a-z0-9_]+ (default: <method>_<dataset>)")
    parser.add_argument("--max-batch", type=int, default=64,
                        help="Triton max_batch_size and TensorRT profile max (default: 64)")
    parser.add_argument("--queue-delay-us", type=int, default=0,
                        help="Triton dynamic_batching max_queue_delay_microseconds; 0 leaves it out, as NVIDIA's "
                             "guide starts (default: 0)")
    parser.add_argument("--instances", type=int, default=1, help="Triton instance count per model (default: 1)")
    parser.add_argument("--serve-versions", type=int, default=2,
                        help="Triton version_policy: the newest N versions loaded (0: all) (default: 2, the new "
                             "one and the one a rollback returns to)")
    parser.add_argument("--keep-versions", type=int, default=0,
                        help="after adding the version, delete all but the newest N (default: 0, keep all)")
    parser.add_argument("--opt-batch", type=int, help="TensorRT profile optimum (default: max/2)")
    parser.add_argument("--fp16", action="store_true", help="TensorRT: allow FP16 kernels (where the API has them)")
    parser.add_argument("--workspace-mb", type=int, default=2048,
                        help="TensorRT builder workspace limit, MiB (default: 2048)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="parity: largest |difference| of float outputs, fp32 (default: 1e-4)")
    parser.add_argument("--allow-unfinished", action="store_true",
                        help="export a run that has not finished training (its metadata says finished: false)")
    parser.add_argument("--projection", choices=("umap", "none"), default="umap",
                        help="the embedding map for the gateway's page: UMAP of up to 2000 training embeddings "
                             "(needs umap-learn; skipped with a note without it), or none (default: umap)")
    parser.add_argument("--force", action="store_true",
                        help="when the model's existing versions have another interface (input size, outputs), "
                             "remove them and start again at the next version number (default: refuse)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from export import tensorrt
    from export.parity import ParityError

    if args.engine == "trt":
        problem = tensorrt.missing_requirements()
        if problem:
            print(f"error: --engine trt: {problem}", file=sys.stderr)
            return 2
    run = args.run
    if run is None:
        try:
            run = latest_finished_run(args.runs_root)
        except FileNotFoundError as exc:
            print(f"error: {exc}; train one or give --run", file=sys.stderr)
            return 2
        print(f"using the latest finished run: {run}")
    cpu_output = None if str(args.cpu_output).lower() == "none" else args.cpu_output

    from export.pipeline import export_run
    from export.triton import TritonOptions
    from export.versions import RepositoryBusy

    try:
        options = TritonOptions(queue_delay_us=args.queue_delay_us, instances=args.instances,
                                serve_versions=args.serve_versions, keep_versions=args.keep_versions,
                                force=args.force)
        result = export_run(run, args.output, cpu_output, args.name, args.max_batch, args.tolerance,
                            args.allow_unfinished, options, args.output_kind, args.projection)
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, RepositoryBusy) as exc:  # FileNotFoundError is an OSError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.engine == "onnx":
        return 0
    try:
        plans = tensorrt.PlanOptions(fp16=args.fp16, max_batch=args.max_batch, opt_batch=args.opt_batch,
                                     workspace_mb=args.workspace_mb)
        tensorrt.convert_repository(args.output, plans, names=[result.name])
    except tensorrt.TensorRTUnavailable as exc:
        print(f"error: --engine {args.engine}: the ONNX repositories are written; {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
