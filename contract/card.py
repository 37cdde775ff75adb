"""What a trained model does on its training data, and the model card an export writes from it.

    stats = ClusterStats.read(run_dir / CLUSTER_STATS_FILE)      # written by the trainer when it finishes
    card = ModelCard.read(repository / name / str(version) / CARD_FILE)
    d = nearest_centroid_distance(embedding, card.stats.ood_reference())   # (B,) cosine distances
    card.stats.ood.score(d), d > card.stats.ood.threshold                # novelty vs the training distribution

The trainer measures (train/cluster_stats.py), export renders the card (JSON + Markdown), the gateway
scores each answer with the same functions: a low-confidence flag (probability of the assigned cluster
below the `confidence` calibration's threshold, by default the training data's 5th percentile) and an
out-of-distribution score (cosine distance to the nearest of the training embeddings' prototypes, as
the fraction of training images that are farther from theirs; flagged above the 99th percentile).
The prototypes are a k-means of the embeddings with many more centres than clusters, so they follow
the data's shape where a cluster is not one ball around its centroid. numpy only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract import files
from contract.levels import ClusterLevels

CARD_SCHEMA_VERSION = 2
"""2: the OOD calibration is of the distance to `ood_prototypes` (1: to the cluster centroids), so a
reader of version 1 must not take it for its own."""
QUANTILES = 101
"""Calibration distributions are kept as the 0, 1, ..., 100th percentiles."""
LOW_CONFIDENCE_QUANTILE = 0.05
OOD_QUANTILE = 0.99
PROTOTYPE_DECIMALS = 5
"""Prototype coordinates in JSON: 1e-5 moves a cosine distance by less than 1e-4 of its 0.1-0.3 threshold."""


@dataclass(frozen=True)
class Calibration:
    """A distribution measured on the training data, as percentiles, and the threshold at `quantile`.

    `higher_is_unusual`: distances are unusual when high (OOD), probabilities when low (low confidence).
    """

    quantiles: tuple[float, ...]  # QUANTILES values: the 0th..100th percentile
    quantile: float
    higher_is_unusual: bool

    def __post_init__(self) -> None:
        steps = zip(self.quantiles, self.quantiles[1:], strict=False)
        if len(self.quantiles) != QUANTILES or any(b < a for a, b in steps):
            raise ValueError(f"calibration needs {QUANTILES} non-decreasing percentiles, got {len(self.quantiles)}")
        if not 0 <= self.quantile <= 1:
            raise ValueError(f"calibration quantile must be in [0, 1], got {self.quantile}")

    @classmethod
    def measure(cls, values: np.ndarray, quantile: float, higher_is_unusual: bool) -> Calibration:
        """values (N,) -> their percentiles."""
        levels = np.linspace(0, 100, QUANTILES)
        return cls(tuple(float(v) for v in np.percentile(np.asarray(values, np.float64), levels)), quantile,
                   higher_is_unusual)

    @property
    def threshold(self) -> float:
        return float(np.interp(self.quantile * 100, np.linspace(0, 100, QUANTILES), self.quantiles))

    def flag(self, values: np.ndarray) -> np.ndarray:
        """(B,) -> (B,) bool: beyond the threshold, on the unusual side."""
        values = np.asarray(values)
        return values > self.threshold if self.higher_is_unusual else values < self.threshold

    def score(self, values: np.ndarray) -> np.ndarray:
        """(B,) -> (B,) in [0, 1]: the fraction of training values on the usual side of each value."""
        levels = np.linspace(0, 1, QUANTILES)
        quantiles = np.maximum.accumulate(np.asarray(self.quantiles))
        rank = np.interp(np.asarray(values, np.float64), quantiles, levels)
        return rank if self.higher_is_unusual else 1 - rank

    def to_json(self) -> dict[str, Any]:
        return {"quantile": self.quantile, "threshold": self.threshold, "percentiles": list(self.quantiles)}

    @classmethod
    def from_json(cls, data: dict[str, Any], higher_is_unusual: bool) -> Calibration:
        return cls(tuple(float(v) for v in data["percentiles"]), float(data["quantile"]), higher_is_unusual)


@dataclass(frozen=True)
class ClusterInfo:
    """One cluster on the training data. `mapped_class`: Hungarian cluster -> class (None: no labels or
    unmatched); `purity`: share of the cluster's images labelled with its majority class."""

    id: int
    size: int
    centroid: tuple[float, ...] | None  # L2-normalised mean embedding; None for an empty cluster
    samples: tuple[int, ...] = ()  # indices into the training data of its most confident images
    mapped_class: str | None = None
    majority_class: str | None = None
    purity: float | None = None
    mapped_share: float | None = None  # share of its images labelled mapped_class

    def to_json(self, total: int) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["share"] = self.size / total if total else 0.0
        return files.jsonable(data)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterInfo:
        centroid = data.get("centroid")
        return cls(int(data["id"]), int(data["size"]), None if centroid is None else tuple(float(v) for v in centroid),
                   tuple(int(i) for i in data.get("samples", ())), data.get("mapped_class"),
                   data.get("majority_class"), data.get("purity"), data.get("mapped_share"))


@dataclass(frozen=True)
class ClusterStats:
    """The final model on its whole training set (cluster_stats.json in a run, `stats` of a model card)."""

    num_images: int
    clusters: tuple[ClusterInfo, ...]  # one per column of `probabilities`, id = position
    confidence: Calibration  # probability of the assigned cluster
    ood: Calibration  # cosine distance to the nearest of `ood_prototypes`
    class_names: tuple[str, ...] | None = None
    contingency: tuple[tuple[int, ...], ...] | None = None  # (K, classes) image counts, when labels exist
    ood_prototypes: tuple[tuple[float, ...], ...] | None = None  # (P, D) L2-normalised; None: the centroids

    def __post_init__(self) -> None:
        if [c.id for c in self.clusters] != list(range(len(self.clusters))):
            raise ValueError("cluster ids must be 0..K-1 in order")
        if self.ood_prototypes is not None:
            dims = {len(row) for row in self.ood_prototypes} | {len(c.centroid) for c in self.clusters if c.centroid}
            if not self.ood_prototypes or len(dims) != 1:
                raise ValueError("ood_prototypes must be a non-empty (P, D) table with the centroids' D")

    def centroids(self) -> np.ndarray:
        """(K, D) float32; rows of empty clusters are NaN (never the nearest)."""
        dim = next(len(c.centroid) for c in self.clusters if c.centroid is not None)
        return np.array([c.centroid if c.centroid is not None else [np.nan] * dim for c in self.clusters], np.float32)

    def ood_reference(self) -> np.ndarray:
        """(P, D) float32: the points the OOD distance is measured to. Statistics written before there
        were prototypes calibrated the distance to the cluster centroids, so for them it is the centroids."""
        if self.ood_prototypes is None:
            return self.centroids()
        return np.array(self.ood_prototypes, np.float32)

    def default_names(self) -> list[str]:
        """The mapped class where there is one (with a suffix when two clusters share it), else "cluster <id>"."""
        names = [c.mapped_class or unnamed(c.id) for c in self.clusters]
        return [n if names.count(n) == 1 else f"{n} ({c.id})" for n, c in zip(names, self.clusters, strict=True)]

    def to_json(self) -> dict[str, Any]:
        return files.jsonable({
            "num_images": self.num_images, "class_names": self.class_names,
            "clusters": [c.to_json(self.num_images) for c in self.clusters],
            "confidence": {**self.confidence.to_json(), "what": "probability of the assigned cluster; below the "
                           "threshold an answer is flagged low_confidence"},
            "ood": {**self.ood.to_json(), "what": "cosine distance to the nearest of ood_prototypes (a k-means "
                    "of the training embeddings); above the threshold an answer is flagged ood"},
            "ood_prototypes": None if self.ood_prototypes is None else
            [[round(v, PROTOTYPE_DECIMALS) for v in row] for row in self.ood_prototypes],
            "contingency": self.contingency})

    @classmethod
    def from_json(cls, data: Any, source: str = "cluster statistics") -> ClusterStats:
        try:
            contingency, prototypes = data.get("contingency"), data.get("ood_prototypes")
            return cls(int(data["num_images"]), tuple(ClusterInfo.from_json(c) for c in data["clusters"]),
                       Calibration.from_json(data["confidence"], higher_is_unusual=False),
                       Calibration.from_json(data["ood"], higher_is_unusual=True),
                       None if data.get("class_names") is None else tuple(data["class_names"]),
                       None if contingency is None else tuple(tuple(int(v) for v in row) for row in contingency),
                       None if prototypes is None else tuple(tuple(float(v) for v in row) for row in prototypes))
        except (KeyError, TypeError, ValueError, AttributeError, StopIteration) as err:
            raise ValueError(f"{source}: not valid cluster statistics: {err!r}") from err

    @classmethod
    def read(cls, path: str | Path) -> ClusterStats:
        return files.read_record(path, cls.from_json, "cluster statistics")

    def write(self, path: str | Path) -> None:
        files.write_json(path, self.to_json())



@dataclass(frozen=True)
class ModelCard:
    """One exported model version for people and pages: provenance, training metrics, its clusters."""

    name: str
    version: int
    method: str | None
    dataset: str | None
    source_run: str | None  # the run directory's name (no host path)
    finished: bool | None
    epoch: int | None
    exported_at: str | None
    metrics: dict[str, Any] = field(default_factory=dict)  # results.json "metrics": nmi, acc, ari, clusters_used
    training: dict[str, Any] = field(default_factory=dict)  # epochs, num_images, train_seconds, backbone
    stats: ClusterStats | None = None  # None: the run predates cluster statistics
    precision: str = "fp32"  # contract.names.PRECISIONS
    agreement: dict[str, Any] | None = None  # reduced precision: its agreement with fp32 (export/agreement.py)
    levels: ClusterLevels | None = None  # the clusters merged into fewer; None: the run predates it (answers at K)
    schema_version: int = CARD_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.schema_version > CARD_SCHEMA_VERSION:
            raise ValueError(f"card schema_version {self.schema_version} is newer than this code reads "
                             f"({CARD_SCHEMA_VERSION}): upgrade deepcluster-serve")
        if self.levels is not None and self.stats is not None and self.levels.num_clusters != len(self.stats.clusters):
            raise ValueError(f"card levels merge {self.levels.num_clusters} clusters, its statistics have "
                             f"{len(self.stats.clusters)}")

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("stats", "levels")}
        data["stats"] = None if self.stats is None else self.stats.to_json()
        data["levels"] = None if self.levels is None else self.levels.to_json()
        if self.stats is not None:
            data["default_names"] = self.stats.default_names()
        return files.jsonable(data)

    @classmethod
    def from_json(cls, data: Any, source: str = "model card") -> ModelCard:
        if not isinstance(data, dict):
            raise ValueError(f"{source}: not a model card (a JSON object)")
        try:
            values = {f.name: data[f.name] for f in dataclasses.fields(cls)
                      if f.name in data and f.name not in ("stats", "levels")}
            stats, levels = data.get("stats"), data.get("levels")
            return cls(**values, stats=None if stats is None else ClusterStats.from_json(stats, source),
                       levels=None if levels is None else ClusterLevels.from_json(levels, source))
        except TypeError as err:
            raise ValueError(f"{source}: not a valid model card: {err}") from err

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        return files.read_record(path, cls.from_json, "the model card")

    def write(self, path: str | Path) -> None:
        files.write_json(path, self.to_json())


    def markdown(self) -> str:
        """A short human rendering (card.md)."""
        lines = [f"# {self.name} v{self.version}", "",
                 f"- method {self.method}, data set {self.dataset}, run {self.source_run}, epoch {self.epoch}"
                 + ("" if self.finished is not False else " (UNFINISHED training)"),
                 f"- exported {self.exported_at}"]
        scores = ", ".join(f"{k.upper()} {v:.4f}" for k, v in self.metrics.items()
                           if k in ("nmi", "acc", "ari") and isinstance(v, (int, float)))
        if scores:
            lines.append(f"- training-set metrics: {scores}")
        lines.append(f"- precision {self.precision}" + _agreement_text(self.agreement))
        if self.levels is not None:
            lines.append(f"- answers at 1 to {self.levels.num_clusters} clusters (`?clusters=k`; merged by "
                         f"{self.levels.criterion}); suggested: {self.levels.summary()}")
        if self.stats is None:
            return "\n".join([*lines, "", "No cluster statistics (the run predates them).", ""])
        s = self.stats
        lines += [f"- {s.num_images} training images; low confidence below probability {s.confidence.threshold:.3f} "
                  f"({s.confidence.quantile:.0%} of training images); out of distribution above cosine distance "
                  f"{s.ood.threshold:.3f} ({1 - s.ood.quantile:.0%} of training images)", "",
                  "| cluster | name | images | share | class (Hungarian) | purity |", "|---|---|---|---|---|---|"]
        for c, name in zip(s.clusters, s.default_names(), strict=True):
            purity = "" if c.purity is None else f"{c.purity:.2f} ({c.majority_class})"
            share = c.size / s.num_images if s.num_images else 0.0
            lines.append(f"| {c.id} | {name} | {c.size} | {share:.1%} | {c.mapped_class or ''} | {purity} |")
        return "\n".join([*lines, ""])


def _agreement_text(agreement: dict[str, Any] | None) -> str:
    """The card's words for a reduced-precision model's agreement with fp32 (export/agreement.py's figures)."""
    if not agreement:
        return ""
    return (f": cluster agreement with the fp32 graph {agreement['cluster_agreement']:.2%} on "
            f"{agreement['num_images']} training images not used for calibration, embedding cosine mean "
            f"{agreement['embedding_cosine_mean']:.4f} (min {agreement['embedding_cosine_min']:.4f}), largest "
            f"probability difference {agreement['probability_max_abs_diff']:.4f}")


def unnamed(cluster: int) -> str:
    """The name of a cluster nothing else names."""
    return f"cluster {cluster}"


def cluster_names(card: ModelCard | None, count: int) -> list[str]:
    """Default names of `count` clusters: the card's (mapped classes), else "cluster <id>"."""
    if card is not None and card.stats is not None:
        return card.stats.default_names()
    return [unnamed(k) for k in range(count)]


def read_names(path: str | Path, count: int) -> dict[int, str]:
    """cluster_names.json {"<id>": "name"} of a model with `count` clusters -> {id: name}; ValueError (naming the
    file) when it is not such a record."""
    data = files.read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{path}: expected a JSON object {{\"<cluster id>\": \"name\", ...}}")
    names = {}
    for key, value in data.items():
        if not (key.isascii() and key.isdigit()) or int(key) >= count:  # "²".isdigit(), and int() refuses it
            raise ValueError(f"{path}: {key!r} is not a cluster id (0..{count - 1})")
        names[int(key)] = value
    return names


def nearest_centroid_distance(embedding: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """embedding (B, D) L2-normalised, centroids (K, D) (NaN rows ignored) -> (B,) 1 - max cosine similarity."""
    similarity = np.asarray(embedding, np.float32) @ np.nan_to_num(centroids, nan=0.0).T
    similarity[:, np.isnan(centroids).any(axis=1)] = -np.inf
    return 1.0 - similarity.max(axis=1)
