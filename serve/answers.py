"""What the gateway answers about images and models, shaped once for the HTTP routes and the bulk shards.

    rank_clusters(probabilities, cluster, k)    probability of each image's cluster and its top-k clusters
    extra_outputs(outputs)                      the head outputs beyond the required three, by name
    cluster_results(done, top_k, notes)         /cluster items: cluster, probability, top_k, the extra outputs
                                                under their own names, the card's name and flags
    embed_results(done)                         /embed items
    model_summary(spec), public_metadata(spec)  what /models and /models/{name} say about a model

A method's extra outputs (contract.metadata.ExtraOutput; CoHiClust's `path`) are carried by name: every
head output beyond embedding, probabilities and cluster becomes a field of each /cluster item and of
each bulk row's `extras` (serve/bulk/worker.py), as the model gives it for that image.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import numpy as np

from contract.metadata import ModelMetadata
from contract.names import CLUSTER, EMBEDDING, PROBABILITIES, REQUIRED_OUTPUTS
from serve.cards import LOW_CONFIDENCE, NAME, OOD, OOD_SCORE

if TYPE_CHECKING:  # the bulk workers use this module without the HTTP service
    from serve.gateway import Inference


def rank_clusters(probabilities: np.ndarray, cluster: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """probabilities (B, K), cluster (B,) -> probability of the cluster (B,), top-k ids (B, k), their probabilities
    (B, k); best first, ties in cluster order."""
    k = min(k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    chosen = probabilities[np.arange(len(cluster)), cluster]
    return chosen, order, np.take_along_axis(probabilities, order, axis=1)


def extra_outputs(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs beyond embedding, probabilities and cluster (a method's declared extras), in graph order."""
    return {name: values for name, values in outputs.items() if name not in REQUIRED_OUTPUTS}


def _notes_of(notes: dict[str, Any], j: int) -> dict[str, Any]:
    """The card's name and flags of answer j (VersionCard.annotate)."""
    item: dict[str, Any] = {NAME: notes[NAME][j]}
    if OOD in notes:
        item.update({LOW_CONFIDENCE: bool(notes[LOW_CONFIDENCE][j]), OOD_SCORE: round(float(notes[OOD_SCORE][j]), 4),
                     OOD: bool(notes[OOD][j])})
    return item


def cluster_results(done: Inference, top_k: int, notes: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per image: cluster, probability, top_k, the extra outputs, and with `notes` (Gateway.annotate) name and
    flags; or its decode error."""
    results = _error_items(done)
    if done.outputs is None:
        return results
    cluster = done.outputs[CLUSTER].astype(np.int64, copy=False)
    chosen, top_ids, top_p = (a.tolist() for a in rank_clusters(done.outputs[PROBABILITIES], cluster, top_k))
    extras = {name: values.tolist() for name, values in extra_outputs(done.outputs).items()}
    for j, (i, c) in enumerate(zip(done.ok, cluster.tolist(), strict=True)):
        item = {"index": i, "filename": done.uploads[i].filename, "cluster": c, "probability": chosen[j],
                "top_k": [{"cluster": a, "probability": b} for a, b in zip(top_ids[j], top_p[j], strict=True)]}
        item.update((name, values[j]) for name, values in extras.items())
        if notes is not None:
            item.update(_notes_of(notes, j))
        results[i] = item
    return results


def embed_results(done: Inference) -> list[dict[str, Any]]:
    """Per image: its embedding (a float32 row, written by the JSON response class) or its decode error."""
    results = _error_items(done)
    if done.outputs is not None:
        rows = np.ascontiguousarray(done.outputs[EMBEDDING], dtype=np.float32)
        for j, i in enumerate(done.ok):
            results[i] = {"index": i, "filename": done.uploads[i].filename, "embedding": rows[j]}
    return results


def _error_items(done: Inference) -> list[dict[str, Any]]:
    """One slot per image, the decode errors filled in."""
    results: list[dict[str, Any]] = [{}] * len(done.uploads)
    for i, message in done.decode_errors.items():
        results[i] = {"index": i, "filename": done.uploads[i].filename, "error": message}
    return results


def public_metadata(spec: ModelMetadata) -> dict[str, Any]:
    """The model's metadata.json for clients: the source run by its directory name, not its path on this host."""
    data = spec.to_json()
    if data.get("source_run"):
        data["source_run"] = PurePath(data["source_run"]).name
    return data


def model_summary(spec: ModelMetadata) -> dict[str, Any]:
    """What /models lists per model, besides its runtime and full metadata."""
    return {"name": spec.name, "version": spec.version, "method": spec.method, "dataset": spec.dataset,
            "num_clusters": spec.num_clusters,
            "embedding_dim": spec.embedding_dim, "class_names": spec.class_names,
            "input": {"name": spec.input.name, "dtype": spec.input.dtype, "layout": spec.input.layout,
                      "channels": spec.input.channels, "height": spec.input.height, "width": spec.input.width},
            "outputs": list(spec.outputs)}
