"""The gateway's web page: GET / and its static files (serve/static/, plain HTML/CSS/JS, no external assets),
and the few routes only a page needs, all read from the served model version's directory:

    GET  /models/{name}/clusters/{cluster}/samples/{k}.png   a training image of the cluster (cluster_samples.npz)
    PUT  /models/{name}/clusters/{cluster}[?clusters=k]     {"name": ...}: writes the version's names file (of
                                                            level k: contract.names.level_names_file)
    GET  /models/{name}/tree                                CoHiClust's pruned tree with sizes per node
    GET  /models/{name}/projection                          the embedding map (UMAP at export, points in [0, 1])
    POST /models/{name}/projection/place                    images -> their positions on the map
    GET  /bulk/summary, /bulk/galleries/{cluster}.png        a bulk job's output (setting bulk_output)

New images are placed as UMAP's transform starts: at the similarity-weighted mean position of their
PLACE_NEIGHBOURS most similar training points (cosine on the L2-normalised embeddings); UMAP itself is
not run here. Everything else the page shows comes from the public API (/models, /models/{name},
/cluster). With an API key set these routes need it, like the API; the page asks for it once.
"""

from __future__ import annotations

import asyncio
import io
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field, field_validator

from contract import files
from contract.metadata import ModelMetadata
from contract.names import (
    BULK_GALLERY_DIR,
    BULK_SUMMARY_FILE,
    CLUSTER_SAMPLES_FILE,
    EMBEDDING,
    PROJECTION_FILE,
    TREE_FILE,
    bulk_gallery_file,
)
from serve.auth import api_key_dependencies
from serve.backends.repository import ModelVersion, RepositoryError, resolve
from serve.cards import MAX_NAME_LENGTH, NAME_PATTERN, clean_name, write_cluster_name
from serve.errors import bad_request, not_found, version_unavailable
from serve.gateway import Gateway
from serve.schemas import clusters_query, documented_errors

STATIC = Path(__file__).with_name("static")
PLACE_NEIGHBOURS = 10
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
"""The page's Content-Security-Policy: its own files and the API only (thumbnails of dropped files are blob:)."""
BULK_SUMMARY_FIELDS = ("images", "rows", "clustered", "errors", "low_confidence", "ood", "clusters", "model",
                       "model_version", "blocks", "cluster_names", "galleries")
"""What /bulk/summary shows of summary.json: counts and names, no host path (source, options, error examples)."""


class ClusterName(BaseModel):
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN,
                      description=f"the cluster's new name: up to {MAX_NAME_LENGTH} characters, something visible "
                      "(no control or invisible formatting characters), spaces around it trimmed")

    @field_validator("name")
    @classmethod
    def _clean(cls, value: str) -> str:
        return clean_name(value)


@lru_cache(maxsize=16)
def _npz(path: Path, stamp: int) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """A version's npz, cached until the file changes; not_found when the version has none."""
    try:
        return _npz(path, path.stat().st_mtime_ns)
    except FileNotFoundError as err:
        raise not_found(f"this model version has no {path.name} (exported from a run that predates it)") from err


def place(embedding: np.ndarray, projection: dict[str, np.ndarray], neighbours: int = PLACE_NEIGHBOURS) -> np.ndarray:
    """New embeddings (B, D) -> (B, 2) map positions: similarity-weighted mean of the nearest training points."""
    reference = projection["embedding"]
    similarity = embedding.astype(np.float32) @ reference.T  # (B, m), both L2-normalised
    k = min(neighbours, reference.shape[0])
    nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    weights = np.clip(np.take_along_axis(similarity, nearest, axis=1), 1e-6, None)
    points = projection["points"][nearest]  # (B, k, 2)
    return (weights[..., None] * points).sum(1) / weights.sum(1, keepdims=True)


def page_router(gateway: Gateway) -> APIRouter:
    """GET / and /static/* (open, like the files of any page), and the page's routes (protected like the API,
    documented with the API's error answers)."""
    router = APIRouter()
    router.mount("/static", StaticFiles(directory=STATIC), name="static")
    protected = api_key_dependencies(gateway.settings)
    error_docs = documented_errors(bool(gateway.settings.api_key))
    version_q = Query(None, ge=1, description="model version (default: the latest)")

    @router.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_POLICY})

    async def served_version(name: str, version: int | None) -> ModelVersion:
        return version_files(gateway.settings.repository_path, await gateway.spec(name, version))

    @router.get("/models/{name}/clusters/{cluster}/samples/{k}.png", dependencies=protected, responses=error_docs,
                response_class=Response, summary="A training image of a cluster (PNG)", operation_id="getClusterSample")
    async def cluster_sample(name: str, cluster: int, k: int, version: int | None = version_q) -> Response:
        samples = read_npz((await served_version(name, version)).directory / CLUSTER_SAMPLES_FILE)
        rows = np.flatnonzero(samples["cluster"] == cluster)
        if not 0 <= k < len(rows):
            raise not_found(f"cluster {cluster} has {len(rows)} sample image(s); no sample {k}")
        pixels = samples["images"][rows[k]]
        image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return Response(buffer.getvalue(), media_type="image/png", headers={"Cache-Control": "max-age=300"})

    @router.put("/models/{name}/clusters/{cluster}", dependencies=protected, responses=error_docs,
                summary="Rename a cluster", operation_id="renameCluster")
    async def rename_cluster(name: str, cluster: int, body: ClusterName, version: int | None = version_q,
                             clusters: str | None = clusters_query("the level the cluster is at (default: the "
                                                                   "model's own clusters); each has its names file")
                             ) -> Response:
        chosen = await served_version(name, version)
        spec = chosen.metadata
        level, count = gateway.level(spec, clusters), spec.num_clusters
        ids = list(range(count)) if level == count else list(gateway.card(spec).levels.members(level))
        if cluster not in ids:
            listed = f"0..{count - 1}" if level == count else ", ".join(map(str, ids))
            raise bad_request(f"cluster {cluster} does not exist: model {name!r} has clusters {listed} at {level}")
        await asyncio.to_thread(write_cluster_name, chosen, cluster, body.name, level)
        return Response(status_code=204)

    @router.get("/models/{name}/tree", dependencies=protected, responses=error_docs, summary="CoHiClust's tree",
                operation_id="getTree")
    async def tree(name: str, version: int | None = version_q) -> Response:
        path = (await served_version(name, version)).directory / TREE_FILE
        if not path.is_file():
            raise not_found(f"model {name!r} has no tree (only CoHiClust models have one)")
        data = files.read_json(path)
        return JSONResponse({k: v for k, v in data.items() if k != "assignments"})

    @router.get("/models/{name}/projection", dependencies=protected, responses=error_docs, summary="The embedding map",
                operation_id="getProjection")
    async def projection(name: str, version: int | None = version_q) -> Response:
        data = read_npz((await served_version(name, version)).directory / PROJECTION_FILE)
        points = [[round(float(x), 4), round(float(y), 4), int(c)]
                  for (x, y), c in zip(data["points"], data["cluster"], strict=True)]
        return JSONResponse({"method": str(data["method"]), "points": points})

    @router.post("/models/{name}/projection/place", dependencies=protected, responses=error_docs,
                 summary="Place images on the map", operation_id="placeImages")
    async def place_images(request: Request, name: str, version: int | None = version_q) -> Response:
        chosen = await served_version(name, version)
        data = read_npz(chosen.directory / PROJECTION_FILE)
        done = await gateway.run(request, "/place", name, chosen.version)
        results: list[dict[str, Any]] = [{"index": i, "error": m} for i, m in done.decode_errors.items()]
        if done.outputs is not None:
            positions = place(done.outputs[EMBEDDING], data)
            results += [{"index": i, "position": [round(float(x), 4), round(float(y), 4)]}
                        for i, (x, y) in zip(done.ok, positions, strict=True)]
        return JSONResponse({"results": sorted(results, key=lambda r: r["index"])})

    @router.get("/bulk/summary", dependencies=protected, responses=error_docs, summary="The bulk job the gateway shows",
                operation_id="getBulkSummary")
    async def bulk_summary() -> Response:
        summary = _bulk_file(gateway.settings.bulk_output, BULK_SUMMARY_FILE)
        data = files.read_json(summary)
        data["galleries"] = [PurePath(g).name for g in data.get("galleries", [])]
        return JSONResponse({k: data[k] for k in BULK_SUMMARY_FIELDS if k in data})

    @router.get("/bulk/galleries/{cluster}.png", dependencies=protected, responses=error_docs, response_class=Response,
                summary="A bulk job's gallery of one cluster", operation_id="getBulkGallery")
    async def bulk_gallery(cluster: int) -> FileResponse:
        gallery = _bulk_file(gateway.settings.bulk_output, f"{BULK_GALLERY_DIR}/{bulk_gallery_file(cluster)}")
        return FileResponse(gallery, media_type="image/png")

    return router


def version_files(root: Path, spec: ModelMetadata) -> ModelVersion:
    """The files of the model version a request is answered by; 404 when they are gone, 503 when its
    metadata.json no longer reads (the repository poll then stops serving it)."""
    try:
        return resolve(root, spec.name, spec.version)
    except RepositoryError as err:
        raise not_found(f"model {spec.name!r}: {err}") from err
    except ValueError as err:
        raise version_unavailable(f"model {spec.name!r} version {spec.version} is unavailable: {err}") from err


def _bulk_file(output: str, relative: str) -> Path:
    if not output:
        raise not_found("this gateway shows no bulk job (start it with --bulk-output DIR)")
    path = Path(output) / relative
    if not path.is_file():
        raise not_found(f"the bulk job has no {relative}")
    return path
