"""JSON request bodies, read in bounded work: the gateway's {"images": [base64 | {"data": base64,
"filename": str}, ...]} and OpenAI's embeddings request {"model": str, "input": base64 | [base64, ...],
"encoding_format": "float" | "base64", "dimensions": int | null, ...}.

A general JSON parser builds every object before anything can be checked: a 64 MB body of 3.3 million
unknown keys becomes a 3.3-million-entry dict (and, through pydantic's extra="forbid", 3.3 million
errors). This scanner walks the body against the one shape its route accepts and stops at the first
thing that does not fit, naming it: an unknown key costs the bytes before it, an oversized image or
image count is refused when its size is known, and nothing but the few small strings it returns is
allocated. Strings are found with bytes.find (C speed, no per-character Python work); image data is
returned as zero-copy memoryviews of the body. A string containing backslash escapes takes the slow
path through the standard library's C string scanner (legitimate base64 needs no escapes).
OpenAI's clients send fields this API does not use (`user`, and others): they are skipped when each
holds a string, number, boolean or null and the body has at most MAX_EMBEDDINGS_FIELDS fields in all;
more fields, or a nested value, are refused by name rather than walked.

The keys come from the pydantic models in serve/schemas.py, which also document the bodies.
Runs on the worker pool (`parse_body`), never on the event loop; `check_prefix` judges the first
part of a body still arriving, so that a body refused by its first bytes is refused before the rest.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from json.decoder import scanstring
from typing import get_args

from serve.errors import GatewayError, bad_request, too_large
from serve.imagebytes import check_image_bytes, decoded_size, longest_base64
from serve.schemas import MAX_EMBEDDINGS_FIELDS, MAX_IGNORED_CHARS, EmbeddingsRequest, ImageItem, ImagesRequest

IMAGES_KEY, = ImagesRequest.model_fields
ITEM_KEYS = tuple(ImageItem.model_fields)  # ("data", "filename")
EMBEDDINGS_KEYS = tuple(EmbeddingsRequest.model_fields)  # ("model", "input", "encoding_format", "dimensions", "user")
ENCODING_FORMATS = get_args(EmbeddingsRequest.model_fields["encoding_format"].annotation)
MAX_NAME_BYTES = 1024
"""Longest key, filename or model name, in encoded bytes."""
MAX_IGNORED_BYTES = 12 * MAX_IGNORED_CHARS  # a character is at most 12 bytes of JSON (an escaped surrogate pair)
MAX_NUMBER_CHARS = 32

_WHITESPACE = re.compile(rb"[ \t\n\r]*")
_WHITESPACE_STEP = 1 << 16  # bytes of whitespace skipped per regex call (keeps each GIL hold short)
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(rb"-?[0-9]+\Z")


class Shape(enum.Enum):
    """The JSON bodies the routes accept."""

    IMAGES = "images"  # {"images": [...]}: /cluster, /embed, the page's /projection/place
    EMBEDDINGS = "embeddings"  # OpenAI's embeddings request: /v1/embeddings

    @property
    def names_model(self) -> bool:
        """Whether the body names the model (else the query does)."""
        return self is Shape.EMBEDDINGS


@dataclass
class JsonImage:
    """One image of a body: its base64 text (still encoded) and the filename given with it."""

    data: memoryview | bytes
    filename: str | None


@dataclass
class JsonBody:
    """A body's images, in order, and its other fields (OpenAI's: model, encoding_format, dimensions)."""

    images: list[JsonImage]
    fields: dict[str, str | int | None] = field(default_factory=dict)


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
        self.max_data_chars = longest_base64(max_image_bytes)

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

    def _keys(self, allowed: tuple[str, ...], where: str, max_keys: int | None = None) -> Iterator[str]:
        """Each key of the object starting here, in order; refuses repeated keys at once, and unknown keys too,
        unless `max_keys` is given: then they are yielded like the others (the caller skips their values),
        and a key beyond the first `max_keys` is refused."""
        self._expect(b"{", f"an object at {where}")
        seen: set[str] = set()
        if self._peek() == ord("}"):
            self.pos += 1
            return
        while True:
            if self._peek() != ord('"'):
                raise bad_request(f"body is not valid JSON: expected a key (a string) at byte {self.pos}")
            key = self._text(f"a key at {where}")
            if max_keys is None and key not in allowed:
                raise _invalid(f"unknown key {key[:100]!r} at {where} (allowed: {', '.join(allowed)})")
            if max_keys is not None and len(seen) == max_keys:
                raise _invalid(f"more than {max_keys} keys at {where} (used: {', '.join(allowed)})")
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

    def _number(self, what: str) -> bytes:
        """A JSON number's text (at most MAX_NUMBER_CHARS)."""
        self._skip_ws()
        match = _NUMBER.match(self.buf, self.pos, self.pos + MAX_NUMBER_CHARS + 1)
        if match is None:
            raise bad_request(f"body is not valid JSON: expected a value for {what} at byte {self.pos}")
        if not self.complete and match.end() == len(self.buf):
            raise _NeedMore  # the number may go on
        if match.end() - self.pos > MAX_NUMBER_CHARS:
            raise _invalid(f"{what} is a number longer than {MAX_NUMBER_CHARS} characters")
        self.pos = match.end()
        return match.group()

    def _skip_scalar(self, what: str) -> None:
        """Pass over a string, number, boolean or null; anything else (an object, an array) is refused."""
        char = self._peek()
        if char == ord('"'):
            self._string(MAX_IGNORED_BYTES, what, _invalid)
        elif char is not None and char in b"-0123456789":
            self._number(what)
        elif char in (ord("["), ord("{")):
            raise _invalid(f"{what} is not used by this API, and is ignored only when it holds a string, number, "
                           "boolean or null")
        elif not any(self._literal(word) for word in (b"true", b"false", b"null")):
            raise bad_request(f"body is not valid JSON: expected a value for {what} at byte {self.pos}")

    # -- the accepted shapes -------------------------------------------------------------------
    def _data(self, where: str) -> memoryview | bytes:
        start, end, text = self._string(
            self.max_data_chars, f"{where} (base64 image data)",
            lambda msg: too_large(f"{msg}: images are limited to {self.max_image_bytes} bytes"))
        if text is None:
            data: memoryview | bytes = self.view[start:end]
        else:
            try:
                data = text.encode("ascii")
            except UnicodeEncodeError:
                return b"\x00"  # not base64: the decode step reports it for this image alone
        check_image_bytes(where, decoded_size(data), self.max_image_bytes)
        return data

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

    def _image_list(self, key: str, item: Callable[[int], JsonImage], empty: GatewayError) -> list[JsonImage]:
        """The array of images under `key`; `empty`: the error for an array without any."""
        if self._peek() != ord("["):
            raise _invalid(f"{key!r} must be an array")
        self.pos += 1
        images: list[JsonImage] = []
        if self._peek() == ord("]"):
            self.pos += 1
        else:
            while True:
                if len(images) == self.max_images:
                    raise too_large(f"more than {self.max_images} images in one request")
                images.append(item(len(images)))
                if self._peek() == ord(","):
                    self.pos += 1
                    continue
                self._expect(b"]", f"',' or ']' in {key!r}")
                break
        if not images:
            raise empty
        return images

    def _object(self, example: str) -> None:
        """Where a body must begin: an object."""
        if self._peek() is None:
            raise bad_request("body is not valid JSON: it is empty")
        if self._peek() != ord("{"):
            raise _invalid(f"the body must be an object {example}")

    def _end(self) -> None:
        if self._peek() is not None:  # (a prefix never gets here: it needs its end to be judged)
            raise bad_request(f"body is not valid JSON: extra data at byte {self.pos}")

    def images_body(self) -> JsonBody:
        self._object(f'{{"{IMAGES_KEY}": [...]}}')
        images = None
        for _ in self._keys((IMAGES_KEY,), "the top level"):
            images = self._image_list(IMAGES_KEY, self._image, _invalid(f"{IMAGES_KEY!r} must hold at least one image"))
        self._end()
        if images is None:
            raise _invalid(f"{IMAGES_KEY!r} is required")
        return JsonBody(images)

    def _input(self) -> list[JsonImage]:
        """OpenAI's `input`: one base64 image or an array of them."""
        if self._peek() == ord('"'):
            return [JsonImage(self._data("input"), None)]
        return self._image_list("input", lambda i: JsonImage(self._data(f"input[{i}]"), None),
                                bad_request("input is empty: give one or more images"))

    def _optional_integer(self, what: str) -> int | None:
        char = self._peek()
        if char == ord("n") and self._literal(b"null"):
            return None
        if char is None or char not in b"-0123456789":
            raise _invalid(f"{what} must be an integer or null")
        number = self._number(what)
        if _INTEGER.match(number):
            return int(number)
        value = float(number)  # JSON Schema's integers include 75.0 and 7e1
        if not value.is_integer():
            raise _invalid(f"{what} must be an integer, got {number.decode()}")
        return int(value)

    def embeddings_body(self) -> JsonBody:
        self._object('{"model": ..., "input": [...]}')
        images, fields = None, {"encoding_format": ENCODING_FORMATS[0], "dimensions": None}
        for key in self._keys(EMBEDDINGS_KEYS, "the top level", max_keys=MAX_EMBEDDINGS_FIELDS):
            if key == "input":
                images = self._input()
            elif key == "model":
                fields["model"] = self._text("model")
            elif key == "encoding_format":
                fields[key] = self._text(key)
                if fields[key] not in ENCODING_FORMATS:
                    raise _invalid(f"encoding_format must be one of {list(ENCODING_FORMATS)}")
            elif key == "dimensions":
                fields[key] = self._optional_integer(key)
            else:  # `user`, and the fields this API does not use
                self._skip_scalar(repr(key))
        self._end()
        if "model" not in fields:
            raise _invalid("'model' is required")
        if images is None:
            raise _invalid("'input' is required")
        return JsonBody(images, fields)

    def body(self, shape: Shape) -> JsonBody:
        return self.images_body() if shape is Shape.IMAGES else self.embeddings_body()


def parse_body(body: bytes | bytearray, shape: Shape, max_images: int, max_image_bytes: int) -> JsonBody:
    """The images (in order) and fields of a JSON body of `shape`; GatewayError 400 (not JSON), 413 (too many or
    too large images), 422 (shape).

    Work and memory are bounded by the position of the first problem, whatever follows it."""
    return _Scanner(body, max_images, max_image_bytes).body(shape)


def parse_images(body: bytes | bytearray, max_images: int, max_image_bytes: int) -> list[JsonImage]:
    """The images of a body {"images": [...]}, in order (parse_body of Shape.IMAGES)."""
    return parse_body(body, Shape.IMAGES, max_images, max_image_bytes).images


def check_prefix(prefix: bytes | bytearray, max_images: int, max_image_bytes: int, shape: Shape = Shape.IMAGES
                 ) -> None:
    """Raise the GatewayError that the whole body would get, if its first bytes already decide it.

    The same walk as `parse_body`, stopped without a verdict where the prefix ends."""
    try:
        _Scanner(prefix, max_images, max_image_bytes, complete=False).body(shape)
    except _NeedMore:
        return
