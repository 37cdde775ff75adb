"""The embedding map of a model version: training embeddings projected to 2-D with UMAP, at export.

    write_projection(run_dir / CLUSTER_SAMPLES_FILE, version_dir / PROJECTION_FILE)   # False: no map

The trainer keeps up to MAP_POINTS training embeddings spread over the data set (cluster_samples.npz
map_embedding, map_cluster); UMAP (umap-learn, cosine metric, a fixed seed) maps them into the unit
square. The gateway places a new image on the map as UMAP's own transform starts: at the similarity-
weighted mean of its nearest training points (serve/page.py); it does not run UMAP itself, so the
gateway needs no numba.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from contract import files

PROJECTION_METHODS = ("umap", "none")


def project_umap(embedding: np.ndarray, seed: int = 0) -> np.ndarray:
    """(m, D) -> (m, 2) in [0, 1]: UMAP with cosine distances, rescaled to the unit square (aspect kept)."""
    import umap  # umap-learn, in the export extra: heavy (numba), imported only here

    neighbours = max(2, min(15, len(embedding) - 1))
    # n_jobs=1: a seeded UMAP runs on one thread anyway (and warns when asked for more)
    points = umap.UMAP(n_components=2, n_neighbors=neighbours, metric="cosine", random_state=seed, n_jobs=1,
                       init="random" if len(embedding) < 16 else "spectral").fit_transform(embedding)
    points = points - points.min(0)
    return (points / max(float(points.max()), 1e-12)).astype(np.float32)


def write_projection(samples: Path, target: Path, method: str = "umap",
                     log: Callable[[str], None] = print) -> bool:
    """Project the run's map sample into `target` (npz); False, with a line saying why, when there is no map."""
    if method == "none":
        return False
    if method not in PROJECTION_METHODS:
        raise ValueError(f"--projection must be one of {list(PROJECTION_METHODS)}, got {method!r}")
    if not samples.is_file():
        log(f"no embedding map: {samples.name} is missing (the run predates it)")
        return False
    with np.load(samples, allow_pickle=False) as data:
        if "map_embedding" not in data.files:
            log(f"no embedding map: {samples.name} has no map sample (the run predates it)")
            return False
        embedding, cluster = data["map_embedding"], data["map_cluster"]
    try:
        points = project_umap(embedding)
    except ImportError:
        log("no embedding map: umap-learn is not installed (pip install umap-learn, or the export extra)")
        return False
    with files.atomic_open(target, "wb") as f:
        np.savez_compressed(f, points=points, cluster=cluster, embedding=embedding.astype(np.float32),
                            method=np.array("umap"))
    log(f"embedding map: {len(points)} training images projected with UMAP")
    return True
