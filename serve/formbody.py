"""The multipart/form-data request body: its "files" parts, parsed on the worker pool from the read body.

python-multipart walks part headers byte by byte in Python; run on the event loop (as Starlette's form
parser does, chunk by chunk) that is tens of milliseconds per chunk of a hostile body, and every file
part over a MiB costs a spooled temporary file (a file descriptor). Here the body, already read and
size-limited, is parsed in one call on the pool: the event loop only ever waits for it, part headers
are bounded by python-multipart (8 headers of 4 KiB per part), the part count by the image limit, and
each image is a zero-copy view of the body whenever the parser hands it over in one piece.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header

from serve.errors import GatewayError, bad_request, too_large

MAX_OTHER_PARTS = 64
"""Parts other than image files (ignored) a body may carry."""


@dataclass
class FormFile:
    name: str
    filename: str | None
    data: memoryview | bytes


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    pieces: list[memoryview | bytes] = field(default_factory=list)
    keep: bool = False


class _Collector:
    """python-multipart callbacks that keep the parts named `field` and refuse a body over the limits."""

    def __init__(self, body: bytearray, field_name: str, max_files: int) -> None:
        self.body, self.view = body, memoryview(body)
        self.field_name, self.max_files = field_name, max_files
        self.files: list[FormFile] = []
        self.others = 0
        self.part = _Part()
        self.header = [b"", b""]
        self.ended = False

    def callbacks(self) -> dict:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end, "on_end": self.end}

    def part_begin(self) -> None:
        self.part = _Part()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.header[0] += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.header[1] += data[start:end]

    def header_end(self) -> None:
        self.part.headers[bytes(self.header[0]).lower()] = bytes(self.header[1])
        self.header = [b"", b""]

    def headers_finished(self) -> None:
        _, options = parse_options_header(self.part.headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("latin-1")
        if name != self.field_name:
            self.others += 1
            if self.others > MAX_OTHER_PARTS:
                raise bad_request(f"more than {MAX_OTHER_PARTS} multipart parts other than {self.field_name!r}")
            return
        if b"filename" not in options:
            raise bad_request(f"multipart field {self.field_name!r} must carry files (with a filename), not text")
        if len(self.files) == self.max_files:
            raise too_large(f"too many images in one request; at most {self.max_files}")
        self.part.keep = True
        filename = options[b"filename"].decode("utf-8", "replace")
        self.files.append(FormFile(name, filename or None, b""))

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part.keep:
            self.part.pieces.append(self.view[start:end] if data is self.body else bytes(data[start:end]))

    def part_end(self) -> None:
        if self.part.keep:
            pieces = self.part.pieces
            self.files[-1].data = pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def end(self) -> None:
        self.ended = True


def parse_files(body: bytearray, content_type: str, field_name: str, max_files: int) -> list[FormFile]:
    """The parts named `field_name`, in order; GatewayError 400 (malformed) or 413 (too many files)."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise bad_request("malformed multipart body: the content type names no boundary")
    collector = _Collector(body, field_name, max_files)
    try:
        MultipartParser(boundary, collector.callbacks()).write(body)  # type: ignore[arg-type]
    except GatewayError:
        raise
    except Exception as err:  # python-multipart's parse errors, and anything a malformed body provokes
        raise bad_request(f"malformed multipart body: {err}") from err
    if not collector.ended:
        raise bad_request("malformed multipart body: it ends before the closing boundary")
    return collector.files
