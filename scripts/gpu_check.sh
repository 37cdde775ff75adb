#!/usr/bin/env bash
# The GPU figures of the README in one run, for a bare GPU machine: Python with torch, torchvision,
# onnx and onnxruntime installed, none of this project's other dependencies, no network. Runs the
# project's own benchmarks (nothing is copied here), each under a time limit, in under 8 minutes:
#   1. environment: the GPU, versions, and that the project modules the benchmarks use import
#   2. training step vs backbone forward+backward alone, eager (bench/train_throughput.py: the
#      trainer's step_losses and optimiser): ResNet-18 and ResNet-34 at 32 px (CIFAR stem) and
#      224 px (ImageNet stem), bf16 autocast, channels_last; goal (c)/(b) >= 0.9
#   3. k-means on the GPU (train/kmeans.py via bench/kmeans.py): 60,000 x 512 points, k = 10 and 200
#   4. onnxruntime's CUDA execution provider vs PyTorch eager on the GPU (bench/export_speed.py),
#      when this onnxruntime build has that provider
#   5. section 2 again with torch.compile (compiles in the warm-up; last, as it takes longest)
#
#   scripts/gpu_check.sh              # on the GPU machine (PYTHON=python3.12 to pick the interpreter)
#   scripts/gpu_check.sh --dry-run    # tiny sizes on the CPU, CUDA hidden, torch.compile skipped:
#                                     # proves every section runs (the test suite runs this)
# Exit status: 0 when every section that ran succeeded (a section skipped for lack of a provider or
# of time is not a failure), 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
case "${1:-}" in
    --dry-run) DRY=1 ;;
    "") ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
esac
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
BUDGET_S=${GPU_CHECK_BUDGET_S:-460}  # the whole run, seconds: under 8 minutes
FAILED=0

if [ $DRY = 1 ]; then
    export CUDA_VISIBLE_DEVICES=""
    DEVICE=cpu
    TRAIN=(--configs resnet18:cifar:16:2 resnet34:imagenet:32:2 --steps 1 --warmup 0 --threads 1)
    KMEANS=(--n 2000 --dim 16 --ks 10 20 --restarts 2 --threads 1)
    EXPORT=(--backbone smallcnn --image-size 16 --channels 1 --batches 1 2 --rounds 1 --warmup 1 --threads 1)
else
    DEVICE=cuda
    TRAIN=(--configs resnet18:cifar:32:512 resnet34:cifar:32:512 resnet18:imagenet:224:128 resnet34:imagenet:224:128
           --steps 10 --warmup 3)
    KMEANS=(--n 60000 --dim 512 --ks 10 200 --restarts 3)
    EXPORT=(--batches 1 8 64 --rounds 10)
fi

section() { echo; echo "=== $1"; }

# run CAP_S COMMAND...: the command under a time limit of CAP_S or what is left of the budget
run() {
    local cap=$1 left=$((BUDGET_S - SECONDS)); shift
    if [ $left -lt 20 ]; then echo "skipped: the time budget (${BUDGET_S} s) is spent"; return 0; fi
    [ "$cap" -gt "$left" ] && cap=$left
    timeout --kill-after=10 "$cap" "$@"
    local status=$?
    if [ $status = 124 ] || [ $status = 137 ]; then echo "FAILED: stopped after ${cap} s"; FAILED=1
    elif [ $status != 0 ]; then echo "FAILED: exit status $status"; FAILED=1; fi
}

section "1. environment"
run 120 "$PY" - "$DEVICE" <<'EOF'
import platform, sys
import numpy, onnx, onnxruntime, torch, torchvision
device = sys.argv[1]
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"torchvision {torchvision.__version__}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__} "
      f"{onnxruntime.get_available_providers()}, numpy {numpy.__version__}")
if device == "cuda":
    if not torch.cuda.is_available():
        sys.exit("torch sees no CUDA GPU")
    props = torch.cuda.get_device_properties(0)
    print(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}, "
          f"bf16 {'supported' if torch.cuda.is_bf16_supported() else 'NOT supported'}")
else:
    print("dry run: CPU only, CUDA hidden")
import bench.export_speed, bench.kmeans, bench.train_throughput, contract.sessions, train.kmeans, train.trainer  # noqa
print("project modules import without the project's other dependencies: ok")
EOF

section "2. training step vs backbone alone, eager (goal: ratio (c)/(b) >= 0.9)"
run 180 "$PY" bench/train_throughput.py --device $DEVICE --compile false "${TRAIN[@]}"

section "3. k-means on the GPU (train/kmeans.py)"
[ $DRY = 1 ] && echo "dry run: on the CPU"
run 120 "$PY" bench/kmeans.py --device $DEVICE "${KMEANS[@]}"

section "4. onnxruntime CUDA execution provider vs PyTorch eager"
[ $DRY = 1 ] && echo "dry run: the CPU execution provider vs eager on the CPU"
run 150 "$PY" bench/export_speed.py --device $DEVICE "${EXPORT[@]}"

section "5. training step vs backbone alone, torch.compile (goal: ratio (c)/(b) >= 0.9)"
if [ $DRY = 1 ]; then
    echo "skipped in the dry run: torch.compile of a ResNet takes minutes on a CPU"
else
    run 400 "$PY" bench/train_throughput.py --device $DEVICE --compile true "${TRAIN[@]}"
fi

echo
echo "gpu_check: $([ $FAILED = 0 ] && echo ok || echo 'FAILED (see above)') in ${SECONDS} s"
exit $FAILED
