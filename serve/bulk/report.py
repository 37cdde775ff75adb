"""What a person looks at after a bulk job: summary.json (counts per cluster, errors, flagged images) and one
gallery per cluster.

Both are computed from the shards alone, one shard at a time (bounded memory), so a resumed job's
summary covers every block whichever run wrote it. The scan also checks that each block's shard holds
exactly its images, in order: a missing or doubled row fails the job loudly instead of passing unseen.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from contract import files
from contract.metadata import ModelMetadata
from contract.names import CLUSTER, bulk_gallery_file
from serve.bulk.source import Manifest
from serve.bulk.worker import ERROR, INDEX, PROBABILITY, read_image, shard_path
from serve.cards import LOW_CONFIDENCE, OOD

ERROR_EXAMPLES = 20
THUMBNAIL = 96
CAPTION = 18


class Candidates:
    """The `size` most confident images per cluster seen so far (ties: the earlier image)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.cluster = np.zeros(0, np.int64)
        self.probability = np.zeros(0, np.float32)
        self.index = np.zeros(0, np.int64)
        self.path = np.zeros(0, object)

    def add(self, cluster: np.ndarray, probability: np.ndarray, index: np.ndarray, path: np.ndarray) -> None:
        cluster = np.concatenate([self.cluster, cluster])
        probability = np.concatenate([self.probability, probability])
        index = np.concatenate([self.index, index])
        path = np.concatenate([self.path, path])
        order = np.lexsort((index, -probability, cluster))  # by cluster, then most probable first
        by_cluster = cluster[order]
        rank = np.arange(len(order)) - np.searchsorted(by_cluster, by_cluster, side="left")
        keep = order[rank < self.size]
        self.cluster, self.probability = cluster[keep], probability[keep]
        self.index, self.path = index[keep], path[keep]

    def of(self, cluster: int) -> list[str]:
        return list(self.path[self.cluster == cluster])


def scan_shards(shards: Path, manifest: Manifest, block_size: int, num_clusters: int,
                gallery_size: int) -> tuple[np.ndarray, list[str], int, Candidates, dict[str, int]]:
    """(count per cluster (K,), first error messages, error count, gallery candidates, flagged images per
    flag column the shards have) over every shard."""
    counts = np.zeros(num_clusters, np.int64)
    examples: list[str] = []
    errors = 0
    candidates = Candidates(gallery_size)
    flagged: dict[str, int] = {}
    for block, length in enumerate(manifest.block_lengths()):
        with pq.ParquetFile(shard_path(shards, block)) as shard:  # one open: its schema, then the columns
            flags = [name for name in (LOW_CONFIDENCE, OOD) if name in shard.schema_arrow.names]
            table = shard.read(columns=[INDEX, CLUSTER, PROBABILITY, ERROR, *flags])
        for name in flags:
            flagged[name] = flagged.get(name, 0) + int(pc.sum(table[name].cast("int64")).as_py() or 0)
        index = table[INDEX].to_numpy()
        expected = np.arange(block * block_size, block * block_size + length)
        if len(index) != length or not np.array_equal(index, expected):
            raise RuntimeError(f"{shard_path(shards, block)} holds {len(index)} rows for the {length} images "
                               f"of block {block}: delete it and run the job again")
        failed = table[ERROR].is_valid().to_numpy(zero_copy_only=False)
        errors += int(failed.sum())
        if len(examples) < ERROR_EXAMPLES and failed.any():
            examples += pc.filter(table[ERROR], table[ERROR].is_valid()).to_pylist()[:ERROR_EXAMPLES - len(examples)]
        ok = ~failed
        cluster = table[CLUSTER].to_numpy(zero_copy_only=False)[ok].astype(np.int64)
        counts += np.bincount(cluster, minlength=num_clusters)[:num_clusters]
        if gallery_size:
            probability = table[PROBABILITY].to_numpy(zero_copy_only=False)[ok].astype(np.float32)
            paths = np.array(manifest.block(block), dtype=object)[ok]  # the files' own names, not display_path's
            candidates.add(cluster, probability, index[ok], paths)
    return counts, examples, errors, candidates, flagged


def gallery_png(cluster: int, count: int, paths: list[str], columns: int) -> bytes:
    """One row of `columns` thumbnails (THUMBNAIL px squares, the images' centres) under a caption."""
    width = max(1, columns) * THUMBNAIL
    canvas = Image.new("RGB", (width, CAPTION + THUMBNAIL), "white")
    ImageDraw.Draw(canvas).text((4, 3), f"cluster {cluster}: {count:,} images", fill="black")
    for i, path in enumerate(paths):
        image = read_image(path, THUMBNAIL, 3)
        if not isinstance(image, str):  # a file that vanished since: its square stays white
            canvas.paste(Image.fromarray(image.transpose(1, 2, 0)), (i * THUMBNAIL, CAPTION))
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG")
    return buffer.getvalue()


def summarize(shards: Path, manifest: Manifest, block_size: int, spec: ModelMetadata, gallery_size: int,
              gallery_dir: Path) -> dict[str, Any]:
    """summary.json's counts (every shard) and the gallery PNGs, one per cluster with images."""
    counts, examples, errors, candidates, flagged = scan_shards(shards, manifest, block_size, spec.num_clusters,
                                                                gallery_size)
    galleries = []
    if gallery_size:
        gallery_dir.mkdir(parents=True, exist_ok=True)
        for cluster in np.flatnonzero(counts).tolist():
            path = gallery_dir / bulk_gallery_file(cluster)
            files.write_bytes(path, gallery_png(cluster, int(counts[cluster]), candidates.of(cluster), gallery_size))
            galleries.append(str(path))
    return {"images": manifest.num_images, "rows": int(counts.sum()) + errors, "clustered": int(counts.sum()),
            "errors": errors, "error_examples": examples, **flagged,
            "clusters": {str(k): int(n) for k, n in enumerate(counts)}, "galleries": galleries}
