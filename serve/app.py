"""The HTTP layer: the app factory, its error handlers and the core routes; it validates, calls the gateway
service (serve/gateway.py) and maps errors to statuses.

    create_app(settings) -> FastAPI
    POST /cluster, POST /embed   images (multipart "files" or JSON base64) -> per-image results;
                                 ?model= and ?version= (default: the latest version)
    POST /v1/embeddings          OpenAI's / infinity's embeddings API (serve/openai_api.py), GET /v1/models
    GET  /models                 served models with metadata, versions and runtime (onnxruntime providers, ...)
    GET  /models/{name}          the model card and current cluster names of one model version
    GET  /healthz, /readyz       alive; models loaded and warmed up (503 otherwise)
    GET  /metrics                Prometheus
    GET  /docs                   Swagger UI, served from the gateway's own files (works offline)
    GET  /, /static, ...         the web page and the few routes only it needs (serve/page.py)

Adding an endpoint: routes live in APIRouter factories that take the typed Gateway, `core_router` here,
`openai_router` (serve/openai_api.py), `page_router` (serve/page.py); add yours to one (or a new module
of the same shape) and include it in `create_app`. A handler stays thin: a route over images calls
`gateway.run(request, endpoint, model, version)` (the one path: limits, safe body parsing, batching,
499 when the client leaves; a `RequestForm` for another body shape), shapes the answer with
serve/answers.py, and refuses with a GatewayError (serve/errors.py), never HTTPException. Give it
`dependencies=api_key_dependencies(settings)` (serve/auth.py), `responses=documented_errors(...)` and a
response model from serve/schemas.py: tests/serve/test_schema.py then fuzzes it from the OpenAPI page.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from contract.card import cluster_names
from serve import __version__
from serve.access import AccessLogMiddleware
from serve.admission import AdmissionMiddleware
from serve.answers import cluster_results, embed_results, model_summary, public_metadata
from serve.auth import api_key_dependencies
from serve.backends import Backend, make_backend
from serve.errors import CLIENT_CLOSED, GatewayError, client_gone, public_text
from serve.gateway import Gateway
from serve.memory import map_large_allocations
from serve.metrics import MetricsMiddleware
from serve.openai_api import openai_router
from serve.page import page_router
from serve.responses import FastJSONResponse, error_response
from serve.schemas import (
    ClusterResponse,
    EmbedResponse,
    Health,
    ModelCardResponse,
    ModelsResponse,
    Precision,
    Readiness,
    clusters_query,
    documented_errors,
    images_request_body,
)
from serve.settings import Settings, load_settings

log = logging.getLogger("serve")


def core_router(gateway: Gateway) -> APIRouter:
    """/cluster, /embed, /models, /models/{name}, /healthz, /readyz and /metrics over `gateway`."""
    settings, key = gateway.settings, bool(gateway.settings.api_key)
    router = APIRouter()
    protected = api_key_dependencies(settings)
    image_errors, model_errors = documented_errors(key), documented_errors(key, (401, 422))
    model_q = Query(None, description="model name; may be left out when only one model is served")
    version_q = Query(None, ge=1, description="model version (default: the latest; a new export is picked up "
                      "without a restart)")
    precision_q = Query(None, description="the model's precision: fp32 (model NAME), int8 (NAME_int8: the encoder "
                        "quantized, see the model's agreement in /models/{name}) or fp16 (NAME_fp16); default: the "
                        "model as named")
    clusters_q = clusters_query("answer at this many clusters, a whole number from 1 to the model's number of "
                                "clusters (the default): its clusters merged along the card's hierarchy, each merged "
                                "cluster's id its smallest member's, its probability the sum of its members'")

    @router.post("/cluster", response_model=ClusterResponse, responses=image_errors, dependencies=protected,
                 openapi_extra=images_request_body(settings.max_images_per_request), summary="Cluster images",
                 operation_id="cluster")
    async def cluster(request: Request, model: str | None = model_q, version: int | None = version_q,
                      top_k: int | None = Query(None, ge=1, le=1000, description="how many clusters to list "
                                                "per image (default: the default_top_k setting)"),
                      precision: Precision | None = precision_q, clusters: str | None = clusters_q) -> Response:
        spec = await gateway.spec(model, version, precision)
        level = gateway.level(spec, clusters)  # before the body is read: a wrong level costs nothing
        done = await gateway.run(request, "/cluster", version=version, chosen=spec)
        if done.spec != spec:  # its version was removed while it waited: answered by the one served now
            level = gateway.level(done.spec, clusters)
        notes = None
        if done.outputs is not None:
            done.outputs, notes = gateway.answer(done.spec, done.outputs, level)
        results = cluster_results(done, min(top_k or settings.default_top_k, level), notes)
        return FastJSONResponse({"model": done.spec.name, "version": done.spec.version, "clusters": level,
                                 "results": results})

    @router.post("/embed", response_model=EmbedResponse, responses=image_errors, dependencies=protected,
                 openapi_extra=images_request_body(settings.max_images_per_request),
                 summary="Embed images (L2-normalised)", operation_id="embed")
    async def embed(request: Request, model: str | None = model_q, version: int | None = version_q,
                    precision: Precision | None = precision_q) -> Response:
        done = await gateway.run(request, "/embed", model, version, precision=precision)
        return FastJSONResponse({"model": done.spec.name, "version": done.spec.version,
                                 "embedding_dim": done.spec.embedding_dim, "results": embed_results(done)})

    @router.get("/models", response_model=ModelsResponse, responses=model_errors, dependencies=protected,
                summary="Served models and their metadata", operation_id="listModels")
    async def models() -> Response:
        items = [{**model_summary(spec), "versions": gateway.backend.versions(name),
                  "ready": gateway.warm.get(name, False), "runtime": gateway.backend.describe(name),
                  "metadata": public_metadata(spec)}
                 for name, spec in gateway.backend.models().items()]
        return FastJSONResponse({"backend": gateway.backend.name, "models": items,
                                 "unavailable": gateway.unavailable()})

    @router.get("/models/{name}", response_model=ModelCardResponse, responses=documented_errors(key, (401, 404, 422)),
                dependencies=protected, summary="A model's card and cluster names", operation_id="getModelCard")
    async def model_card(name: str = Path(description="model name"), version: int | None = version_q,
                         precision: Precision | None = precision_q, clusters: str | None = clusters_q) -> Response:
        spec = await gateway.spec(name, version, precision)
        card, level = gateway.card(spec), gateway.level(spec, clusters)
        names = card.names(level) if card is not None else cluster_names(None, spec.num_clusters)
        return FastJSONResponse({"name": spec.name, "version": spec.version,
                                 "versions": gateway.backend.versions(spec.name), "clusters": level, "names": names,
                                 "precision": spec.precision, "agreement": spec.agreement,
                                 "card": None if card is None or card.card is None else card.card.to_json(),
                                 "metadata": public_metadata(spec)})

    @router.get("/healthz", response_model=Health, summary="Liveness", operation_id="health")
    async def healthz() -> Response:
        return FastJSONResponse({"status": "ok"})

    @router.get("/readyz", response_model=Readiness, summary="Readiness (open, like /healthz: no API key)",
                operation_id="ready", responses={503: {"model": Readiness, "description": "not ready"}})
    async def readyz() -> Response:
        if not gateway.ready:
            await gateway.start()
        healthy = gateway.ready and await gateway.backend.healthy()
        detail = gateway.detail if gateway.ready or gateway.detail else "not started"
        if gateway.ready and not healthy:
            detail = "the inference server does not answer"
        body = {"ready": healthy, "backend": gateway.backend.name, "models": dict(gateway.warm),
                "detail": detail and public_text(detail),
                "unavailable": gateway.unavailable()}
        return FastJSONResponse(body, status_code=200 if healthy else 503)

    @router.get("/metrics", dependencies=protected, responses=model_errors, summary="Prometheus metrics",
                response_class=Response, operation_id="metrics")
    async def metrics() -> Response:
        return Response(gateway.metrics.render(), media_type=gateway.metrics.content_type)

    return router


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


def add_error_handlers(app: FastAPI, gateway: Gateway) -> None:
    """Every failure answers in the one error format (serve/responses.py), counted by kind."""

    def gateway_answer(err: GatewayError) -> Response:
        # A client that left gets one log line, no traceback: the access line (499) when the access log
        # is on, else this one.
        if err.status == CLIENT_CLOSED and not gateway.settings.access_log:
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
    # outermost last: the access log and the metrics see every request, CORS answers preflights (they carry no
    # key), admission refuses before a route reads a body
    app.add_middleware(AdmissionMiddleware, settings=settings, metrics=gateway.metrics)
    if settings.origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["X-Request-ID", "Retry-After"])
    app.add_middleware(MetricsMiddleware, metrics=gateway.metrics)
    app.add_middleware(AccessLogMiddleware, enabled=settings.access_log, json_lines=settings.log_format == "json")
    add_docs(app)
    add_error_handlers(app, gateway)
    for router in (page_router(gateway), core_router(gateway), openai_router(gateway)):
        app.include_router(router)
    return app
