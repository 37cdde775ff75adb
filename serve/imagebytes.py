"""The per-image byte limit (settings.max_image_bytes), applied by `check_image_bytes` alone, to every image
however it arrives: a multipart part by its length, base64 text (the JSON bodies of /cluster, /embed and
/v1/embeddings, bare or as a data: URL) by the exact number of bytes it decodes to, which its length
tells before anything is decoded (strict base64: 3 bytes per 4 characters, less the padding).
"""

from __future__ import annotations

import math

from serve.errors import too_large

DATA_URL_HEAD = 100
"""A data: URL names its media type within this many characters."""
DATA_URL_ALLOWANCE = 128
"""Room for a "data:image/...;base64," prefix in front of an image's base64 text."""
_BASE64_MARK = b";base64,"


def base64_payload(text: bytes | memoryview) -> bytes | memoryview:
    """base64 text without its data: URL prefix, if it has one (a view when `text` is one)."""
    if bytes(text[:5]) == b"data:":
        head = bytes(text[:DATA_URL_HEAD])
        if _BASE64_MARK in head:
            return text[head.index(_BASE64_MARK) + len(_BASE64_MARK):]
    return text


def decoded_size(text: bytes | memoryview) -> int:
    """The bytes base64 text (optionally a data: URL) decodes to; exact for strict base64, which is all that decodes."""
    payload = base64_payload(text)
    padding = len(bytes(payload[-2:])) - len(bytes(payload[-2:]).rstrip(b"="))
    return len(payload) * 3 // 4 - padding


def longest_base64(limit: int) -> int:
    """The longest text (base64 with a data: URL prefix) of an image within `limit` bytes: how far a JSON
    reader needs to scan one image string before it knows the image is over the limit."""
    return 4 * math.ceil(limit / 3) + DATA_URL_ALLOWANCE


def check_image_bytes(label: str, size: int, limit: int) -> None:
    """413 for the request when image `label` has more than `limit` bytes (encoded, as sent)."""
    if size > limit:
        raise too_large(f"{label}: {size} bytes, more than the limit of {limit} bytes")
