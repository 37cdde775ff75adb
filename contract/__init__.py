"""What train/, export/ and serve/ share, defined once (numpy + PIL only, no torch; `sessions` imports
onnxruntime and onnx when it is used).

- `names`: tensor names of the exported graphs, the head outputs every model has, file names of a
  run directory and of a model repository.
- `files`: atomic, fsync'd file writes (checkpoints, artefacts, repository files).
- `runs`: reading run directories (finished?, the latest finished run matching filters).
- `metadata`: the typed, versioned record an export writes beside each model and the gateway reads.
- `repository`: the model repository's layout (Triton's NAME/<version>/; what marks a version complete).
- `card`: the trained model's cluster statistics and the model card, and the scoring of answers
  (low confidence, out of distribution) the gateway does with them.
- `preprocess`: image file -> uint8 (C, S, S), bit for bit the same in training, export and serving.
- `cli`: a typed dataclass -> argparse options (train's config, the gateway's settings).
- `sessions`: onnxruntime sessions as export's parity check, the gateway and the benchmarks open
  them (threads, spinning, optimisation level, providers; encoder and head fused into one graph).
"""
