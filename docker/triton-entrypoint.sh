#!/usr/bin/env bash
# Build (or keep, when up to date) the TensorRT plans of every model in /models on this container's GPU,
# then hand over to tritonserver, which polls the repository: a version exported later is loaded without a
# restart (build its plans with `python3 -m export.tensorrt --repository /models` in this container; until
# then its config is the exported onnxruntime one). Extra arguments go to tritonserver.
#   TRT_ARGS   more arguments of `python -m export.tensorrt` (default none; each model's plans are built at the
#              precision it was exported at: NAME fp32, NAME_fp16 fp16, NAME_int8 int8)
#   MODELS     the repository (default /models)
set -euo pipefail
MODELS=${MODELS:-/models}
TRT_ARGS=${TRT_ARGS-}

if ! ls "$MODELS"/*/*/metadata.json >/dev/null 2>&1; then
    echo "triton-entrypoint: no exported model in $MODELS (run 'python -m export' on the host first)" >&2
    exit 1
fi
echo "triton-entrypoint: building TensorRT plans in $MODELS ($TRT_ARGS)"
# shellcheck disable=SC2086  # TRT_ARGS is a list of flags
python3 -m export.tensorrt --repository "$MODELS" $TRT_ARGS

exec tritonserver --model-repository="$MODELS" --http-port=8000 --grpc-port=8001 --metrics-port=8002 \
    --model-control-mode=poll --repository-poll-secs=5 --exit-timeout-secs=10 "$@"
