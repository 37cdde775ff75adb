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
A method may declare more (ClusteringMethod.extra_outputs, recorded as contract.metadata.ExtraOutput in
the metadata's `extra_outputs`); every stage passes those through by name, dtype and shape alone."""
ANSWER_FIELDS = ("index", "filename", "cluster", "name", "probability", "low_confidence", "ood_score", "ood",
                 "top_k", "error")
"""The fields of one image's /cluster answer (serve/schemas.py ClusterResult). A method's extra outputs are
answered beside them under their own names, so no extra output may be named like one of these."""

# --- precision ---------------------------------------------------------------------------------------
FP32, INT8, FP16 = "fp32", "int8", "fp16"
PRECISIONS = (FP32, INT8, FP16)
"""What an exported model computes in. fp32: the graphs as trained (parity with PyTorch within 1e-4). int8: the
encoder quantized (a QDQ graph), judged by its agreement with the fp32 graph. fp16: TensorRT plans with FP16 kernels,
built from the fp32 graphs and judged the same way. A model has one precision: its repository name says it
(`precision_model`) and its metadata's `precision` records it, so each precision has its own versions and config."""


def precision_model(name: str, precision: str) -> str:
    """The repository name of model NAME exported at `precision`: NAME (fp32), NAME_int8, NAME_fp16."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")
    return name if precision == FP32 else f"{name}_{precision}"


def split_precision(name: str) -> tuple[str, str]:
    """A repository model name -> (the name it was exported under, the precision its name says)."""
    for precision in PRECISIONS[1:]:
        if name.endswith(f"_{precision}"):
            return name.removesuffix(f"_{precision}"), precision
    return name, FP32


# --- image files ------------------------------------------------------------------------------------
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""Suffixes (lower case) of the files a folder of images is searched for: training's folder data sets, bulk."""

# --- a run directory (python -m train) --------------------------------------------------------------
CHECKPOINT_FILE = "last.pt"
CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
ASSIGNMENTS_FILE = "assignments.csv"
GALLERY_FILE = "gallery.png"
CONFUSION_FILE = "confusion.png"
TENSORBOARD_DIR = "tensorboard"
PARITY_SAMPLE_FILE = "parity_sample.npz"
"""Images of the training data and the trained model's outputs on them, saved at the end of training so
an export can check parity without the data set; copied into the model repository for TensorRT."""
CALIBRATION_SAMPLE_FILE = "calibration_sample.npz"
"""A seeded random sample of the training images at the model's input side (images uint8 (n, C, S, S), sources
(n,), index (n,) into the training splits), saved at the end of training: export calibrates a reduced-precision
(int8) graph on the first of them and judges its agreement with the fp32 graph on the others, without the data set."""
IMAGES_USED_FILE = "images.txt"
"""The images a run trained on, one source per line in training order (after sampling and skipping; the
instance-pass splits after the training splits)."""
INIT_FILE = "init.json"
"""Which checkpoint a run started from (methods that fine-tune another run) and how it scored."""
CLUSTER_STATS_FILE = "cluster_stats.json"
"""What the final model does on the whole training set (contract.card.ClusterStats): cluster sizes and
centroids, the OOD prototypes, the confidence and nearest-prototype distance distributions, the
cluster -> class mapping.
Written by the trainer when it finishes; export turns it into the model card."""
CLUSTER_SAMPLES_FILE = "cluster_samples.npz"
"""A few training images per cluster (the most confident ones): images uint8 (n, C, S, S), cluster (n,),
index (n,) into the data set, sources (n,). Copied into each model version for pages that show clusters.
Also map_embedding (m, D) and map_cluster (m,): up to MAP_POINTS training images spread evenly over the
data set, what export projects to 2-D for the embedding map."""
MAP_POINTS = 2000
CLUSTER_LEVELS_FILE = "cluster_levels.json"
"""The K clusters merged pairwise into fewer and the suggested number of clusters, with its scores per level
(contract.levels.ClusterLevels). Written by the trainer when it finishes; export carries it into the model card."""
LEVELS_PLOT_FILE = "levels.png"
"""The scores per number of clusters and the dendrogram of the merges (the run report)."""
TREE_FILE = "tree.json"
"""CoHiClust: the pruned tree (surviving nodes, parents, children, sizes on the training data), written by
the method at the end of training and copied into each model version for pages that draw it."""
AGREEMENT_SAMPLE_FILE = "agreement_sample.npz"
"""In a reduced-precision model version: the images its agreement with the fp32 graph was judged on (training images
not used for calibration; images (n, C, S, S), sources (n,)) and the fp32 graph's outputs on them (reference_<output>),
so TensorRT plans built later in the serving container are judged on the same images against the same reference."""
PROJECTION_FILE = "projection.npz"
"""In a model version: the embedding map. points (m, 2) in [0, 1], cluster (m,), the embeddings they were
projected from (m, D) for placing new images, and method (the projection's name)."""
RUN_FILES_SERVED = (CLUSTER_SAMPLES_FILE, TREE_FILE)
"""Files of a run that export copies into each model version when the run has them (the page reads them)."""

# --- a model repository (python -m export) ----------------------------------------------------------
# Triton's layout: MODEL/config.pbtxt and one directory per version, MODEL/<version>/ (1, 2, ...).
# The ensemble NAME's version directory holds the files below; NAME/<v>/metadata.json marks version v
# complete (contract.repository).
METADATA_FILE = "metadata.json"
PARITY_FILE = "parity.json"
CARD_FILE = "card.json"
"""The model card (contract.card.ModelCard): provenance, training metrics, clusters with sizes, centroids,
class mapping and purity, the OOD prototypes, the low-confidence and out-of-distribution calibration."""
CARD_MARKDOWN_FILE = "card.md"
NAMES_FILE = "cluster_names.json"
"""Editable cluster names of one model version: {"0": "zero", ...}; the gateway re-reads it when it changes."""


def level_names_file(level: int, num_clusters: int) -> str:
    """The names file of a model version's answers at `level` clusters: NAMES_FILE at its own num_clusters,
    cluster_names_<level>.json below (keys: merged cluster ids, contract.levels)."""
    return NAMES_FILE if level == num_clusters else f"cluster_names_{level}.json"


MODEL_CONFIG_FILE = "config.pbtxt"
ONNX_MODEL_FILE = "model.onnx"
PLAN_MODEL_FILE = "model.plan"
TENSORRT_ONNX_FILE = "model.tensorrt.onnx"
"""Beside an int8 encoder's model.onnx (--output repository only): the same QDQ graph with its activations encoded as
TensorRT needs them (INT8, zero point 0) instead of as onnxruntime's x86 kernels run fastest (UINT8, zero point 128);
the same scales and rounding, so the same numbers (export checks it). export/tensorrt.py builds int8 plans from it."""
LAST_VERSION_FILE = ".last_version"
"""In NAME/: the highest version number ever given to the model, so a removed version's number is never reused."""
EXPORT_LOCK_FILE = ".export.lock"
"""Held (flock) by an exporter while it adds a version to a repository: concurrent exports queue."""


def encoder_model(name: str) -> str:
    """Triton name of a model's encoder graph."""
    return f"{name}_encoder"


def head_model(name: str) -> str:
    """Triton name of a model's head graph."""
    return f"{name}_head"


# --- a bulk job's output (python -m serve.bulk) ------------------------------------------------------
BULK_SUMMARY_FILE = "summary.json"
"""Counts per cluster, errors, images/s of a bulk job; the gateway's page shows it (--bulk-output)."""
BULK_GALLERY_DIR = "gallery"
"""One PNG per cluster that has images (bulk_gallery_file), its most confident ones."""


def bulk_gallery_file(cluster: int) -> str:
    """The gallery of one cluster in BULK_GALLERY_DIR: cluster_<id:03d>.png (zero-padded: they list in order)."""
    return f"cluster_{cluster:03d}.png"
