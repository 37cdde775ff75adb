#!/usr/bin/env bash
# Triton's perf_analyzer (from tritonclient==2.51.0) over a concurrency sweep, against a CPU
# tritonserver (from .triton-venv, made by scripts/setup_triton.sh) serving an exported repository's
# CPU flavour; saves perf_analyzer's CSV (and one per composing model for an ensemble).
#
#   scripts/perf_analyzer.sh [-r REPO] [-m MODEL] [-c 1:4] [-b BATCH] [-t MS] [-s PCT] [-o OUT.csv] [-u HOST:PORT]
#     -r  repository served by the script's own server (default model_repository_cpu)
#     -m  model (default: the first ensemble, i.e. directory with <version>/metadata.json, in REPO)
#     -c  concurrency range start:end[:step] (default 1:4)
#     -b  images per inference request (default 1)
#     -t  measurement interval, ms (default 3000)
#     -s  stability percentage between windows (default 50: shared machines are noisy)
#     -o  CSV to write (default build/perf_analyzer/<model>_b<batch>.csv)
#     -u  gRPC address of an already running Triton: no server is started (-r is then unused)
#
# perf_analyzer needs libb64.so.0d and libcudart.so.12; the nvidia-pytriton wheel bundles both under
# nvidia_pytriton.libs/ with hashed names, so they are symlinked under build/perf_analyzer/lib
# (see /work/shared/TRITON_CPU.md). All traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

REPO=model_repository_cpu MODEL="" CONC=1:4 BATCH=1 INTERVAL=3000 STABILITY=50 OUT="" URL=""
while getopts "r:m:c:b:t:s:o:u:h" opt; do
    case $opt in
        r) REPO=$OPTARG ;; m) MODEL=$OPTARG ;; c) CONC=$OPTARG ;; b) BATCH=$OPTARG ;;
        t) INTERVAL=$OPTARG ;; s) STABILITY=$OPTARG ;; o) OUT=$OPTARG ;; u) URL=$OPTARG ;;
        *) sed -n '2,18p' "$0"; exit 2 ;;
    esac
done

VENV=.triton-venv
TD="$VENV/lib/python3.11/site-packages/pytriton/tritonserver"
PYLIBS="$VENV/lib/python3.11/site-packages/nvidia_pytriton.libs"
WORK=build/perf_analyzer
mkdir -p "$WORK/lib"

PA=""
for candidate in .venv/bin/perf_analyzer "$VENV/bin/perf_analyzer" "$(command -v perf_analyzer || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then PA=$candidate; break; fi
done
[ -n "$PA" ] || { echo "perf_analyzer.sh: no perf_analyzer (pip install tritonclient==2.51.0)" >&2; exit 1; }

b64=$(ls "$PYLIBS"/libb64-*.so.0d 2>/dev/null | head -1 || true)
cudart=$(ls "$PYLIBS"/libcudart-*.so.12* 2>/dev/null | head -1 || true)
if [ -z "$b64" ] || [ -z "$cudart" ]; then
    echo "perf_analyzer.sh: libb64/libcudart not found in $PYLIBS: run scripts/setup_triton.sh" >&2
    exit 1
fi
ln -sf "$PWD/$b64" "$WORK/lib/libb64.so.0d"
ln -sf "$PWD/$cudart" "$WORK/lib/libcudart.so.12"

if [ -z "$MODEL" ]; then
    meta=$(ls "$REPO"/*/*/metadata.json 2>/dev/null | head -1 || true)
    [ -n "$meta" ] || { echo "perf_analyzer.sh: no */<version>/metadata.json in $REPO (export a model, or give -m)" >&2
                        exit 1; }
    MODEL=$(basename "$(dirname "$(dirname "$meta")")")
fi
OUT=${OUT:-$WORK/${MODEL}_b${BATCH}.csv}

SERVER_PID=""
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID"
        for _ in $(seq 1 60); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.25; done
        kill -0 "$SERVER_PID" 2>/dev/null && kill -KILL "$SERVER_PID" || true
    fi
}
trap stop_server EXIT

if [ -z "$URL" ]; then
    [ -x "$TD/bin/tritonserver" ] || { echo "perf_analyzer.sh: no $TD/bin/tritonserver: run scripts/setup_triton.sh" >&2; exit 1; }
    read -r HTTP GRPC METRICS < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
    LIBDIR=$(python3.11 -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
    LOG="$WORK/tritonserver.log"
    PATH="$PWD/$VENV/bin:$PATH" LD_LIBRARY_PATH="$LIBDIR" "$TD/bin/tritonserver" \
        --model-repository="$(realpath "$REPO")" --backend-directory="$TD/backends" \
        --http-address=127.0.0.1 --http-port="$HTTP" --grpc-address=127.0.0.1 --grpc-port="$GRPC" \
        --metrics-address=127.0.0.1 --metrics-port="$METRICS" --allow-gpu-metrics=false \
        --pinned-memory-pool-byte-size=0 --exit-timeout-secs=5 >"$LOG" 2>&1 &
    SERVER_PID=$!
    ready=0
    for _ in $(seq 1 240); do  # 60 s
        if python3 -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:$HTTP/v2/health/ready', timeout=1)" 2>/dev/null; then
            ready=1; break
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.25
    done
    if [ "$ready" != 1 ]; then
        echo "perf_analyzer.sh: tritonserver not ready; its log ($LOG):" >&2
        tail -40 "$LOG" >&2
        exit 1
    fi
    URL=127.0.0.1:$GRPC
fi

echo "perf_analyzer: model $MODEL at $URL (gRPC), batch $BATCH, concurrency $CONC -> $OUT"
LD_LIBRARY_PATH="$PWD/$WORK/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$PA" \
    -m "$MODEL" -u "$URL" -i grpc -b "$BATCH" --concurrency-range "$CONC" \
    --measurement-interval "$INTERVAL" --stability-percentage "$STABILITY" --max-trials 6 -f "$OUT"
echo "perf_analyzer.sh: wrote $OUT"
