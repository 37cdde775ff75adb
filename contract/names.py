"""Names the stages agree on: tensors of the exported graphs and files of runs and repositories."""

from __future__ import annotations

# --- tensors ---------------------------------------------------------------------------------------
IMAGES = "images"
"""Encoder input: uint8 (B, C, S, S), NCHW, the output of contract.preprocess.prepare."""
FEATURES = "features"
"""Encoder output = head input: float32 (B, F) backbone features."""
EMBEDDING = "embedding"
PROBABILITIES = "probabilities"
CLUSTER = "cluster"
REQUIRED_OUTPUTS = (EMBEDDING, PROBABILITIES, CLUSTER)
"""Head outputs every method has: embedding (B, D) L2-normalised, probabilities (B, K), cluster (B,) int64.
A method may add more (CoHiClust: path (B, L) int64)."""

# --- image files ------------------------------------------------------------------------------------
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""Suffixes (lower case) of the files a folder of images is searched for: training's folder data sets, bulk."""

# --- a run directory (python -m train) --------------------------------------------------------------
CHECKPOINT_FILE = "last.pt"
CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
ASSIGNMENTS_FILE = "assignments.csv"
PARITY_SAMPLE_FILE = "parity_sample.npz"
"""Images of the training data and the trained model's outputs on them, saved at the end of training so
an export can check parity without the data set; copied into the model repository for TensorRT."""
IMAGES_USED_FILE = "images.txt"
"""The images a run trained on, one source per line in training order (after sampling and skipping)."""
INIT_FILE = "init.json"
"""Which checkpoint a run started from (methods that fine-tune another run) and how it scored."""

# --- a model repository (python -m export) ----------------------------------------------------------
METADATA_FILE = "metadata.json"
PARITY_FILE = "parity.json"
MODEL_CONFIG_FILE = "config.pbtxt"
ONNX_MODEL_FILE = "model.onnx"
PLAN_MODEL_FILE = "model.plan"


def encoder_model(name: str) -> str:
    """Triton name of a model's encoder graph."""
    return f"{name}_encoder"


def head_model(name: str) -> str:
    """Triton name of a model's head graph."""
    return f"{name}_head"
