"""The HTTP layer: validates requests, hands images to the batching queues, maps errors to statuses.

    create_app(settings) -> FastAPI
    POST /cluster, POST /embed   images (multipart "files" or JSON base64) -> per-image results;
                                 ?model= and ?version= (default: the latest version)
    POST /v1/embeddings          OpenAI's / infinity's embeddings API (serve/openai_api.py), GET /v1/models
    GET  /models                 served models with metadata, versions and runtime (onnxruntime providers, ...)
    GET  /models/{name}          the model card and current cluster names of one model version
    GET  /healthz, /readyz       alive; models loaded and warmed up (503 otherwise)
    GET  /metrics                Prometheus
    GET  /docs                   Swagger UI, served from the gateway's own files (works offline)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import PurePath
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from contract.card import cluster_names
from contract.metadata import ModelMetadata
from contract.names import CLUSTER, EMBEDDING, PROBABILITIES
from serve import __version__
from serve.access import AccessLogMiddleware
from serve.backends import Backend, make_backend
from serve.batching import Batcher
from serve.cards import LOW_CONFIDENCE, NAME, OOD, OOD_SCORE, VersionCard
from serve.errors import (
    CLIENT_CLOSED,
    GatewayError,
    backend_unavailable,
    bad_request,
    client_gone,
    public_text,
    unauthorized,
)
from serve.images import Upload, prepare_uploads, read_uploads
from serve.memory import map_large_allocations
from serve.metrics import Metrics
from serve.openai_api import openai_router
from serve.page import mount_page
from serve.schemas import (
    ClusterResponse,
    EmbedResponse,
    ErrorResponse,
    Health,
    ModelCardResponse,
    ModelsResponse,
    Readiness,
    images_request_body,
)
from serve.settings import Settings, load_settings

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is optional
    orjson = None

log = logging.getLogger("serve")
WARMUP_TIMEOUT_S = 60.0


class FastJSONResponse(JSONResponse):
    """JSON via orjson when installed (numpy arrays serialised natively), else the standard library."""

    def render(self, content: Any) -> bytes:
        if orjson is not None:
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
        return json.dumps(content, default=_to_list, separators=(",", ":")).encode()


def _to_list(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class Gateway:
    """What the endpoints share: settings, backend, one batcher per model, the decode pool, metrics."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend
        self.metrics = Metrics()
        self.batchers: dict[tuple[str, int | None], Batcher] = {}  # per (model, version)
        self.cards: dict[tuple[str, int], VersionCard] = {}
        self.warm: dict[str, bool] = {}
        self.detail: str | None = "not started"
        self.pool = ThreadPoolExecutor(settings.threads, thread_name_prefix="decode")
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task | None = None
        self._summarised = False

    @property
    def ready(self) -> bool:
        return bool(self.warm) and all(self.warm.values())

    async def start(self) -> None:
        """Start the backend, make the batchers and warm every model up; retried by /readyz until it works.

        An unreachable inference server leaves the gateway running but not ready; anything else
        (no repository, a broken model) is raised.
        """
        async with self._lock:
            if self.ready:
                return
            try:
                await self.backend.start()
            except GatewayError as err:
                self.detail = err.message
                log.warning("backend not available yet: %s", err.message)
                return
            problems = []
            for name, spec in self.backend.models().items():
                if self.warm.get(name):
                    continue
                try:
                    zeros = np.zeros((1, spec.input.channels, spec.input.size, spec.input.size), np.uint8)
                    await asyncio.wait_for(self.backend.infer(name, zeros), WARMUP_TIMEOUT_S)
                    self.warm[name] = True
                except (GatewayError, TimeoutError) as err:
                    self.warm[name] = False
                    problems.append(f"{name}: warm-up failed: {getattr(err, 'message', None) or 'timeout'}")
            self.detail = "; ".join(problems) or None
            if self.ready and not self._summarised:
                self._summarised = True
                log.info("%s", self.summary())

    def summary(self, headline: str = "gateway ready") -> str:
        """The start-up line: backend, and per model its versions and the providers really used."""
        parts = []
        for name, spec in sorted(self.backend.models().items()):
            runtime = self.backend.describe(name)
            providers = runtime.get("providers") or runtime.get("url", "")
            parts.append(f"{name} (version {spec.version}, versions {self.backend.versions(name) or '-'}, "
                         f"{spec.method} on {spec.dataset}, {providers})")
        return f"{headline}: backend {self.backend.name}, {len(parts)} model(s): " + "; ".join(parts)

    def watch(self) -> None:
        """Start polling the backend for new and removed versions every settings.repository_poll_s seconds."""
        if self.settings.repository_poll_s > 0 and self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="repository-watch")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_s)
            try:
                if await self.backend.refresh():
                    for name, spec in self.backend.models().items():
                        self.warm[name] = True  # a backend switches only to versions that loaded (and warmed up)
                        self.metrics.served_version.labels(name).set(spec.version or 0)
                    await self._forget_removed_versions()
                    log.info("%s", self.summary("models changed"))
            except Exception:  # noqa: BLE001 - the poller must survive a half-written repository
                log.exception("looking for new model versions failed")

    async def _forget_removed_versions(self) -> None:
        """Batchers and cards of versions that are no longer servable (removed: rollback)."""
        for key in list(self.batchers):
            name, version = key
            if version is not None and version not in self.backend.versions(name):
                await self.batchers.pop(key).close()
        for name, version in list(self.cards):
            if version not in self.backend.versions(name):
                del self.cards[(name, version)]

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for batcher in self.batchers.values():
            await batcher.close()
        await self.backend.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def spec(self, name: str | None, version: int | None = None) -> ModelMetadata:
        """The metadata of the model version a request asks for (None: the only model, its latest version)."""
        models = self.backend.models()
        if not models:
            await self.start()
            models = self.backend.models()
            if not models:
                raise backend_unavailable(f"no model loaded yet: {self.detail}")
        if name is None:
            if len(models) != 1:
                raise bad_request(f"{len(models)} models are served; choose one with ?model= from {sorted(models)}")
            name = next(iter(models))
        return await self.backend.select(name, version)

    def batcher(self, spec: ModelMetadata) -> Batcher:
        key = (spec.name, spec.version)
        if key not in self.batchers:
            s = self.settings
            self.batchers[key] = Batcher(
                spec.name,  # one label per model in /metrics (a version switch is short-lived)
                lambda images: self.backend.infer(spec.name, images, spec.version), self.metrics,
                max_batch_size=s.max_batch_size, max_wait_ms=s.max_wait_ms, queue_size=s.queue_size,
                concurrency=s.concurrency, retry_after_s=s.retry_after_s)
        return self.batchers[key]

    def card(self, spec: ModelMetadata) -> VersionCard | None:
        """The card and names of a model version, when the repository holds them (None otherwise)."""
        key = (spec.name, spec.version)
        if key not in self.cards:
            card = VersionCard.find(self.settings.repository_path, spec)
            if card is None:
                return None
            self.cards[key] = card
        return self.cards[key]

    async def run(self, request: Request, endpoint: str, model: str | None, version: int | None = None
                  ) -> tuple[ModelMetadata, list[Upload], list[int], dict[int, str], dict[str, np.ndarray] | None]:
        """Read, prepare and infer the images of one request; stops (499) as soon as its client goes away."""
        spec = await self.spec(model, version)
        uploads = await read_uploads(request, self.settings, self.pool)
        work = asyncio.ensure_future(self._prepare_and_infer(spec, endpoint, uploads))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():  # the client left (or the server is stopping): drop its decoding and queued images
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        if work.cancelled():
            raise client_gone(f"client disconnected before the answer to its {len(uploads)} image(s) on {endpoint}")
        return (spec, uploads, *work.result())

    async def _prepare_and_infer(self, spec: ModelMetadata, endpoint: str, uploads: list[Upload]
                                 ) -> tuple[list[int], dict[int, str], dict[str, np.ndarray] | None]:
        images, ok, errors = await prepare_uploads(uploads, spec.input.size, spec.input.channels, self.settings,
                                                   self.pool)
        if errors:
            self.metrics.errors.labels("image_decode").inc(len(errors))
            self.metrics.images.labels(endpoint, "error").inc(len(errors))
        outputs = None
        if images is not None:
            outputs = await self.infer(spec, images)
            self.metrics.images.labels(endpoint, "ok").inc(len(ok))
        return ok, errors, outputs


    async def infer(self, spec: ModelMetadata, images: np.ndarray) -> dict[str, np.ndarray]:
        """Prepared uint8 (B, C, S, S) -> the head outputs of that model version, through its batching queue."""
        return await self.batcher(spec).submit(images)

    def annotate(self, spec: ModelMetadata, outputs: dict[str, np.ndarray]) -> dict[str, Any] | None:
        """Names and flags of B cluster answers (serve/cards.py), counted in /metrics."""
        card = self.card(spec)
        if card is None:
            return None
        notes = card.annotate(outputs)
        model, version = spec.name, str(spec.version)
        for cluster, count in zip(*np.unique(outputs[CLUSTER], return_counts=True), strict=True):
            self.metrics.assignments.labels(model, version, str(int(cluster))).inc(int(count))
        if OOD in notes:
            self.metrics.low_confidence.labels(model, version).inc(int(notes[LOW_CONFIDENCE].sum()))
            self.metrics.ood.labels(model, version).inc(int(notes[OOD].sum()))
        return notes


async def _disconnected(request: Request) -> None:
    """Returns when the client has closed its connection (the body is read by then: nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


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


def cluster_results(uploads: list[Upload], ok: list[int], errors: dict[int, str],
                    outputs: dict[str, np.ndarray] | None, top_k: int,
                    notes: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per image: cluster, probability, top_k [, path], and with `notes` (Gateway.annotate) name and flags."""
    results: list[dict[str, Any]] = [{}] * len(uploads)
    for i, message in errors.items():
        results[i] = {"index": i, "filename": uploads[i].filename, "error": message}
    if outputs is None:
        return results
    probs = outputs[PROBABILITIES]
    cluster = outputs[CLUSTER].astype(np.int64, copy=False)
    k = min(top_k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    top_ids, top_p = order.tolist(), np.take_along_axis(probs, order, axis=1).tolist()
    chosen = probs[np.arange(len(cluster)), cluster].tolist()
    paths = outputs["path"].tolist() if "path" in outputs else None
    for j, (i, c) in enumerate(zip(ok, cluster.tolist(), strict=True)):
        item = {"index": i, "filename": uploads[i].filename, "cluster": c, "probability": chosen[j],
                "top_k": [{"cluster": a, "probability": b} for a, b in zip(top_ids[j], top_p[j], strict=True)]}
        if paths is not None:
            item["path"] = paths[j]
        if notes is not None:
            item[NAME] = notes[NAME][j]
            if OOD in notes:
                item.update({LOW_CONFIDENCE: bool(notes[LOW_CONFIDENCE][j]),
                             OOD_SCORE: round(float(notes[OOD_SCORE][j]), 4), OOD: bool(notes[OOD][j])})
        results[i] = item
    return results


def embed_results(uploads: list[Upload], ok: list[int], errors: dict[int, str],
                  outputs: dict[str, np.ndarray] | None) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = [{}] * len(uploads)
    for i, message in errors.items():
        results[i] = {"index": i, "filename": uploads[i].filename, "error": message}
    if outputs is not None:
        emb = np.ascontiguousarray(outputs[EMBEDDING], dtype=np.float32)
        rows = emb if orjson is not None else emb.tolist()  # orjson writes numpy rows without Python floats
        for j, i in enumerate(ok):
            results[i] = {"index": i, "filename": uploads[i].filename, "embedding": rows[j]}
    return results


def error_response(err: GatewayError, metrics: Metrics | None) -> Response:
    if metrics is not None:
        metrics.errors.labels(err.kind).inc()
    body = {"error": {"status": err.status, "kind": err.kind, "message": public_text(err.message)}}
    return FastJSONResponse(body, status_code=err.status, headers=err.headers())


class MetricsMiddleware:
    """Pure ASGI: counts requests by endpoint (route template) and status, and times them."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        began = time.perf_counter()

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - began)


def add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the swagger-ui-bundle package's files, served by the gateway (no CDN)."""
    import swagger_ui_bundle

    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - API",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon-32x32.png")


_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="the gateway's API key, if one is set")
_bearer = HTTPBearer(auto_error=False, description="the gateway's API key as a bearer token, if one is set")


async def require_api_key(request: Request, key: Annotated[str | None, Security(_api_key)],
                          bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> None:
    expected = request.app.state.gateway.settings.api_key
    if not expected:
        return
    given = key or (bearer.credentials if bearer is not None else "")
    if not given or not secrets.compare_digest(given.encode(), expected.encode()):
        raise unauthorized()


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in {
        400: "malformed body, no images, or no model chosen while several are served",
        401: "API key missing or wrong",
        404: "unknown model",
        413: "body, image (bytes or pixels) or image count over the limit",
        415: "content type is neither multipart/form-data nor application/json",
        422: "parameters or JSON body invalid",
        429: "queue full (see Retry-After)",
        500: "inference failed",
        502: "the inference server answered with an error",
        503: "the inference server is unreachable, or models are not loaded yet",
    }.items()}
_AUTH_ERRORS = {k: _ERRORS[k] for k in (401, 422)}


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> FastAPI:
    """The gateway app; `backend` overrides the one settings.backend names (tests use a fake one)."""
    settings = settings or load_settings()
    gateway = Gateway(settings, backend or make_backend(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        map_large_allocations()
        await gateway.start()
        gateway.watch()
        try:
            yield
        finally:
            await gateway.close()

    app = FastAPI(title="deepcluster-serve gateway", version=__version__, lifespan=lifespan,
                  default_response_class=FastJSONResponse, docs_url=None, redoc_url=None,
                  description="Deep image clustering: cluster ids, names, probabilities, confidence and "
                              "novelty flags, and embeddings of images; OpenAI-compatible /v1/embeddings.")
    app.state.gateway = gateway
    app.add_middleware(MetricsMiddleware, metrics=gateway.metrics)
    if settings.origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["X-Request-ID", "Retry-After"])
    app.add_middleware(AccessLogMiddleware, enabled=settings.access_log, json_lines=settings.log_format == "json")
    add_docs(app)

    def gateway_answer(err: GatewayError) -> Response:
        # A client that left gets one log line, no traceback: the access line (499) when the access log
        # is on, else this one.
        if err.status == CLIENT_CLOSED and not settings.access_log:
            log.info("%s", err.message)
        return error_response(err, gateway.metrics)

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, err: GatewayError) -> Response:
        return gateway_answer(err)

    @app.exception_handler(ClientDisconnect)
    async def _client_disconnect(request: Request, err: ClientDisconnect) -> Response:
        return gateway_answer(client_gone(f"client disconnected while sending its request to {request.url.path}"))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> Response:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return error_response(GatewayError(422, f"invalid {where}: {first['msg']}", "validation"), gateway.metrics)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http")
        return error_response(GatewayError(err.status_code, str(err.detail), kind), gateway.metrics)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(GatewayError(500, f"internal error: {type(err).__name__}", "internal"),
                              gateway.metrics)

    # security schemes appear in the OpenAPI page (and are checked) only when a key is configured
    protected = [Depends(require_api_key)] if settings.api_key else []
    auth_errors = _AUTH_ERRORS if settings.api_key else {422: _ERRORS[422]}
    errors = _ERRORS if settings.api_key else {k: v for k, v in _ERRORS.items() if k != 401}
    mount_page(app, gateway, protected, errors)
    model_q = Query(None, description="model name; may be left out when only one model is served")
    version_q = Query(None, ge=1, description="model version (default: the latest; a new export is picked up "
                      "without a restart)")

    @app.post("/cluster", response_model=ClusterResponse, responses=errors, dependencies=protected,
              openapi_extra=images_request_body(settings.max_images_per_request), summary="Cluster images",
              operation_id="cluster")
    async def cluster(request: Request, model: str | None = model_q, version: int | None = version_q,
                      top_k: int | None = Query(None, ge=1, le=1000, description="how many clusters to list "
                                                "per image (default: the default_top_k setting)")) -> Response:
        spec, uploads, ok, errors, outputs = await gateway.run(request, "/cluster", model, version)
        notes = gateway.annotate(spec, outputs) if outputs is not None else None
        results = cluster_results(uploads, ok, errors, outputs, top_k or settings.default_top_k, notes)
        return FastJSONResponse({"model": spec.name, "version": spec.version, "results": results})

    @app.post("/embed", response_model=EmbedResponse, responses=errors, dependencies=protected,
              openapi_extra=images_request_body(settings.max_images_per_request),
              summary="Embed images (L2-normalised)", operation_id="embed")
    async def embed(request: Request, model: str | None = model_q, version: int | None = version_q) -> Response:
        spec, uploads, ok, errors, outputs = await gateway.run(request, "/embed", model, version)
        return FastJSONResponse({"model": spec.name, "version": spec.version, "embedding_dim": spec.embedding_dim,
                                 "results": embed_results(uploads, ok, errors, outputs)})

    @app.get("/models", response_model=ModelsResponse, responses=auth_errors, dependencies=protected,
             summary="Served models and their metadata", operation_id="listModels")
    async def models() -> Response:
        items = [{**model_summary(spec), "versions": gateway.backend.versions(name),
                  "ready": gateway.warm.get(name, False), "runtime": gateway.backend.describe(name),
                  "metadata": public_metadata(spec)}
                 for name, spec in gateway.backend.models().items()]
        return FastJSONResponse({"backend": gateway.backend.name, "models": items})

    @app.get("/models/{name}", response_model=ModelCardResponse, responses={**auth_errors, 404: _ERRORS[404]},
             dependencies=protected, summary="A model's card and cluster names", operation_id="getModelCard")
    async def model_card(name: str = Path(description="model name"), version: int | None = version_q) -> Response:
        spec = await gateway.spec(name, version)
        card = gateway.card(spec)
        names = card.names() if card is not None else cluster_names(None, spec.outputs[PROBABILITIES].shape[1])
        return FastJSONResponse({"name": spec.name, "version": spec.version,
                                 "versions": gateway.backend.versions(spec.name), "names": names,
                                 "card": None if card is None or card.card is None else card.card.to_json(),
                                 "metadata": public_metadata(spec)})

    app.include_router(openai_router(gateway, protected, errors))

    @app.get("/healthz", response_model=Health, summary="Liveness", operation_id="health")
    async def healthz() -> Response:
        return FastJSONResponse({"status": "ok"})

    @app.get("/readyz", response_model=Readiness, summary="Readiness (open, like /healthz: no API key)",
             operation_id="ready", responses={503: {"model": Readiness, "description": "not ready"}})
    async def readyz() -> Response:
        if not gateway.ready:
            await gateway.start()
        healthy = gateway.ready and await gateway.backend.healthy()
        detail = gateway.detail if gateway.ready or gateway.detail else "not started"
        if gateway.ready and not healthy:
            detail = "the inference server does not answer"
        body = {"ready": healthy, "backend": gateway.backend.name, "models": dict(gateway.warm),
                "detail": detail and public_text(detail)}
        return FastJSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/metrics", dependencies=protected, responses=auth_errors, summary="Prometheus metrics",
             response_class=Response, operation_id="metrics")
    async def metrics() -> Response:
        return Response(gateway.metrics.render(), media_type=gateway.metrics.content_type)

    return app
