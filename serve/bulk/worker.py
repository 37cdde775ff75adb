"""One model actor of the bulk job: a block of the manifest in, its Parquet shard out.

Each actor owns a gateway backend (`serve.backends.make_backend`: the embedded onnxruntime sessions or
a Triton client, exactly as the gateway builds them) running the one model version the job started
with, and, per block: reads the paths (row group b of the manifest), within the gateway's per-image
limits, decodes them with the gateway's preprocessing (`contract.preprocess.prepare_source`) on
`threads` threads, infers in batches of `batch_size`, and writes `shards/part-<b>.parquet`
atomically. A file that cannot be read or decoded becomes an error row naming it; the block goes on.
Writing a block twice (a retried task, a resumed job) writes the same file again: never a second copy.

Shard columns (one row per image, in listing order):
    index int64, path string, cluster int64, probability float32 (of that cluster),
    top_k list<int64> and top_k_probability list<float32> (most probable clusters, best first),
    all at the job's --clusters level (serve/cards.py answers_at, as the gateway's ?clusters=),
    [embedding list<float32> (D) with embeddings on],
    [extras struct: the model's extra outputs (contract.metadata.ExtraOutput), one field each under its
    name, of its dtype (a list of it for a vector); CoHiClust: extras.path list<int64>],
    [name string, low_confidence bool, ood_score float32, ood bool: from the model version's card, as the
    gateway answers them (serve/cards.py), the names as the job recorded them when it started; name alone
    when the card has no statistics, none without one],
    error string (null, or "path: reason" with every model column null)
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from contract import files
from contract.metadata import ModelMetadata
from contract.names import CLUSTER, EMBEDDING, PROBABILITIES
from contract.preprocess import prepare_source
from serve.answers import extra_outputs, rank_clusters
from serve.bulk.source import PATH, Manifest, display_path, read_listed
from serve.cards import LOW_CONFIDENCE, NAME, OOD, OOD_SCORE, VersionCard, answers_at
from serve.settings import Settings

INDEX, PROBABILITY, TOP_K, TOP_K_PROBABILITY, EXTRAS, ERROR = (
    "index", "probability", "top_k", "top_k_probability", "extras", "error")


@dataclass(frozen=True)
class WorkerSpec:
    """What every actor needs (pickled to each)."""

    manifest: str
    shards: str
    model: str
    version: int | None  # the model version the job started with (None: Triton's own models, unversioned)
    names: tuple[str, ...] | None  # the cluster names the job recorded when it started (None: no card)
    backend: str
    model_repository: str
    triton_url: str
    threads: int
    batch_size: int
    block_size: int
    top_k: int
    embeddings: bool
    max_image_bytes: int
    max_image_pixels: int
    clusters: int  # the level the rows answer at (job.resolve_level)


def shard_path(shards: str | Path, block: int) -> Path:
    """The shard of block `block` (fixed-width ids, so the files list in block order)."""
    return Path(shards) / f"part-{block:08d}.parquet"


def read_image(path: str, size: int, channels: int, max_bytes: int = Settings.max_image_bytes,
               max_pixels: int = Settings.max_image_pixels, crop: float = 1.0) -> np.ndarray | str:
    """One listed file -> uint8 (C, S, S) (the model input's centre `crop`), or "path: reason" (as text:
    display_path) when it cannot be read within the per-image limits or decoded."""
    try:
        return prepare_source(read_listed(path, max_bytes), size, channels, max_pixels, crop=crop)
    # Any failure of one file (decoder bugs included) is that file's error row: one bad file out of
    # 10^8 must not stop the job. The message names the file once.
    except Exception as err:
        text = str(err) if isinstance(err, ValueError | OSError) else f"{type(err).__name__}: {err}"
        for prefix in (f"{path}: ", "image bytes: "):
            text = text.removeprefix(prefix)
        return display_path(f"{path}: {text}")


def _masked(values: np.ndarray, ok: np.ndarray, dtype: pa.DataType | None = None) -> pa.Array:
    """values (n_ok, ...) of the decoded images -> an n-row column, null where the image failed: one value per
    row for 1-d values, else a list per row (nested for more dimensions). dtype None: the values' own.
    Parquet stores null lists only when they are empty, hence offsets, not fixed sizes."""
    dtype = dtype or pa.from_numpy_dtype(values.dtype)
    if values.ndim == 1:
        full = np.zeros(len(ok), values.dtype)
        full[ok] = values
        return pa.array(full, type=dtype, mask=~ok)
    inner = _masked(values.reshape(-1, *values.shape[2:]), np.ones(values.shape[0] * values.shape[1], bool), dtype)
    offsets = np.concatenate([[0], np.cumsum(ok * values.shape[1])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), inner, mask=pa.array(~ok))


def _extras_column(outputs: dict[str, np.ndarray], ok: np.ndarray) -> pa.Array | None:
    """The extra outputs as one struct column, a field per output (None: the model has none)."""
    extras = extra_outputs(outputs)
    if not extras:
        return None
    fields = [_masked(values, ok) for values in extras.values()]
    return pa.StructArray.from_arrays(fields, names=list(extras), mask=pa.array(~ok))


def no_outputs(model: ModelMetadata) -> dict[str, np.ndarray]:
    """The model's outputs for zero images (a block where nothing decoded keeps the columns' types)."""
    return {name: np.zeros((0, *spec.shape[1:]), spec.dtype) for name, spec in model.outputs.items()}


def shard_table(first_index: int, paths: list[str], decoded: list[np.ndarray | str],
                outputs: dict[str, np.ndarray], top_k: int, embeddings: bool,
                notes: dict[str, Any] | None = None) -> pa.Table:
    """The rows of one block; outputs are the model's answers for the decoded images, in order, and notes
    the card's names and flags for them (VersionCard.annotate; None: the version has no card)."""
    n = len(paths)
    ok = np.array([not isinstance(d, str) for d in decoded], dtype=bool)
    columns: dict[str, pa.Array] = {
        INDEX: pa.array(np.arange(first_index, first_index + n, dtype=np.int64)),
        PATH: pa.array([display_path(p) for p in paths], pa.string()),
    }
    cluster = outputs[CLUSTER].astype(np.int64, copy=False).reshape(-1)
    chosen, top_ids, top_p = rank_clusters(outputs[PROBABILITIES], cluster, top_k)
    columns[CLUSTER] = _masked(cluster, ok, pa.int64())
    columns[PROBABILITY] = _masked(chosen.astype(np.float32), ok, pa.float32())
    columns[TOP_K] = _masked(top_ids.astype(np.int64), ok, pa.int64())
    columns[TOP_K_PROBABILITY] = _masked(top_p.astype(np.float32), ok, pa.float32())
    if embeddings and EMBEDDING in outputs:
        columns[EMBEDDING] = _masked(outputs[EMBEDDING].astype(np.float32), ok, pa.float32())
    extras = _extras_column(outputs, ok)
    if extras is not None:
        columns[EXTRAS] = extras
    if notes is not None:
        names = iter(notes[NAME])
        columns[NAME] = pa.array([next(names) if good else None for good in ok], pa.string())
        if OOD in notes:
            columns[LOW_CONFIDENCE] = _masked(notes[LOW_CONFIDENCE], ok, pa.bool_())
            columns[OOD_SCORE] = _masked(notes[OOD_SCORE].astype(np.float32), ok, pa.float32())
            columns[OOD] = _masked(notes[OOD], ok, pa.bool_())
    columns[ERROR] = pa.array([d if isinstance(d, str) else None for d in decoded], pa.string())
    return pa.table(columns)


class BlockWorker:
    """The callable class Ray Data runs on its actor pool: one batch = some block ids."""

    def __init__(self, spec: WorkerSpec) -> None:
        from serve.backends import make_backend
        from serve.settings import Settings

        self.spec = spec
        settings = Settings(backend=spec.backend, model_repository=spec.model_repository,
                            triton_url=spec.triton_url, ort_threads=spec.threads,
                            ort_instances=1)  # an actor infers one batch at a time: all its threads on it
        self.loop = asyncio.new_event_loop()  # the backends are asyncio; this actor drives one loop
        self.backend = make_backend(settings)
        self.loop.run_until_complete(self.backend.start())
        self.model = self.loop.run_until_complete(self.backend.select(spec.model, spec.version))
        card = VersionCard.find(spec.model_repository, self.model)
        self.card = card if card is None or spec.names is None else card.with_names(list(spec.names))
        self.manifest = Manifest(spec.manifest)
        self.pool = ThreadPoolExecutor(spec.threads, thread_name_prefix="decode") if spec.threads > 1 else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        blocks = [int(b) for b in batch["block"]]
        done = [self.run_block(b) for b in blocks]
        return {key: np.array([d[key] for d in done]) for key in done[0]}

    def decode(self, paths: list[str]) -> list[np.ndarray | str]:
        read = partial(read_image, size=self.model.input.size, channels=self.model.input.channels,
                       max_bytes=self.spec.max_image_bytes, max_pixels=self.spec.max_image_pixels,
                       crop=self.model.input.crop)
        return [read(p) for p in paths] if self.pool is None else list(self.pool.map(read, paths))

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        spec = self.spec
        step = spec.batch_size
        parts = [self.loop.run_until_complete(self.backend.infer(spec.model, images[i:i + step], spec.version))
                 for i in range(0, len(images), step)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def run_block(self, block: int) -> dict[str, Any]:
        started, cpu = time.time(), time.process_time()  # wall clock: comparable across the actors' processes
        paths = self.manifest.block(block)
        decoded = self.decode(paths)
        images = [d for d in decoded if not isinstance(d, str)]
        outputs = self.infer(np.stack(images)) if images else no_outputs(self.model)
        outputs, notes = answers_at(self.card, outputs, self.spec.clusters)
        table = shard_table(block * self.spec.block_size, paths, decoded, outputs,
                            min(self.spec.top_k, self.spec.clusters), self.spec.embeddings, notes)
        with files.atomic_open(shard_path(self.spec.shards, block), "wb") as f:
            pq.write_table(table, f)
        return {"block": block, "images": len(paths), "errors": len(paths) - len(images),
                "started": started, "finished": time.time(), "cpu_seconds": time.process_time() - cpu}

    def __del__(self) -> None:
        if getattr(self, "pool", None) is not None:
            self.pool.shutdown(wait=False)
