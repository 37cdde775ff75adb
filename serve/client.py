"""Python client of the gateway, sync and async (httpx, numpy, PIL; no torch).

    from serve.client import Client
    with Client("http://127.0.0.1:8080", api_key=None) as client:
        results = client.cluster(["a.png", Path("b.jpg"), png_bytes, pil_image, uint8_array], model="digits")
        client.cluster(images, model="digits", precision="int8")   # model digits_int8, if exported
        results[0].cluster, results[0].name, results[0].probability, results[0].ood, results[0].error
        results[0].extras                        # the model's extra outputs by name (CoHiClust: .path too)
        client.cluster(images, clusters=4)       # answers at 4 clusters: the model's merged (its card's levels)
        embedded = client.embed(images)          # .embeddings (N, D) float32, NaN rows where .errors says why
        client.card("digits")                    # GET /models/digits: card, names, versions, precision, agreement
                                                 # (clusters=k: names at k clusters)

    async with AsyncClient(url) as client:       # the same methods, awaited; batches go out concurrently
        results = await client.cluster(images)

Images may be paths, bytes (an encoded file), PIL images or numpy arrays (H, W), (H, W, C) or (C, H, W)
uint8; they are sent as files (arrays and PIL images as PNG), `batch_size` per request. A 429 or 503
answer is retried after its Retry-After (else an exponential backoff), as are connection errors, up to
`retries` times; other errors raise GatewayClientError with the gateway's status, kind and message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

ImageLike = str | os.PathLike | bytes | bytearray | Image.Image | np.ndarray
RETRY_STATUSES = (429, 503)
DEFAULT_URL = "http://127.0.0.1:8080"


class GatewayClientError(RuntimeError):
    """The gateway answered with an error (after any retries)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(f"{status} {kind}: {message}")
        self.status, self.kind, self.message = status, kind, message


@dataclass(frozen=True)
class TopK:
    cluster: int
    probability: float


@dataclass(frozen=True)
class ClusterResult:
    """One image's answer; `error` is set (and the rest None) when the gateway could not decode it.

    `extras`: the model's extra outputs (every field of the answer this class does not name), lists as
    tuples; each is also an attribute (CoHiClust: result.path)."""

    index: int
    filename: str | None
    cluster: int | None = None
    name: str | None = None
    probability: float | None = None
    low_confidence: bool | None = None
    ood_score: float | None = None
    ood: bool | None = None
    top_k: tuple[TopK, ...] = ()
    error: str | None = None
    model: str | None = None
    version: int | None = None
    extras: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def __getattr__(self, name: str) -> Any:  # called only for names that are not fields
        extras = self.__dict__.get("extras", {})
        if name in extras:
            return extras[name]
        raise AttributeError(f"{type(self).__name__} has no field or extra output {name!r}")


@dataclass
class EmbedResult:
    """embeddings (N, D) float32 L2-normalised, NaN rows for the images in `errors` (index -> message)."""

    embeddings: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    model: str | None = None
    version: int | None = None


def as_file(image: ImageLike, index: int) -> tuple[str, bytes]:
    """One image -> (filename, encoded bytes) for a multipart upload."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return path.name, path.read_bytes()
    if isinstance(image, (bytes, bytearray)):
        return f"image-{index}", bytes(image)
    if isinstance(image, np.ndarray):
        image = array_to_pil(image)
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return f"image-{index}.png", buffer.getvalue()
    raise TypeError(f"image {index}: a path, bytes, PIL image or numpy array, not {type(image).__name__}")


def array_to_pil(array: np.ndarray) -> Image.Image:
    """uint8 (H, W), (H, W, 1|3|4) or (1|3, H, W) -> PIL image."""
    if array.dtype != np.uint8:
        raise TypeError(f"numpy images must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[2] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3):
        raise TypeError(f"numpy images must be (H, W), (H, W, C) or (C, H, W), got shape {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array))


def batches(images: Sequence[ImageLike], size: int) -> Iterable[tuple[int, Sequence[ImageLike]]]:
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    for start in range(0, len(images), size):
        yield start, images[start:start + size]


def retry_delay(response: httpx.Response | None, attempt: int, max_wait: float) -> float:
    """Seconds to wait before retry `attempt` (0-based): the answer's Retry-After, else 0.25 * 2^attempt."""
    header = response.headers.get("retry-after") if response is not None else None
    if header is not None and header.strip().replace(".", "", 1).isdigit():
        return min(float(header), max_wait)
    return min(0.25 * 2 ** attempt, max_wait)


def raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        raise GatewayClientError(response.status_code, error.get("kind", "error"), error.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise GatewayClientError(response.status_code, "http", response.text[:500]) from None


_ANSWER_FIELDS = {f.name for f in dataclasses.fields(ClusterResult)} - {"model", "version", "extras"}


def _tuples(value: Any) -> Any:
    """JSON lists (nested) as tuples, as the frozen result holds them."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def cluster_results(body: dict[str, Any], offset: int) -> list[ClusterResult]:
    out = []
    for item in body["results"]:
        fields = {k: item.get(k) for k in _ANSWER_FIELDS - {"index", "top_k"}}
        extras = {k: _tuples(v) for k, v in item.items() if k not in _ANSWER_FIELDS}
        out.append(ClusterResult(index=offset + item["index"], **fields,
                                 top_k=tuple(TopK(t["cluster"], t["probability"]) for t in item.get("top_k") or ()),
                                 model=body.get("model"), version=body.get("version"), extras=extras))
    return out


def embed_result(parts: list[tuple[int, dict[str, Any]]], count: int) -> EmbedResult:
    dim = next((p["embedding_dim"] for _, p in parts if p.get("embedding_dim")), 0)
    embeddings = np.full((count, dim), np.nan, np.float32)
    errors: dict[int, str] = {}
    for offset, body in parts:
        for item in body["results"]:
            if item.get("error") is not None:
                errors[offset + item["index"]] = item["error"]
            else:
                embeddings[offset + item["index"]] = item["embedding"]
    last = parts[-1][1] if parts else {}
    return EmbedResult(embeddings, errors, last.get("model"), last.get("version"))


def _params(model: str | None, version: int | None, **extra: Any) -> dict[str, Any]:
    return {k: v for k, v in {"model": model, "version": version, **extra}.items() if v is not None}


def _headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


class Client:
    """Synchronous client; `http` replaces the httpx.Client it makes (e.g. FastAPI's TestClient)."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 5, max_retry_wait: float = 30.0, batch_size: int = 64,
                 http: httpx.Client | None = None) -> None:
        self.http = http or httpx.Client(base_url=url, timeout=timeout)
        self.headers = _headers(api_key)
        self.retries, self.max_retry_wait, self.batch_size = retries, max_retry_wait, batch_size
        self._owned = http is None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._owned:
            self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One call with retries on 429/503 and connection errors; the JSON answer or GatewayClientError."""
        for attempt in range(self.retries + 1):
            try:
                response = self.http.request(method, path, headers=self.headers, **kwargs)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
                time.sleep(retry_delay(None, attempt, self.max_retry_wait))
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                time.sleep(retry_delay(response, attempt, self.max_retry_wait))
                continue
            raise_for_error(response)
            return response.json()
        raise AssertionError("unreachable")

    def _post_images(self, path: str, images: Sequence[ImageLike], params: dict[str, Any]
                     ) -> list[tuple[int, dict[str, Any]]]:
        parts = []
        for start, chunk in batches(images, self.batch_size):
            files = [("files", as_file(image, start + i)) for i, image in enumerate(chunk)]
            parts.append((start, self.request("POST", path, params=params, files=files)))
        return parts

    def cluster(self, images: Sequence[ImageLike], model: str | None = None, version: int | None = None,
                top_k: int | None = None, precision: str | None = None, clusters: int | None = None
                ) -> list[ClusterResult]:
        """precision: fp32, int8 or fp16, the model exported at that precision (default: `model` as named);
        clusters: answer at this many clusters, merged along the card's hierarchy (default: the model's own)."""
        parts = self._post_images("/cluster", images, _params(model, version, top_k=top_k, precision=precision,
                                                              clusters=clusters))
        return [r for offset, body in parts for r in cluster_results(body, offset)]

    def embed(self, images: Sequence[ImageLike], model: str | None = None, version: int | None = None,
              precision: str | None = None) -> EmbedResult:
        return embed_result(self._post_images("/embed", images, _params(model, version, precision=precision)),
                            len(images))

    def models(self) -> dict[str, Any]:
        return self.request("GET", "/models")

    def card(self, name: str, version: int | None = None, precision: str | None = None,
             clusters: int | None = None) -> dict[str, Any]:
        return self.request("GET", f"/models/{name}", params=_params(None, version, precision=precision,
                                                                     clusters=clusters))


class AsyncClient:
    """Asynchronous client: the same calls, awaited; up to `concurrency` batches in flight at once."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 5, max_retry_wait: float = 30.0, batch_size: int = 64, concurrency: int = 4,
                 http: httpx.AsyncClient | None = None) -> None:
        self.http = http or httpx.AsyncClient(base_url=url, timeout=timeout)
        self.headers = _headers(api_key)
        self.retries, self.max_retry_wait, self.batch_size = retries, max_retry_wait, batch_size
        self.concurrency = concurrency
        self._owned = http is None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owned:
            await self.http.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        for attempt in range(self.retries + 1):
            try:
                response = await self.http.request(method, path, headers=self.headers, **kwargs)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
                await asyncio.sleep(retry_delay(None, attempt, self.max_retry_wait))
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                await asyncio.sleep(retry_delay(response, attempt, self.max_retry_wait))
                continue
            raise_for_error(response)
            return response.json()
        raise AssertionError("unreachable")

    async def _post_images(self, path: str, images: Sequence[ImageLike], params: dict[str, Any]
                           ) -> list[tuple[int, dict[str, Any]]]:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(start: int, chunk: Sequence[ImageLike]) -> tuple[int, dict[str, Any]]:
            async with gate:
                files = [("files", as_file(image, start + i)) for i, image in enumerate(chunk)]
                return start, await self.request("POST", path, params=params, files=files)

        return list(await asyncio.gather(*(one(s, c) for s, c in batches(images, self.batch_size))))

    async def cluster(self, images: Sequence[ImageLike], model: str | None = None, version: int | None = None,
                      top_k: int | None = None, precision: str | None = None, clusters: int | None = None
                      ) -> list[ClusterResult]:
        parts = await self._post_images("/cluster", images, _params(model, version, top_k=top_k, precision=precision,
                                                                    clusters=clusters))
        return [r for offset, body in parts for r in cluster_results(body, offset)]

    async def embed(self, images: Sequence[ImageLike], model: str | None = None,
                    version: int | None = None, precision: str | None = None) -> EmbedResult:
        return embed_result(await self._post_images("/embed", images, _params(model, version, precision=precision)),
                            len(images))

    async def models(self) -> dict[str, Any]:
        return await self.request("GET", "/models")

    async def card(self, name: str, version: int | None = None, precision: str | None = None,
                   clusters: int | None = None) -> dict[str, Any]:
        return await self.request("GET", f"/models/{name}", params=_params(None, version, precision=precision,
                                                                           clusters=clusters))
