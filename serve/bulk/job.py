"""The bulk job's driver: check everything, list the source once, run the pending blocks on Ray Data, summarise.

    opts = BulkOptions(source="photos/", output="out/", model_repository="model_repository")
    summary = run_job(opts)          # BulkError (exit 2) before any Ray work when something is missing

OUT after a job:
    job.json          what the rows depend on (source, the model version and its export, block size, top-k,
                      embeddings, image limits) and the cluster names when the job started
    manifest.parquet  the listing: row group b = the paths of block b
    shards/part-<b>.parquet   the rows of block b, written atomically by the actor that ran it
    summary.json, gallery/cluster_<k:03d>.png (clusters with images)

One job, one model version: the job resolves the model to its latest version when it starts and
records it; every actor, and every later run on the same OUT, uses exactly that version (a version
exported meanwhile is not used; a recorded version that is gone is refused with one line), with the
names recorded at the start (a rename meanwhile does not give one cluster two names).
Resuming: a block is done when its shard exists, so a job started again on the same OUT runs only the
blocks without one (a stopped job leaves at most temporary files, which are removed); the listing of
the first run is kept, so blocks never shift. Ray is imported only here, in `run_blocks`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract import files
from contract.levels import LevelError
from contract.metadata import ModelMetadata
from contract.names import BULK_GALLERY_DIR, BULK_SUMMARY_FILE, PRECISIONS
from contract.repository import complete_versions, model_names
from serve.backends.base import choose_model
from serve.bulk import report
from serve.bulk.source import Manifest, list_source, write_manifest
from serve.bulk.worker import BlockWorker, WorkerSpec, shard_path
from serve.cards import VersionCard, answer_level
from serve.errors import GatewayError
from serve.settings import BACKENDS, Settings

JOB_FILE = "job.json"
NAMES = "cluster_names"
"""job.json: the cluster names when the job started, which every row gets (None: the version has no card)."""
MANIFEST_FILE = "manifest.parquet"
SHARDS_DIR = "shards"


class BulkError(ValueError):
    """A job that cannot start: model or repository missing, bad source, OUT holding another job."""


@dataclass(frozen=True)
class BulkOptions:
    source: str = field(metadata={"help": "folder (recursive), glob, .txt or .parquet list of paths, or a URI"})
    output: str = field(metadata={"help": "output folder (created; a job started again on it resumes)"})
    model_repository: str = field(default="model_repository",
                                  metadata={"help": "model repository written by `python -m export`"})
    model: str | None = field(default=None, metadata={"help": "model name (default: the repository's only model)"})
    precision: str | None = field(default=None, metadata={
        "help": f"the model's precision, one of {list(PRECISIONS)}: the model exported at it (NAME_int8 for --model "
                "NAME --precision int8; default: the model as named)"})
    backend: str = field(default="embedded", metadata={"help": f"inference backend: one of {BACKENDS}"})
    triton_url: str = field(default="127.0.0.1:8001", metadata={"help": "Triton gRPC address (triton backend)"})
    address: str | None = field(default=None, metadata={
        "help": "Ray cluster to join (auto, host:6379 or ray://host:10001); default: a local Ray started here"})
    num_cpus: int = field(default=0, metadata={"help": "CPUs of the local Ray (0: all of this machine's)"})
    actors: int = field(default=0, metadata={"help": "model actors (0: the cluster's CPUs / threads)"})
    threads: int = field(default=0, metadata={
        "help": "threads per actor, for decoding and onnxruntime (0: the cluster's CPUs / actors)"})
    gpus_per_actor: float = field(default=0.0, metadata={"help": "GPUs each actor reserves (onnxruntime CUDA)"})
    batch_size: int = field(default=256, metadata={"help": "images per inference call"})
    block_size: int = field(default=1000, metadata={"help": "images per block: the unit of work, shards and resume"})
    top_k: int = field(default=3, metadata={"help": "most probable clusters kept per image"})
    clusters: int | None = field(default=None, metadata={
        "help": "answer at this many clusters: the model's merged along its card's hierarchy, as the gateway's "
                "?clusters= (default: the model's own)"})
    embeddings: bool = field(default=False, metadata={"help": "also write each image's embedding"})
    gallery_size: int = field(default=8, metadata={"help": "images per cluster gallery (the most confident)"})
    max_image_bytes: int = field(default=Settings.max_image_bytes, metadata={
        "help": "largest image file, bytes; a larger one is an error row and is not read (the gateway's limit)"})
    max_image_pixels: int = field(default=Settings.max_image_pixels, metadata={
        "help": "largest decoded image, width * height (the gateway's limit)"})

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise BulkError(f"unknown backend {self.backend!r}; choose from {list(BACKENDS)}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise BulkError(f"unknown precision {self.precision!r}; choose from {list(PRECISIONS)}")
        for name in ("batch_size", "block_size", "top_k", "max_image_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise BulkError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("num_cpus", "actors", "threads", "gpus_per_actor", "gallery_size"):
            if getattr(self, name) < 0:
                raise BulkError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")


def started_job(out: Path) -> dict[str, Any] | None:
    """job.json of the job started in OUT (None: none was)."""
    return files.read_json(out / JOB_FILE) if (out / JOB_FILE).is_file() else None


def resolve_model(opts: BulkOptions, started: dict[str, Any] | None = None) -> ModelMetadata:
    """The model version the job runs, checked without Ray: the latest version of --model (or of the
    repository's only model), or for a job `started` before, the model and version it recorded.
    BulkError names what is missing."""
    pinned = (started or {}).get("model_version")
    if opts.backend == "triton" and not Path(opts.model_repository).is_dir():
        models = _triton_models(opts.triton_url)  # Triton's own models: unversioned
        name = _chosen(opts, models, started)
        if name not in models:
            raise BulkError(f"no model {name!r} at Triton {opts.triton_url}; models: {sorted(models)}")
        return models[name]
    from serve.backends.repository import RepositoryError, check_root, onnx_file, resolve

    try:
        names = model_names(check_root(opts.model_repository))
    except RepositoryError as err:
        raise BulkError(str(err)) from err
    name = _chosen(opts, names, started)
    if name not in names:
        raise BulkError(f"no model {name!r} in {opts.model_repository}; models: {names}")
    try:
        spec = resolve(opts.model_repository, name, pinned).metadata
    except RepositoryError as err:
        if pinned is None:
            raise BulkError(str(err)) from err
        held = complete_versions(opts.model_repository, name)
        raise BulkError(f"{opts.output} is a job started with model {name!r} version {pinned}, which "
                        f"{opts.model_repository} no longer holds (versions: {held}): "
                        "put that version back to finish the job, or start it again in another --output") from err
    except ValueError as err:  # a metadata.json that does not parse
        raise BulkError(f"model {name!r}: {err}") from err
    if opts.backend == "embedded":
        for part in (spec.encoder, spec.head):
            try:
                onnx_file(opts.model_repository, part, spec.version)
            except FileNotFoundError as err:
                raise BulkError(f"model {name!r} version {spec.version} is incomplete: {err}") from err
    return spec


def _chosen(opts: BulkOptions, served: Collection[str], started: dict[str, Any] | None) -> str:
    """--model at --precision, or the only model (of that precision): serve.backends.base.choose_model; a job
    started before and resumed without --model: the model it recorded."""
    if started is not None and opts.model is None:
        return started["model"]
    try:
        return choose_model(served, opts.model, opts.precision, option="--model")
    except GatewayError as err:
        raise BulkError(f"{opts.model_repository}: {err.message}") from err
def resolve_level(opts: BulkOptions, spec: ModelMetadata, started: dict[str, Any] | None = None) -> int:
    """The number of clusters the rows answer at (--clusters, checked as the gateway checks ?clusters=); a job
    resumed without --clusters: the level it recorded."""
    card = VersionCard.find(opts.model_repository, spec)
    requested = started.get("clusters") if started is not None and opts.clusters is None else opts.clusters
    try:
        return answer_level(card, spec.num_clusters, requested)
    except LevelError as err:
        raise BulkError(f"--clusters: {err}") from err


def _triton_models(url: str) -> dict[str, ModelMetadata]:
    import asyncio

    from serve.backends.triton import TritonBackend
    from serve.errors import GatewayError

    async def discover() -> dict[str, ModelMetadata]:
        backend = TritonBackend(url)
        try:
            await backend.start()
            return backend.models()
        finally:
            await backend.close()

    try:
        return asyncio.run(discover())
    except GatewayError as err:
        raise BulkError(f"Triton at {url}: {err.message}") from err


def job_record(opts: BulkOptions, spec: ModelMetadata, level: int) -> dict[str, Any]:
    """What the rows depend on: a job resumed with any of these changed would mix two kinds of rows."""
    return {"source": opts.source, "model": spec.name, "model_version": spec.version,
            "model_exported_at": spec.exported_at, "model_source_run": spec.source_run,
            "block_size": opts.block_size, "top_k": opts.top_k, "embeddings": opts.embeddings,
            "max_image_bytes": opts.max_image_bytes, "max_image_pixels": opts.max_image_pixels, "clusters": level}


def prepare_output(opts: BulkOptions, spec: ModelMetadata, level: int, log: Callable[[str], None]) -> Manifest:
    """Create or re-open OUT: the job record (with the cluster names at its level when it starts), the manifest
    (listed once), no temporary leftovers."""
    out = Path(opts.output)
    if out.exists() and not out.is_dir():
        raise BulkError(f"--output {out} is a file, not a folder")
    record = job_record(opts, spec, level)
    job_file, manifest = out / JOB_FILE, out / MANIFEST_FILE
    if job_file.is_file():
        before = {"clusters": spec.num_clusters, **files.read_json(job_file)}  # jobs before --clusters: the model's
        changed = {k: (before.get(k), v) for k, v in record.items() if before.get(k) != v}
        if changed:
            what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise BulkError(f"{out} holds a job with other settings ({what}): use another --output, or delete it")
    if not manifest.is_file():
        paths = list_source(opts.source)  # SourceError for a missing source before OUT is created
        out.mkdir(parents=True, exist_ok=True)
        card = VersionCard.find(opts.model_repository, spec)
        # first: a manifest always has the record it was listed for
        files.write_json(job_file, {**record, NAMES: None if card is None else card.names(level)})
        log(f"listing {opts.source} ...")
        count = write_manifest(paths, manifest, opts.block_size, opts.source)
        log(f"{count:,} images in {-(-count // opts.block_size):,} blocks of {opts.block_size}")
    (out / SHARDS_DIR).mkdir(exist_ok=True)
    for leftover in (out / SHARDS_DIR).glob(".*.tmp"):  # shards a stopped job was writing
        leftover.unlink(missing_ok=True)
    return Manifest(manifest)


def pending_blocks(out: Path, num_blocks: int) -> list[int]:
    return [b for b in range(num_blocks) if not shard_path(out / SHARDS_DIR, b).is_file()]


def pool_size(cpus: float, actors: int, threads: int, blocks: int) -> tuple[int, int]:
    """(actors, threads per actor) so that actors x threads fits the cluster's CPUs (either may be given),
    and no more actors than `blocks` to run (an actor without a block would only cost its start)."""
    cpus, blocks = max(1, int(cpus)), max(1, blocks)
    if actors and threads:
        return min(actors, blocks), threads
    if threads:
        return max(1, min(cpus // threads, blocks)), threads
    actors = min(actors or cpus, blocks)
    return actors, max(1, cpus // actors)


@dataclass
class Progress:
    """Counts what the actors report and prints a line every `every_s` seconds (and at the end).

    The steady rate is the images over the span the actors worked (first block started to last block
    finished): it leaves out Ray's and the actors' start-up, which a long job pays once."""

    total: int
    log: Callable[[str], None]
    every_s: float = 5.0
    began: float = field(default_factory=time.perf_counter)
    images: int = 0
    errors: int = 0
    cpu_seconds: float = 0.0  # of the actors' processes while they ran blocks
    first_started: float = float("inf")
    last_finished: float = float("-inf")
    _last: float = 0.0

    def update(self, block: dict[str, Any]) -> None:
        """block: what BlockWorker.run_block returned."""
        self.images += int(block["images"])
        self.errors += int(block["errors"])
        self.cpu_seconds += float(block["cpu_seconds"])
        self.first_started = min(self.first_started, float(block["started"]))
        self.last_finished = max(self.last_finished, float(block["finished"]))
        now = time.perf_counter()
        if now - self._last >= self.every_s or self.images == self.total:
            self._last = now
            rate = self.images / max(now - self.began, 1e-9)
            eta = (self.total - self.images) / rate if rate else float("inf")
            self.log(f"{self.images:,}/{self.total:,} images ({100 * self.images / self.total:.1f}%), "
                     f"{rate:,.0f} images/s, {self.errors:,} errors, ETA {eta:,.0f} s")

    def stats(self) -> dict[str, Any]:
        seconds = time.perf_counter() - self.began
        span = self.last_finished - self.first_started
        return {"images": self.images, "errors": self.errors, "seconds": round(seconds, 2),
                "images_per_second": round(self.images / max(seconds, 1e-9), 1),
                "steady_images_per_second": round(self.images / span, 1) if span > 0 else None,
                "actor_cpu_seconds": round(self.cpu_seconds, 2)}


def init_ray(opts: BulkOptions) -> None:
    """Join --address, or start a local Ray; Ray Data says only what goes wrong (the job prints its own progress;
    Ray Data's full log stays in the session's ray-data.log)."""
    if not opts.address and "ray" not in sys.modules:
        # Token authentication, Ray's default for a new local cluster, chosen explicitly (Ray warns when it is
        # left to the default); read when Ray is imported. A RAY_AUTH_MODE the user set is kept.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray
    import ray.data

    if opts.address:
        ray.init(address=opts.address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=opts.num_cpus or None, include_dashboard=False, logging_level=logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
            handler.addFilter(lambda record: not record.getMessage().startswith("Progress bars disabled"))


def run_blocks(opts: BulkOptions, spec: ModelMetadata, level: int, manifest: Manifest, pending: list[int],
               log: Callable[[str], None]) -> dict[str, Any]:
    """Run `pending` blocks on a Ray actor pool (streaming: a few blocks in flight); returns this run's figures."""
    lengths = manifest.block_lengths()
    began = time.perf_counter()  # end to end includes Ray's start
    init_ray(opts)
    import ray
    import ray.data

    try:
        actors, threads = pool_size(ray.cluster_resources().get("CPU", 1), opts.actors, opts.threads, len(pending))
        out = Path(opts.output).resolve()
        names = started_job(out)[NAMES]
        worker = WorkerSpec(
            manifest=str(out / MANIFEST_FILE), shards=str(out / SHARDS_DIR), model=spec.name, version=spec.version,
            names=None if names is None else tuple(names), backend=opts.backend,
            model_repository=str(Path(opts.model_repository).resolve()), triton_url=opts.triton_url,
            threads=threads, batch_size=opts.batch_size, block_size=opts.block_size, top_k=opts.top_k,
            embeddings=opts.embeddings, max_image_bytes=opts.max_image_bytes, max_image_pixels=opts.max_image_pixels,
            clusters=level)
        log(f"{len(pending):,} blocks to run on {actors} actor(s) x {threads} thread(s)"
            + (f", {opts.gpus_per_actor} GPU each" if opts.gpus_per_actor else ""))
        # max_restarts=0: Ray Data passes an actor's constructor arguments through the object store, with which
        # Ray cannot restart an actor reliably (ray-project/ray#53727; it logs an error line for every actor when
        # restarts are on). A lost actor stops the job instead, and the same command resumes it. Ray 2.60 (the
        # version pinned) takes max_restarts only among the remote arguments it calls deprecated.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
            results = ray.data.from_items([{"block": b} for b in pending]).map_batches(
                BlockWorker, fn_constructor_args=(worker,), batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=threads, num_gpus=opts.gpus_per_actor or None, max_restarts=0)
        progress = Progress(sum(lengths[b] for b in pending), log, began=began)
        for row in results.iter_rows():
            progress.update(row)
        return {**progress.stats(), "actors": actors, "threads_per_actor": threads,
                "ray": opts.address or "local"}
    finally:
        ray.shutdown()


def run_job(opts: BulkOptions, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Cluster every image of opts.source into opts.output; returns summary.json's contents."""
    log = log or (lambda msg: print(f"bulk: {msg}", file=sys.stderr, flush=True))
    out = Path(opts.output)
    started = started_job(out)
    spec = resolve_model(opts, started)
    log(f"model {spec.name}" + ("" if spec.version is None else f" version {spec.version}")
        + (" (recorded when the job started)" if started else ""))
    level = resolve_level(opts, spec, started)
    manifest = prepare_output(opts, spec, level, log)
    pending = pending_blocks(out, manifest.num_blocks)
    if len(pending) < manifest.num_blocks:
        log(f"resuming: {manifest.num_blocks - len(pending):,} of {manifest.num_blocks:,} blocks already done")
    run = run_blocks(opts, spec, level, manifest, pending, log) if pending else {"images": 0}
    run["blocks"] = len(pending)
    summary = report.summarize(out / SHARDS_DIR, manifest, opts.block_size, spec, opts.gallery_size,
                               out / BULK_GALLERY_DIR)
    summary.update(source=opts.source, model=spec.name, model_version=spec.version, precision=spec.precision,
                   level=level, cluster_names=started_job(out)[NAMES], blocks=manifest.num_blocks,
                   options={k: v for k, v in dataclasses.asdict(opts).items() if k not in ("source", "output")},
                   run=run, cpu_count=os.cpu_count())
    files.write_json(out / BULK_SUMMARY_FILE, summary)
    return summary
