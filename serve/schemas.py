"""Request and response bodies of the gateway (pydantic models, used for validation and the OpenAPI page)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ImageItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: str = Field(description="the image file as base64 (a data: URL prefix is accepted)")
    filename: str | None = Field(default=None, description="a name echoed back in the result")


class ImagesRequest(BaseModel):
    """JSON alternative to a multipart upload: each image is base64 text, or {"data": base64, "filename": ...}."""

    model_config = ConfigDict(extra="forbid")
    images: list[str | ImageItem] = Field(min_length=1, description="the images, in order")


class TopK(BaseModel):
    cluster: int
    probability: float


class ClusterResult(BaseModel):
    """One image: its cluster, or `error` (and nothing else) when it could not be decoded.

    A model whose method declares extra outputs (its metadata's `extra_outputs` in /models: name, dtype,
    shape per image) answers each of them as one more field under its own name: CoHiClust's `path`, the
    tree node ids (heap order) of level 1 to L. They are open additional properties rather than an
    `extras` object so that they stay where clients of CoHiClust's `path` read it; their names never take
    one of the fields below (contract.names.ANSWER_FIELDS)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"example": {
        "index": 0, "filename": "a.png", "cluster": 4, "name": "7", "probability": 0.93, "low_confidence": False,
        "ood_score": 0.41, "ood": False, "top_k": [{"cluster": 4, "probability": 0.93},
                                                   {"cluster": 1, "probability": 0.04}]}})
    index: int = Field(description="position of the image in the request")
    filename: str | None = Field(default=None, description="multipart filename or JSON filenames entry")
    cluster: int | None = None
    name: str | None = Field(default=None, description="the cluster's name: the model version's cluster_names.json "
                             "(editable; re-read when it changes), by default the class the cluster maps to")
    probability: float | None = Field(default=None, description="probability of the assigned cluster")
    low_confidence: bool | None = Field(default=None, description="probability below the training data's 5th "
                                        "percentile (absent when the model has no card statistics)")
    ood_score: float | None = Field(default=None, description="share of training images closer to their nearest "
                                    "OOD prototype (cosine distance) than this one is to its, 0..1")
    ood: bool | None = Field(default=None, description="out of distribution: farther from every OOD prototype "
                             "than 99% of the training images from theirs")
    top_k: list[TopK] | None = Field(default=None, description="most probable clusters, best first")
    error: str | None = Field(default=None, description="why this image was not clustered")


class ClusterResponse(BaseModel):
    model: str
    version: int | None = Field(default=None, description="the model version that answered")
    clusters: int | None = Field(default=None, description="the number of clusters answered at (?clusters=, by "
                                 "default the model's own)")
    results: list[ClusterResult]


class EmbedResult(BaseModel):
    index: int
    filename: str | None = None
    embedding: list[float] | None = Field(default=None, description="L2-normalised embedding")
    error: str | None = None


class EmbedResponse(BaseModel):
    model: str
    version: int | None = None
    embedding_dim: int | None
    results: list[EmbedResult]


Precision = Literal["fp32", "int8", "fp16"]
"""contract.names.PRECISIONS, as a query parameter (?precision=)."""
AGREEMENT_HELP = ("reduced precision: its agreement with the fp32 graph on training images not used for calibration "
                  "(cluster_agreement, embedding_cosine_mean and _min, probability_max_abs_diff, thresholds); "
                  "null for fp32")


class ModelCardResponse(BaseModel):
    name: str
    version: int | None = Field(description="the version described (the latest unless ?version=)")
    versions: list[int] = Field(description="every servable version")
    clusters: int | None = Field(default=None, description="the number of clusters `names` are at (?clusters=)")
    names: list[str] = Field(description="current cluster names, by cluster id: at a level of fewer clusters, "
                             "the name of the merged cluster each one belongs to")
    precision: Precision = Field(description="what the model computes in (its name says it too: NAME, NAME_int8)")
    agreement: dict[str, Any] | None = Field(description=AGREEMENT_HELP)
    card: dict[str, Any] | None = Field(description="the model card (card.json): provenance, training metrics, "
                                        "clusters with sizes, centroids, class mapping and purity, calibration; "
                                        "null when the model has none")
    metadata: dict[str, Any]


MAX_EMBEDDINGS_FIELDS = 16
"""The most fields an embeddings request may have. Those this API does not use (`user`, any other) are
skipped when each holds a number, a boolean, null or a string of at most MAX_IGNORED_CHARS characters."""
MAX_IGNORED_CHARS = 4096


class EmbeddingsRequest(BaseModel):
    """OpenAI's / infinity's embeddings request, with images (data URIs or bare base64) as the input."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={
        "example": {"model": "digits", "input": ["data:image/png;base64,iVBORw0KGgo..."], "encoding_format": "float"},
        "maxProperties": MAX_EMBEDDINGS_FIELDS,
        "additionalProperties": {"type": ["string", "number", "boolean", "null"], "maxLength": MAX_IGNORED_CHARS}})
    model: str = Field(description="a served model's name")
    input: str | Annotated[list[str], Field(min_length=1)] = Field(
        description="one image or a list: data:image/...;base64,... URIs or base64")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="float: lists of numbers; base64: little-endian float32 bytes, base64")
    dimensions: int | None = Field(default=None, description="must be the model's embedding size if given")
    user: str | None = None


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int = Field(description="images embedded (images have no tokens)")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingsUsage


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class ModelInfo(BaseModel):
    name: str
    method: str | None = None
    dataset: str | None = None
    num_clusters: int
    embedding_dim: int | None = None
    class_names: list[str] | None = None
    input: dict[str, Any]
    outputs: list[str]
    precision: Precision = "fp32"
    agreement: dict[str, Any] | None = Field(default=None, description=AGREEMENT_HELP)
    ready: bool
    runtime: dict[str, Any] = Field(description="backend details: onnxruntime providers, Triton URL, ...")
    metadata: dict[str, Any] = Field(description="the model's metadata.json as exported")


class UnavailableVersion(BaseModel):
    """A version on disk that is not served."""

    model: str
    version: str = Field(description="the version's directory name (a number, or a name that is none)")
    reason: str = Field(description="why it cannot be served: it does not load, or its files are missing or corrupt")


class ModelsResponse(BaseModel):
    backend: str
    models: list[ModelInfo] = Field(description="served models, each at its newest version that loads")
    unavailable: list[UnavailableVersion] = Field(default_factory=list, description="versions not served, and why")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    backend: str
    models: dict[str, bool] = Field(description="model name -> warm-up inference succeeded")
    detail: str | None = None
    unavailable: list[UnavailableVersion] = Field(
        default_factory=list, description="versions not served, and why (ready while every model that has a version "
        "that loads serves it)")


class ErrorBody(BaseModel):
    status: int
    kind: str = Field(description="bad_request, unauthorized, not_found, too_large, unsupported_media_type, "
                                  "validation, queue_full, backend_unavailable, version_unavailable, backend_error, "
                                  "...")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


ERROR_STATUSES = {
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
}
"""The error answers a route may give, as the OpenAPI page lists them."""


def documented_errors(api_key: bool, statuses: tuple[int, ...] = tuple(ERROR_STATUSES)
                      ) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route that may answer `statuses` (401 only when an API key is set)."""
    return {status: {"model": ErrorResponse, "description": ERROR_STATUSES[status]}
            for status in statuses if api_key or status != 401}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace pydantic's local "$defs" references by the definitions themselves (self-contained schema)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def images_request_body(max_images: int) -> dict[str, Any]:
    """OpenAPI requestBody of /cluster and /embed: multipart files or JSON base64, at most `max_images`."""
    files = {"type": "object", "required": ["files"], "properties": {"files": {
        "type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1, "maxItems": max_images,
        "description": "one or more image files (PNG, JPEG, WebP, GIF, BMP, TIFF, ...)"}}}
    json_schema = _inline(ImagesRequest.model_json_schema())
    json_schema["properties"]["images"]["maxItems"] = max_images
    example = {"images": [{"data": "data:image/png;base64,iVBORw0KGgo...", "filename": "a.png"}]}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": files},
        "application/json": {"schema": json_schema, "example": example},
    }}}


def _whole_number(schema: dict[str, Any]) -> None:
    schema.pop("anyOf", None)
    schema.update(type="integer", minimum=1)


def clusters_query(description: str) -> Any:
    """The `?clusters=` parameter: documented as a whole number >= 1 but read as text, so that every wrong value
    (0, more than the model's clusters, "ten") gets the gateway's own 422 naming the model's range, not
    FastAPI's generic one (the schema cannot know each model's number of clusters)."""
    from fastapi import Query

    return Query(None, description=description, json_schema_extra=_whole_number)
