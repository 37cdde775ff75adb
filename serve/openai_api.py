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

The request takes the gateway's one path (Gateway.run): the same limits as /cluster (request bytes,
image count, bytes and pixels per image), the body read in bounded work by serve/jsonbody.py (fields
this API does not use are skipped only while few and scalar), and a client that goes away stops its
decoding and queued images (499).
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request

from contract.metadata import ModelMetadata
from contract.names import EMBEDDING
from serve.auth import api_key_dependencies
from serve.errors import bad_request
from serve.gateway import Gateway
from serve.images import RequestBody, RequestForm
from serve.jsonbody import Shape
from serve.schemas import EmbeddingsRequest, EmbeddingsResponse, OpenAIModelList, documented_errors


def check_dimensions(spec: ModelMetadata, body: RequestBody) -> None:
    """400 for a `dimensions` other than the model's embedding size (before any image is decoded)."""
    dimensions = body.fields.get("dimensions")
    if dimensions is not None and dimensions != spec.embedding_dim:
        raise bad_request(f"dimensions {dimensions}: model {spec.name!r} embeds in {spec.embedding_dim} "
                          "dimensions only")


EMBEDDINGS_FORM = RequestForm(Shape.EMBEDDINGS, multipart=False, check=check_dimensions, all_or_nothing=True)
"""OpenAI's request: JSON whatever the content type, the model named in the body, all or nothing."""


def encode(embedding: np.ndarray, encoding_format: str) -> list[Any]:
    """(B, D) float32 -> per row a list of floats, or base64 of its little-endian float32 bytes."""
    rows = np.ascontiguousarray(embedding, dtype="<f4")
    if encoding_format == "base64":
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
    return rows.tolist()


def openai_router(gateway: Gateway) -> APIRouter:
    """The /v1 routes over `gateway`, behind the same API key as the others."""
    router = APIRouter(prefix="/v1", dependencies=api_key_dependencies(gateway.settings), tags=["OpenAI-compatible"])

    @router.post("/embeddings", response_model=EmbeddingsResponse, operation_id="createEmbeddings",
                 responses=documented_errors(bool(gateway.settings.api_key)),
                 summary="Embed images (OpenAI / infinity embeddings API)",
                 openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                     "schema": EmbeddingsRequest.model_json_schema(),
                     "example": EmbeddingsRequest.model_config["json_schema_extra"]["example"]}}}})
    async def embeddings(request: Request, version: int | None = Query(None, ge=1, description="model version "
                                                                       "(default: the latest)")) -> Any:
        done = await gateway.run(request, "/v1/embeddings", version=version, form=EMBEDDINGS_FORM)
        data = [{"object": "embedding", "index": i, "embedding": e}
                for i, e in enumerate(encode(done.outputs[EMBEDDING], done.fields["encoding_format"]))]
        return {"object": "list", "data": data, "model": done.spec.name,
                "usage": {"prompt_tokens": len(done.uploads), "total_tokens": len(done.uploads)}}

    @router.get("/models", response_model=OpenAIModelList, operation_id="listOpenAIModels",
                summary="Served models (OpenAI's list shape)")
    async def models() -> Any:
        now = int(time.time())
        return {"object": "list", "data": [{"id": name, "object": "model", "created": now,
                                            "owned_by": "deepcluster-serve"} for name in gateway.backend.models()]}

    return router
