#!/usr/bin/env bash
# The GPU figures of the README in one run, for a GPU machine: Python with torch, torchvision, onnx and
# onnxruntime installed, no network. Sections 1-4 and 8 need nothing else of the project's dependencies;
# 5-7 train and export end to end, so they need its train and export extras too (tqdm, tensorboard,
# scikit-learn, scipy, matplotlib, tritonclient[grpc]; carried as wheels where they are missing: they say
# which and are skipped). Runs the project's own commands and benchmarks (nothing is copied here), each
# under a time limit, in under 8 minutes:
#   1. environment: the GPU, versions, and that the project modules the benchmarks use import
#   2. training step vs backbone forward+backward alone, eager (bench/train_throughput.py: the
#      trainer's train_step): ResNet-18 and ResNet-34 at 32 px (CIFAR stem) and 224 px (ImageNet stem),
#      bf16 autocast, channels_last; goal (c)/(b) >= 0.9
#   3. k-means on the GPU (train/kmeans.py via bench/kmeans.py): 60,000 x 512 points, k = 10 and 200
#   4. onnxruntime's CUDA execution provider vs PyTorch eager on the GPU (bench/export_speed.py),
#      when this onnxruntime build has that provider
#   5. every method trains 2 epochs on the GPU (python -m train, digits; ProPos with PSL on and 4
#      BatchNorm groups) and its run exports with passing parity (python -m export)
#   6. CC's CIFAR-10 paper recipe (224 px, ResNet-34 ImageNet stem, batch 256, fp32): 2 epochs on
#      generated CIFAR-format data, the second epoch's time projected to 60,000 images x 1000 epochs
#   7. fp32 vs bf16 (--amp true): CoHiClust on digits, 30 epochs each, metrics and time side by side
#   8. section 2 again with torch.compile (compiles in the warm-up; last, as it takes longest)
#
#   scripts/gpu_check.sh              # on the GPU machine (PYTHON=python3.12 to pick the interpreter)
#   scripts/gpu_check.sh --dry-run    # tiny sizes on the CPU, CUDA hidden, torch.compile skipped:
#                                     # proves every section runs (the test suite runs this)
# Exit status: 0 when every section that ran succeeded (a section skipped for lack of a provider, of a
# dependency or of time is not a failure), 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
case "${1:-}" in
    --dry-run) DRY=1 ;;
    "") ;;
    *) sed -n '2,29p' "$0"; exit 2 ;;
esac
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
BUDGET_S=${GPU_CHECK_BUDGET_S:-460}  # the whole run, seconds: under 8 minutes
FAILED=0

WORK=$(mktemp -d)  # the runs, data and repositories of sections 5-7
trap 'rm -rf "$WORK"' EXIT
if [ $DRY = 1 ]; then
    export CUDA_VISIBLE_DEVICES=""
    DEVICE=cpu
    TRAIN=(--configs resnet18:cifar:16:2 resnet34:imagenet:32:2 --steps 1 --warmup 0 --threads 1)
    KMEANS=(--n 2000 --dim 16 --ks 10 20 --restarts 2 --threads 1)
    EXPORT=(--backbone smallcnn --image-size 16 --channels 1 --batches 1 2 --rounds 1 --warmup 1 --threads 1)
    # sections 5-7 on 96 generated CIFAR-format images, small CNN at 16 px
    DATA="$WORK/tiny"
    DATA_PER_FILE=16
    E2E_DATA=(--dataset cifar10 --data-dir "$DATA" --preset fast --backbone smallcnn --image-size 16
              --batch-size 32 --threads 1)
    PAPER=(--data-dir "$DATA" --backbone smallcnn --stem cifar --image-size 16 --batch-size 32 --threads 1)
    AMP_RUN=("${E2E_DATA[@]}" --epochs 2 --simclr-epochs 0 --prune-start-epoch 2)
else
    DEVICE=cuda
    TRAIN=(--configs resnet18:cifar:32:512 resnet34:cifar:32:512 resnet18:imagenet:224:128 resnet34:imagenet:224:128
           --steps 10 --warmup 3)
    KMEANS=(--n 60000 --dim 512 --ks 10 200 --restarts 3)
    EXPORT=(--batches 1 8 64 --rounds 10)
    DATA="$WORK/cifar"
    DATA_PER_FILE=1024  # 6 files: 6144 images, 24 steps of 256 an epoch
    E2E_DATA=(--dataset digits)
    PAPER=(--data-dir "$DATA")
    AMP_RUN=(--dataset digits --epochs 30 --prune-start-epoch 25)
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
run 180 "$PY" bench/train_throughput.py --device $DEVICE --compile false --amp true "${TRAIN[@]}"

section "3. k-means on the GPU (train/kmeans.py)"
[ $DRY = 1 ] && echo "dry run: on the CPU"
run 120 "$PY" bench/kmeans.py --device $DEVICE "${KMEANS[@]}"

section "4. onnxruntime CUDA execution provider vs PyTorch eager"
[ $DRY = 1 ] && echo "dry run: the CPU execution provider vs eager on the CPU"
run 150 "$PY" bench/export_speed.py --device $DEVICE "${EXPORT[@]}"

# What sections 5-7 run, as functions each section runs in a time-limited bash (declare -f passes them on).
SECTION_VARS="PY DEVICE WORK DATA E2E_DATA PAPER AMP_RUN"

# missing_for_training: what sections 5-7 need and this Python lacks (nothing when all is there)
missing_for_training() {
    "$PY" -c 'import importlib.util as u; print(" ".join(n for n in ("tqdm", "tensorboard", "sklearn", "scipy",
        "matplotlib", "onnx", "onnxruntime", "tritonclient") if u.find_spec(n) is None))'
}

# write_cifar PER_FILE: $DATA/cifar-10-batches-py/ of random images in the distributed format (timing only)
write_cifar() {
    "$PY" - "$DATA" "$1" <<'EOF'
import pickle, sys
from pathlib import Path
import numpy as np
folder, per_file = Path(sys.argv[1]) / "cifar-10-batches-py", int(sys.argv[2])
folder.mkdir(parents=True)
rng = np.random.default_rng(0)
for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
    batch = {b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
             b"labels": [(k * per_file + i) % 10 for i in range(per_file)]}
    (folder / name).write_bytes(pickle.dumps(batch))
print(f"{6 * per_file} generated CIFAR-format images")
EOF
}

# score RUN_DIR: the run's results.json in one line
score() {
    "$PY" - "$1" <<'EOF'
import json, sys
r = json.load(open(f"{sys.argv[1]}/results.json"))
m = r["metrics"]
print("  ".join(f"{k.upper()} {m[k]:.4f}" for k in ("nmi", "acc", "ari") if k in m),
      f"({m['clusters_used']} clusters used), {r['epochs']} epochs in {r['train_seconds']} s")
EOF
}

# train_and_export METHOD ARGS...: 2 epochs on the device, then the export and its parity check
train_and_export() {
    local method=$1; shift
    "$PY" -m train --method "$method" --device $DEVICE --epochs 2 --eval-every 0 --progress false \
        --run-dir "$WORK/runs/$method" "$@" >"$WORK/train-$method.log" 2>&1 \
        || { cat "$WORK/train-$method.log"; return 1; }
    "$PY" -m export --engine onnx --run "$WORK/runs/$method" --output "$WORK/repository" --cpu-output none \
        --name "${method}_check" >"$WORK/export-$method.log" 2>&1 || { cat "$WORK/export-$method.log"; return 1; }
    echo "$method: $(score "$WORK/runs/$method"); exported, parity passed"
}

every_method_end_to_end() {
    train_and_export cc "${E2E_DATA[@]}" &&
    train_and_export drc "${E2E_DATA[@]}" &&
    train_and_export cohiclust "${E2E_DATA[@]}" &&
    train_and_export propos "${E2E_DATA[@]}" --warmup-epochs 1 --psl-warmup-epochs 1 --bn-groups 4 &&
    train_and_export c3 "${E2E_DATA[@]}" --init "$WORK/runs/cc"
}

paper_epoch_time() {
    "$PY" -m train --method cc --dataset cifar10 --preset paper --device $DEVICE --epochs 2 --eval-every 0 \
        --progress false --run-dir "$WORK/runs/cc-paper" "${PAPER[@]}" >"$WORK/train-cc-paper.log" 2>&1 \
        || { cat "$WORK/train-cc-paper.log"; return 1; }
    "$PY" - "$WORK/runs/cc-paper" <<'EOF'
import json, sys
run = sys.argv[1]
config = json.load(open(f"{run}/config.json"))
records = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
second = records[1]["train_seconds"] - records[0]["train_seconds"]  # the first epoch includes the warm-up
steps = json.load(open(f"{run}/results.json"))["num_images"] // config["batch_size"]
per_step = second / steps
epoch = 60000 // config["batch_size"] * per_step
print(f"cc paper recipe ({config['backbone']}, {config['stem']} stem, {config['image_size']} px, batch "
      f"{config['batch_size']}, amp {str(config['amp']).lower()}): the second epoch {second:.1f} s for {steps} steps, "
      f"{per_step * 1000:.0f} ms a step ({config['batch_size'] / per_step:.0f} images/s, 2 views each); CIFAR-10's "
      f"60,000 images: {epoch:.0f} s an epoch, 1000 epochs {epoch * 1000 / 3600:.1f} h (training steps only)")
EOF
}

fp32_vs_bf16() {
    for amp in false true; do
        "$PY" -m train --method cohiclust --device $DEVICE --amp $amp --eval-every 0 --progress false \
            --run-dir "$WORK/runs/amp-$amp" "${AMP_RUN[@]}" >"$WORK/train-amp-$amp.log" 2>&1 \
            || { cat "$WORK/train-amp-$amp.log"; return 1; }
        echo "cohiclust --amp $amp: $(score "$WORK/runs/amp-$amp")"
    done
}

# section_script FUNCTION: a script for `bash -c` that defines what FUNCTION needs and runs it (`run` limits
# its time)
section_script() {
    echo "$(declare -p $SECTION_VARS; declare -f score train_and_export every_method_end_to_end paper_epoch_time \
        fp32_vs_bf16); $1"
}

MISSING=$(missing_for_training)
[ -n "$MISSING" ] || write_cifar $DATA_PER_FILE
section "5. every method trains 2 epochs on the device and exports with passing parity"
if [ -n "$MISSING" ]; then echo "skipped: the project's train/export dependencies are missing here: $MISSING"
else run 200 bash -c "$(section_script every_method_end_to_end)"; fi

section "6. CC's CIFAR-10 paper recipe: epoch time projected to 1000 epochs"
[ $DRY = 1 ] && echo "dry run: small CNN at 16 px on the CPU"
if [ -n "$MISSING" ]; then echo "skipped: the project's train/export dependencies are missing here: $MISSING"
else run 150 bash -c "$(section_script paper_epoch_time)"; fi

section "7. fp32 vs bf16: CoHiClust's metrics"
if [ -n "$MISSING" ]; then echo "skipped: the project's train/export dependencies are missing here: $MISSING"
else run 150 bash -c "$(section_script fp32_vs_bf16)"; fi

section "8. training step vs backbone alone, torch.compile (goal: ratio (c)/(b) >= 0.9)"
if [ $DRY = 1 ]; then
    echo "skipped in the dry run: torch.compile of a ResNet takes minutes on a CPU"
else
    run 400 "$PY" bench/train_throughput.py --device $DEVICE --compile true --amp true "${TRAIN[@]}"
fi

echo
echo "gpu_check: $([ $FAILED = 0 ] && echo ok || echo 'FAILED (see above)') in ${SECONDS} s"
exit $FAILED
