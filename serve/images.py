"""Getting images out of a request and preparing them exactly as at training-time evaluation.

Bodies are multipart/form-data (field "files") or JSON {"images": [base64, ...]}; anything else is
415. A route may take another JSON shape instead (`RequestForm`: OpenAI's embeddings request, read as
JSON whatever its content type). Sizes are checked while reading (request bytes: 413 as soon as the
body passes the limit), per image (encoded bytes: serve/imagebytes.py, then pixels from the header:
413) and per request (image count: 413). The event loop only collects the body into one buffer; it is
parsed on the worker pool, never on the loop: `serve.formbody` (multipart, images as views of the body)
and `serve.jsonbody` (bounded work, the first unknown key refused by name).

Decoding runs on the decode pool through `contract.preprocess.prepare_source` (numpy + PIL only, the
same function as training): the work per image is bounded by the model's input size, each image has
a time budget (settings.decode_timeout_ms), and any failure of one image (corrupt data, MemoryError,
over budget) becomes an error entry for that image alone. The pool is shared fairly: each request
keeps at most `threads` short slices of work (DECODE_SLICE_S) queued at a time, so a request of 256
large images delays a one-image request by about one slice, not by its whole decode, and a request
that is abandoned stops being decoded after the slice in flight.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.requests import Request

from contract.metadata import ModelMetadata
from contract.preprocess import ImageError, ImageTooLarge, describe_error, prepare_source
from serve.errors import GatewayError, bad_request, closing, too_large, unsupported_media_type
from serve.formbody import parse_files
from serve.imagebytes import base64_payload, check_image_bytes
from serve.jsonbody import Shape, check_prefix, parse_body
from serve.memory import release_free_memory
from serve.settings import Settings

FIELD = "files"
DECODE_SLICE_S = 0.02
"""Longest run of decoding one request does per turn on the pool before the next request's turn."""
PREFIX_CHECK_BYTES = 64 * 1024
"""A JSON body is judged once on its first this many bytes, while the rest still arrives."""
RELEASE_AFTER_S = 0.1
"""A request that spent this long decoding (large images) hands its freed memory back to the OS."""


@dataclass
class Upload:
    index: int
    filename: str | None
    data: bytes | memoryview  # the encoded image, or its base64 text when `base64` (decoded on the pool)
    base64: bool = False

    @property
    def label(self) -> str:
        return f"image {self.index} ({self.filename})" if self.filename else f"image {self.index}"


@dataclass
class RequestBody:
    """The images of one request, in order and still encoded, and the body's other fields (OpenAI's form:
    model, encoding_format, dimensions)."""

    uploads: list[Upload]
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestForm:
    """How a route takes its images: a JSON body of `shape`, or multipart/form-data "files" when `multipart`
    (without it the body is read as JSON whatever its content type says, as OpenAI's API does); `check`:
    refusals that need the chosen model (OpenAI's dimensions); `all_or_nothing`: an image that does not
    decode fails the request (400) before anything is inferred, instead of being answered as an error item."""

    shape: Shape = Shape.IMAGES
    multipart: bool = True
    check: Callable[[ModelMetadata, RequestBody], None] | None = None
    all_or_nothing: bool = False


IMAGES_FORM = RequestForm()


async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body, failing with 413 as soon as it exceeds `limit` bytes."""
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise closing(too_large(f"request body larger than {limit} bytes"))
        yield chunk


async def read_body(request: Request, settings: Settings, pool: Executor, form: RequestForm = IMAGES_FORM
                    ) -> RequestBody:
    """The images of a request, in order, still encoded; raises GatewayError (400/413/415/422)."""
    length = request.headers.get("content-length")
    if length is not None and length.isascii() and length.isdigit() and int(length) > settings.max_request_bytes:
        raise closing(too_large(f"request body of {length} bytes is larger than {settings.max_request_bytes} bytes"))
    mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if form.multipart and mime == "multipart/form-data":
        body = RequestBody(await _read_multipart(request, settings, pool))
    elif not form.multipart or mime == "application/json" or mime.endswith("+json"):
        body = await _read_json(request, settings, pool, form.shape)
    else:
        raise unsupported_media_type(f"unsupported content type {mime or 'none'!r}: send multipart/form-data "
                                     f"with field {FIELD!r}, or application/json {{\"images\": [base64, ...]}}")
    if not body.uploads:
        raise bad_request(f"no images: send multipart field {FIELD!r} or JSON {{\"images\": [...]}}")
    if len(body.uploads) > settings.max_images_per_request:
        raise too_large(f"{len(body.uploads)} images in one request; at most {settings.max_images_per_request}")
    return body


async def _read_body(request: Request, limit: int) -> bytearray:
    """The whole body in one buffer; 413 as soon as it passes `limit` bytes (nothing is parsed here)."""
    body = bytearray()
    async for chunk in _limited(request, limit):
        body += chunk
    return body


async def _read_multipart(request: Request, settings: Settings, pool: Executor) -> list[Upload]:
    body = await _read_body(request, settings.max_request_bytes)
    parts = await asyncio.get_running_loop().run_in_executor(
        pool, parse_files, body, request.headers.get("content-type", ""), FIELD, settings.max_images_per_request)
    uploads = [Upload(i, part.filename, part.data) for i, part in enumerate(parts)]
    for upload in uploads:
        check_image_bytes(upload.label, len(upload.data), settings.max_image_bytes)
    return uploads


async def _read_json(request: Request, settings: Settings, pool: Executor, shape: Shape) -> RequestBody:
    """Read and scan a JSON body; one refused by its first PREFIX_CHECK_BYTES is refused before the rest arrives."""
    loop = asyncio.get_running_loop()
    limits = settings.max_images_per_request, settings.max_image_bytes
    body, judged = bytearray(), False
    async for chunk in _limited(request, settings.max_request_bytes):
        body += chunk
        if not judged and len(body) >= PREFIX_CHECK_BYTES:
            judged = True
            try:
                await loop.run_in_executor(pool, check_prefix, bytes(body), *limits, shape)
            except GatewayError as err:
                raise closing(err) from None
    parsed = await loop.run_in_executor(pool, parse_body, body, shape, *limits)
    uploads = [Upload(i, item.filename, item.data, base64=True) for i, item in enumerate(parsed.images)]
    return RequestBody(uploads, parsed.fields)


def _decode(up: Upload, size: int, channels: int, settings: Settings, crop: float
            ) -> np.ndarray | str | GatewayError:
    """Runs on the pool: one upload -> uint8 (C, S, S), the message saying why not, or a 413 for the request."""
    try:
        data = up.data
        if up.base64:
            try:
                data = binascii.a2b_base64(base64_payload(data), strict_mode=True)
            except (binascii.Error, ValueError) as err:
                return f"{up.label}: not valid base64: {err}"
        return prepare_source(data, size, channels, settings.max_image_pixels, settings.decode_timeout_ms / 1000,
                              crop)
    except ImageTooLarge as err:
        return too_large(f"{up.label}: {_unnamed(err)}")
    except ImageError as err:
        return f"{up.label}: {_unnamed(err)}"
    except Exception as err:  # noqa: BLE001 - MemoryError and the like: this image fails, not the request
        return f"{up.label}: {describe_error(err)}"


def _unnamed(err: ImageError) -> str:
    return str(err).removeprefix("image bytes: ")  # the label already says which image


async def prepare_uploads(uploads: list[Upload], size: int, channels: int, settings: Settings,
                          pool: Executor, crop: float = 1.0) -> tuple[np.ndarray | None, list[int], dict[int, str]]:
    """Decode on `pool`, fairly (see the module docstring) -> (uint8 (n, C, S, S) or None, their indices, errors);
    `crop`: the model input's (contract.metadata.ImageInput).

    Raises the 413 of the first image over a size limit (and decodes no more); cancelled, it stops
    after the slices in flight."""
    loop = asyncio.get_running_loop()
    todo = deque(uploads)
    outcomes: dict[int, np.ndarray | str] = {}
    refused: list[GatewayError] = []
    began = time.monotonic()

    def decode_slice() -> None:
        until = time.monotonic() + DECODE_SLICE_S
        while not refused and time.monotonic() < until:
            try:
                up = todo.popleft()
            except IndexError:
                return
            outcome = _decode(up, size, channels, settings, crop)
            if isinstance(outcome, GatewayError):
                refused.append(outcome)
            else:
                outcomes[up.index] = outcome

    async def worker() -> None:
        while todo and not refused:
            await loop.run_in_executor(pool, decode_slice)

    try:
        await asyncio.gather(*(worker() for _ in range(min(settings.threads, len(uploads)))))
    finally:
        todo.clear()  # cancelled: slices still running stop after their current image
        if time.monotonic() - began > RELEASE_AFTER_S:
            with contextlib.suppress(RuntimeError):  # the pool is shut down: the process is ending
                pool.submit(release_free_memory)
    if refused:
        raise refused[0]
    arrays, ok, errors = [], [], {}
    for up in uploads:
        item = outcomes[up.index]
        if isinstance(item, str):
            errors[up.index] = item
        else:
            arrays.append(item)
            ok.append(up.index)
    return (np.stack(arrays) if arrays else None), ok, errors
