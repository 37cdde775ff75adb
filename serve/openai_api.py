"""OpenAI's (and infinity's) embeddings API over the gateway's models, for tools that already speak it.

    POST /v1/embeddings  {"model": "digits", "input": ["data:image/png;base64,...", ...],
                          "encoding_format": "float" | "base64"}
    -> {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [...] | "<base64>"}],
        "model": "digits", "usage": {"prompt_tokens": 1, "total_tokens": 1}}
    GET  /v1/models      {"object": "list", "data": [{"id": "digits", "object": "model", ...}]}

`input` items are images as data URIs or bare base64 (what infinity accepts for images). base64
encoding is the little-endian float32 bytes of each embedding, which the `openai` Python client asks
for by default and decodes itself. Unlike /embed the answer is all or nothing, as in OpenAI's API: an
image that cannot be decoded fails the request with 400 naming it. `usage` counts images. Fields of
the request this API does not use (`user`, and any other) are ignored, as clients send them; a
`dimensions` other than the model's embedding size is refused. `?version=` pins a model version.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request
from pydantic import ValidationError

from contract.names import EMBEDDING
from serve.errors import GatewayError, bad_request, too_large
from serve.images import Upload, prepare_uploads
from serve.schemas import EmbeddingsRequest, EmbeddingsResponse, OpenAIModelList

try:
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is optional
    import json

    _loads = json.loads


async def _body(request: Request, limit: int) -> bytes:
    """The request body; 413 as soon as it exceeds `limit` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large(f"request body of {length} bytes is larger than {limit} bytes")
    chunks, total = [], 0
    stream: AsyncIterator[bytes] = request.stream()
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise too_large(f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(body: bytes, max_images: int) -> EmbeddingsRequest:
    """JSON body -> the validated request (runs on the worker pool, off the event loop)."""
    try:
        data = _loads(body)
    except ValueError as err:
        raise bad_request(f"body is not valid JSON: {err}") from err
    if isinstance(data, dict) and isinstance(data.get("input"), list) and len(data["input"]) > max_images:
        raise too_large(f"{len(data['input'])} images in one request; at most {max_images}")
    try:
        return EmbeddingsRequest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise GatewayError(422, f"invalid request at {where}: {first['msg']}", "validation") from err


def encode(embedding: np.ndarray, encoding_format: str) -> list[Any]:
    """(B, D) float32 -> per row a list of floats, or base64 of its little-endian float32 bytes."""
    rows = np.ascontiguousarray(embedding, dtype="<f4")
    if encoding_format == "base64":
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
    return rows.tolist()


def openai_router(gateway: Any, dependencies: list[Any], errors: dict[int | str, dict[str, Any]]) -> APIRouter:
    """The /v1 routes over `gateway` (serve.app.Gateway), behind the same API key as the others."""
    router = APIRouter(prefix="/v1", dependencies=dependencies, tags=["OpenAI-compatible"])
    settings = gateway.settings

    @router.post("/embeddings", response_model=EmbeddingsResponse, responses=errors, operation_id="createEmbeddings",
                 summary="Embed images (OpenAI / infinity embeddings API)",
                 openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                     "schema": EmbeddingsRequest.model_json_schema(),
                     "example": EmbeddingsRequest.model_config["json_schema_extra"]["example"]}}}})
    async def embeddings(request: Request, version: int | None = Query(None, ge=1, description="model version "
                                                                       "(default: the latest)")) -> Any:
        body = await _body(request, settings.max_request_bytes)
        req = await asyncio.get_running_loop().run_in_executor(gateway.pool, parse_request, body,
                                                               settings.max_images_per_request)
        spec = await gateway.spec(req.model, version)
        if req.dimensions is not None and req.dimensions != spec.embedding_dim:
            raise bad_request(f"dimensions {req.dimensions}: model {spec.name!r} embeds in {spec.embedding_dim} "
                              "dimensions only")
        inputs = [req.input] if isinstance(req.input, str) else req.input
        if not inputs:
            raise bad_request("input is empty: give one or more images")
        uploads = [Upload(i, None, text.encode("ascii", "replace"), base64=True) for i, text in enumerate(inputs)]
        for up in uploads:
            if len(up.data) * 3 // 4 > settings.max_image_bytes:
                raise too_large(f"input[{up.index}]: about {len(up.data) * 3 // 4} bytes, more than the limit of "
                                f"{settings.max_image_bytes}")
        images, ok, failed = await prepare_uploads(uploads, spec.input.size, spec.input.channels, settings,
                                                   gateway.pool)
        if failed:
            gateway.metrics.errors.labels("image_decode").inc(len(failed))
            first = min(failed)
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise bad_request(f"input {failed[first]}{more}")
        outputs = await gateway.infer(spec, images)
        gateway.metrics.images.labels("/v1/embeddings", "ok").inc(len(ok))
        data = [{"object": "embedding", "index": i, "embedding": e}
                for i, e in enumerate(encode(outputs[EMBEDDING], req.encoding_format))]
        return {"object": "list", "data": data, "model": spec.name,
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}}

    @router.get("/models", response_model=OpenAIModelList, operation_id="listOpenAIModels",
                summary="Served models (OpenAI's list shape)")
    async def models() -> Any:
        now = int(time.time())
        return {"object": "list", "data": [{"id": name, "object": "model", "created": now,
                                            "owned_by": "deepcluster-serve"} for name in gateway.backend.models()]}

    return router
