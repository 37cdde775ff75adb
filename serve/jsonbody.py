"""The JSON request body {"images": [base64 | {"data": base64, "filename": str}, ...]}, read in bounded work.

A general JSON parser builds every object before anything can be checked: a 64 MB body of 3.3 million
unknown keys becomes a 3.3-million-entry dict (and, through pydantic's extra="forbid", 3.3 million
errors). This scanner walks the body against the one shape the gateway accepts and stops at the first
thing that does not fit, naming it: an unknown key costs the bytes before it, an oversized image or
image count is refused when its size is known, and nothing but the few small strings it returns is
allocated. Strings are found with bytes.find (C speed, no per-character Python work); image data is
returned as zero-copy memoryviews of the body. A string containing backslash escapes takes the slow
path through the standard library's C string scanner (legitimate base64 needs no escapes).

The keys come from the pydantic models in serve/schemas.py, which also document the body.
Runs on the worker pool (`parse_images`), never on the event loop; `check_prefix` judges the first
part of a body still arriving, so that a body refused by its first bytes is refused before the rest.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from json.decoder import scanstring

from serve.errors import GatewayError, bad_request, too_large
from serve.schemas import ImageItem, ImagesRequest

IMAGES_KEY, = ImagesRequest.model_fields
ITEM_KEYS = tuple(ImageItem.model_fields)  # ("data", "filename")
MAX_NAME_BYTES = 1024
"""Longest key or filename, in encoded bytes."""
DATA_URL_ALLOWANCE = 128
"""Room for a "data:image/...;base64," prefix in front of an image's base64 text."""

_WHITESPACE = re.compile(rb"[ \t\n\r]*")
_WHITESPACE_STEP = 1 << 16  # bytes of whitespace skipped per regex call (keeps each GIL hold short)


@dataclass
class JsonImage:
    """One entry of "images": its base64 text (still encoded) and the filename given with it."""

    data: memoryview | bytes
    filename: str | None


def _invalid(message: str) -> GatewayError:
    return GatewayError(422, f"invalid JSON body: {message}", "validation")


class _NeedMore(Exception):
    """A prefix of the body ended before it could be judged."""


class _Scanner:
    def __init__(self, body: bytes | bytearray, max_images: int, max_image_bytes: int,
                 complete: bool = True) -> None:
        self.buf = body
        self.view = memoryview(body)
        self.complete = complete  # False: `body` is a prefix; running out of it is no error
        self.pos = 0
        self.max_images = max_images
        self.max_image_bytes = max_image_bytes
        self.max_data_chars = 4 * math.ceil(max_image_bytes / 3) + DATA_URL_ALLOWANCE

    # -- lexical level -------------------------------------------------------------------------
    def _skip_ws(self) -> None:
        while True:
            end = _WHITESPACE.match(self.buf, self.pos, self.pos + _WHITESPACE_STEP).end()
            done = end < self.pos + _WHITESPACE_STEP
            self.pos = end
            if done:
                return

    def _peek(self) -> int | None:
        """The next non-whitespace byte (not consumed), or None at the end (of a complete body)."""
        self._skip_ws()
        if self.pos < len(self.buf):
            return self.buf[self.pos]
        if not self.complete:
            raise _NeedMore
        return None

    def _expect(self, char: bytes, what: str) -> None:
        if self._peek() != char[0]:
            raise bad_request(f"body is not valid JSON: expected {what} at byte {self.pos}")
        self.pos += 1

    def _string(self, limit: int, what: str, oversize: Callable[[str], GatewayError]
                ) -> tuple[int, int, str | None]:
        """At a '"': (start, end) of its raw contents, and the decoded text when it had escapes."""
        if self._peek() != ord('"'):
            raise _invalid(f"{what} must be a string")
        buf, start = self.buf, self.pos + 1
        quote = buf.find(b'"', start, start + limit + 1)
        if quote >= 0 and buf.find(b"\\", start, quote) < 0:  # the common case: no escapes
            self.pos = quote + 1
            return start, quote, None
        if quote < 0 and buf.find(b"\\", start, start + limit + 1) < 0:
            if len(buf) > start + limit:
                raise oversize(f"{what} is longer than {limit} bytes")
            if not self.complete:
                raise _NeedMore
            raise bad_request(f"body is not valid JSON: {what} is not terminated")
        window = bytes(self.view[start - 1:start + limit + 1]).decode("latin-1")  # one char per byte
        try:
            text, end = scanstring(window, 1, True)
        except ValueError as err:
            if len(buf) > start + limit:
                raise oversize(f"{what} is longer than {limit} bytes") from err
            if not self.complete:
                raise _NeedMore from err
            raise bad_request(f"body is not valid JSON: {what}: {getattr(err, 'msg', err)}") from err
        self.pos = start - 1 + end
        return start, self.pos - 1, text

    def _text(self, what: str) -> str:
        """A short string (key, filename) decoded as UTF-8 JSON text."""
        start, end, escaped = self._string(MAX_NAME_BYTES, what, _invalid)
        raw = bytes(self.view[start - 1:end + 1])
        try:
            return json.loads(raw) if escaped is not None else raw[1:-1].decode("utf-8")
        except (ValueError, UnicodeDecodeError) as err:
            raise bad_request(f"body is not valid JSON: {what} is not valid UTF-8 text") from err

    def _keys(self, allowed: tuple[str, ...], where: str) -> Iterator[str]:
        """Each key of the object starting here, in order; refuses unknown and repeated keys at once."""
        self._expect(b"{", f"an object at {where}")
        seen: set[str] = set()
        if self._peek() == ord("}"):
            self.pos += 1
            return
        while True:
            if self._peek() != ord('"'):
                raise bad_request(f"body is not valid JSON: expected a key (a string) at byte {self.pos}")
            key = self._text(f"a key at {where}")
            if key not in allowed:
                raise _invalid(f"unknown key {key[:100]!r} at {where} (allowed: {', '.join(allowed)})")
            if key in seen:
                raise _invalid(f"key {key!r} appears twice at {where}")
            seen.add(key)
            self._expect(b":", "':' after a key")
            yield key
            if self._peek() == ord(","):
                self.pos += 1
                continue
            self._expect(b"}", f"',' or '}}' in the object at {where}")
            return

    def _literal(self, word: bytes) -> bool:
        """Whether `word` comes next (consumed if so)."""
        if not self.complete and len(self.buf) - self.pos < len(word):
            raise _NeedMore
        if self.buf.startswith(word, self.pos):
            self.pos += len(word)
            return True
        return False

    # -- the accepted shape --------------------------------------------------------------------
    def _data(self, where: str) -> memoryview | bytes:
        start, end, text = self._string(
            self.max_data_chars, f"{where} (base64 image data)",
            lambda msg: too_large(f"{msg}: images are limited to {self.max_image_bytes} bytes"))
        if text is None:
            return self.view[start:end]
        try:
            return text.encode("ascii")
        except UnicodeEncodeError:
            return b"\x00"  # not base64: the decode step reports it for this image alone

    def _image(self, index: int) -> JsonImage:
        where = f"{IMAGES_KEY}[{index}]"
        if self._peek() == ord('"'):
            return JsonImage(self._data(where), None)
        if self._peek() != ord("{"):
            raise _invalid(f"{where} must be a base64 string or an object {{{', '.join(ITEM_KEYS)}}}")
        data, filename = None, None
        for key in self._keys(ITEM_KEYS, where):
            if key == "data":
                data = self._data(f"{where}.data")
            elif self._peek() == ord("n") and self._literal(b"null"):
                pass
            else:
                filename = self._text(f"{where}.filename")
        if data is None:
            raise _invalid(f"{where}.data is required")
        return JsonImage(data, filename)

    def _images(self) -> list[JsonImage]:
        if self._peek() != ord("["):
            raise _invalid(f"{IMAGES_KEY!r} must be an array")
        self.pos += 1
        images: list[JsonImage] = []
        if self._peek() == ord("]"):
            self.pos += 1
        else:
            while True:
                if len(images) == self.max_images:
                    raise too_large(f"more than {self.max_images} images in one request")
                images.append(self._image(len(images)))
                if self._peek() == ord(","):
                    self.pos += 1
                    continue
                self._expect(b"]", f"',' or ']' in {IMAGES_KEY!r}")
                break
        if not images:
            raise _invalid(f"{IMAGES_KEY!r} must hold at least one image")
        return images

    def body(self) -> list[JsonImage]:
        if self._peek() is None:
            raise bad_request("body is not valid JSON: it is empty")
        if self._peek() != ord("{"):
            raise _invalid(f'the body must be an object {{"{IMAGES_KEY}": [...]}}')
        images = None
        for _ in self._keys((IMAGES_KEY,), "the top level"):
            images = self._images()
        if self._peek() is not None:  # (a prefix never gets here: it needs its end to be judged)
            raise bad_request(f"body is not valid JSON: extra data at byte {self.pos}")
        if images is None:
            raise _invalid(f"{IMAGES_KEY!r} is required")
        return images


def parse_images(body: bytes | bytearray, max_images: int, max_image_bytes: int) -> list[JsonImage]:
    """The images of a JSON body, in order; GatewayError 400 (not JSON), 413 (too many/large), 422 (shape).

    Work and memory are bounded by the position of the first problem, whatever follows it."""
    return _Scanner(body, max_images, max_image_bytes).body()


def check_prefix(prefix: bytes | bytearray, max_images: int, max_image_bytes: int) -> None:
    """Raise the GatewayError that the whole body would get, if its first bytes already decide it.

    The same walk as `parse_images`, stopped without a verdict where the prefix ends."""
    try:
        _Scanner(prefix, max_images, max_image_bytes, complete=False).body()
    except _NeedMore:
        return
