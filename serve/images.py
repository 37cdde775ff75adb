"""Getting images out of a request and preparing them exactly as at training-time evaluation.

Bodies are multipart/form-data (field "files") or JSON {"images": [base64, ...]}; anything else is
415. Sizes are checked while reading (request bytes), per image (encoded bytes, then pixels from the
header: 413) and per request (image count: 413). Decoding runs on a thread pool, through
`contract.preprocess` (numpy + PIL only, the same code as training): an image that cannot be decoded
becomes an error entry for that image alone.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from contract.preprocess import ImageError, open_image, prepare
from serve.errors import GatewayError, bad_request, too_large, unsupported_media_type
from serve.schemas import ImagesRequest
from serve.settings import Settings

try:
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is optional
    _loads = json.loads

FIELD = "files"
_B64_PREFIX = ";base64,"


@dataclass
class Upload:
    index: int
    filename: str | None
    data: bytes | str  # str: base64 text still to decode (done on the thread pool)

    @property
    def label(self) -> str:
        return f"image {self.index} ({self.filename})" if self.filename else f"image {self.index}"


async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body, failing with 413 as soon as it exceeds `limit` bytes."""
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise too_large(f"request body larger than {limit} bytes")
        yield chunk


async def read_uploads(request: Request, settings: Settings) -> list[Upload]:
    """The images of a request, in order, still encoded; raises GatewayError (400/413/415/422)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.max_request_bytes:
        raise too_large(f"request body of {length} bytes is larger than {settings.max_request_bytes} bytes")
    mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if mime == "multipart/form-data":
        uploads = await _read_multipart(request, settings)
    elif mime == "application/json" or mime.endswith("+json"):
        uploads = await _read_json(request, settings)
    else:
        raise unsupported_media_type(f"unsupported content type {mime or 'none'!r}: send multipart/form-data "
                                     f"with field {FIELD!r}, or application/json {{\"images\": [base64, ...]}}")
    if not uploads:
        raise bad_request(f"no images: send multipart field {FIELD!r} or JSON {{\"images\": [...]}}")
    if len(uploads) > settings.max_images_per_request:
        raise too_large(f"{len(uploads)} images in one request; at most {settings.max_images_per_request}")
    return uploads


async def _read_multipart(request: Request, settings: Settings) -> list[Upload]:
    parser = MultiPartParser(request.headers, _limited(request, settings.max_request_bytes),
                             max_files=settings.max_images_per_request, max_fields=64, max_part_size=2**20)
    try:
        form = await parser.parse()
    except MultiPartException as err:
        if "Too many files" in err.message:
            raise too_large(f"too many images in one request; at most {settings.max_images_per_request}") from err
        raise bad_request(f"malformed multipart body: {err.message}") from err
    try:
        uploads = []
        for name, value in form.multi_items():
            if name != FIELD:
                continue
            if not isinstance(value, UploadFile):
                raise bad_request(f"multipart field {FIELD!r} must carry files (with a filename), not text")
            data = await value.read()
            upload = Upload(len(uploads), value.filename or None, data)
            if len(data) > settings.max_image_bytes:
                raise too_large(f"{upload.label}: {len(data)} bytes, more than the limit of "
                                f"{settings.max_image_bytes}")
            uploads.append(upload)
        return uploads
    finally:
        await form.close()


async def _read_json(request: Request, settings: Settings) -> list[Upload]:
    body = b"".join([chunk async for chunk in _limited(request, settings.max_request_bytes)])
    try:
        data = _loads(body)
    except ValueError as err:
        raise bad_request(f"body is not valid JSON: {err}") from err
    if isinstance(data, dict) and isinstance(data.get("images"), list) \
            and len(data["images"]) > settings.max_images_per_request:
        raise too_large(f"{len(data['images'])} images in one request; at most {settings.max_images_per_request}")
    try:
        req = ImagesRequest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise GatewayError(422, f"invalid JSON body at {where}: {first['msg']} ({err.error_count()} error(s))",
                           "validation") from err
    uploads = []
    for i, item in enumerate(req.images):
        text, name = (item, None) if isinstance(item, str) else (item.data, item.filename)
        upload = Upload(i, name, text)
        encoded = len(text) - (text.find(_B64_PREFIX) + len(_B64_PREFIX) if _B64_PREFIX in text[:100] else 0)
        if encoded * 3 // 4 > settings.max_image_bytes:
            raise too_large(f"{upload.label}: about {encoded * 3 // 4} bytes, more than the limit of "
                            f"{settings.max_image_bytes}")
        uploads.append(upload)
    return uploads


def _b64(text: str) -> bytes:
    if text.startswith("data:") and _B64_PREFIX in text[:100]:
        text = text[text.index(_B64_PREFIX) + len(_B64_PREFIX):]
    return base64.b64decode(text, validate=True)


def _pixel_limit_exceeded(data: bytes, max_pixels: int) -> str | None:
    """Why an image is too large to decode (from its header), or None if it is not."""
    limit = max_pixels if Image.MAX_IMAGE_PIXELS is None else min(max_pixels, Image.MAX_IMAGE_PIXELS)
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Image.DecompressionBombError as err:
        return f"refused as a decompression bomb: {err}"
    except Exception:  # noqa: BLE001 - not decodable at all: a per-image error, not a size error
        return None
    if width * height > limit:
        return f"{width}x{height} = {width * height} pixels, more than the limit of {limit}"
    return None


def _decode(uploads: list[Upload], size: int, channels: int, max_pixels: int, max_bytes: int) -> list[np.ndarray | str]:
    """Runs on the thread pool: each upload -> uint8 (C, S, S), or the message saying why not."""
    out: list[np.ndarray | str] = []
    for up in uploads:
        data = up.data
        if isinstance(data, str):
            try:
                data = _b64(data)
            except (binascii.Error, ValueError) as err:
                out.append(f"{up.label}: not valid base64: {err}")
                continue
            if len(data) > max_bytes:
                raise too_large(f"{up.label}: {len(data)} bytes, more than the limit of {max_bytes}")
        try:
            out.append(prepare(open_image(data, max_pixels), size, channels))
        except ImageError as err:
            reason = _pixel_limit_exceeded(data, max_pixels)
            if reason is not None:
                raise too_large(f"{up.label}: {reason}") from err
            message = str(err).removeprefix("image bytes: ")
            out.append(f"{up.label}: {message}")
    return out


async def prepare_uploads(uploads: list[Upload], size: int, channels: int, settings: Settings,
                          pool: Executor) -> tuple[np.ndarray | None, list[int], dict[int, str]]:
    """Decode on `pool` in up to settings.threads chunks -> (uint8 (n, C, S, S) or None, their indices, errors)."""
    loop = asyncio.get_running_loop()
    chunks = min(settings.threads, len(uploads))
    step = -(-len(uploads) // chunks)
    parts = await asyncio.gather(*(
        loop.run_in_executor(pool, _decode, uploads[i:i + step], size, channels, settings.max_image_pixels,
                             settings.max_image_bytes)
        for i in range(0, len(uploads), step)))
    arrays, ok, errors = [], [], {}
    for up, item in zip(uploads, (x for part in parts for x in part), strict=True):
        if isinstance(item, str):
            errors[up.index] = item
        else:
            arrays.append(item)
            ok.append(up.index)
    return (np.stack(arrays) if arrays else None), ok, errors
