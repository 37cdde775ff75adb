"""serve.formbody: the "files" parts of a multipart body, parsed in one call off the event loop."""

from __future__ import annotations

import httpx
import pytest

from serve.errors import GatewayError
from serve.formbody import MAX_OTHER_PARTS, parse_files


def _body(files=None, data=None) -> tuple[bytearray, str]:  # noqa: ANN001 - httpx's arguments
    request = httpx.Request("POST", "http://localhost/cluster", files=files, data=data)
    return bytearray(request.read()), request.headers["content-type"]


def _refused(body: bytearray, content_type: str, status: int, max_files: int = 8) -> str:
    with pytest.raises(GatewayError) as err:
        parse_files(body, content_type, "files", max_files)
    assert err.value.status == status, err.value.message
    return err.value.message


def test_files_come_back_in_order_as_views_of_the_body_and_other_fields_are_ignored():
    tricky = b"\r\n--not the boundary\r\n" * 3 + b"\x00\xff"
    body, content_type = _body(files=[("files", ("a.png", b"\x89PNG one")), ("other", ("x.txt", b"ignored")),
                                      ("files", ("b.jpg", tricky))],
                               data={"note": "ignored too"})
    parts = parse_files(body, content_type, "files", 8)
    assert [(p.filename, bytes(p.data)) for p in parts] == [("a.png", b"\x89PNG one"), ("b.jpg", tricky)]
    assert isinstance(parts[0].data, memoryview) and parts[0].data.obj is body


def test_limits_and_malformed_bodies_are_4xx():
    body, content_type = _body(files=[("files", (f"{i}.png", b"x")) for i in range(5)])
    assert "at most 4" in _refused(body, content_type, 413, max_files=4)
    body, content_type = _body(files=[("other", ("x", b"x"))], data={"files": "text, not a file"})
    assert "must carry files" in _refused(body, content_type, 400)
    body, content_type = _body(files=[("other", ("x", b"x"))], data={f"f{i}": "x" for i in range(MAX_OTHER_PARTS)})
    assert "parts other than" in _refused(body, content_type, 400)
    body, content_type = _body(files=[("files", ("a.png", b"x" * 100))])
    assert "ends before the closing boundary" in _refused(body[:-40], content_type, 400)
    assert "names no boundary" in _refused(body, "multipart/form-data", 400)
    assert "malformed multipart body" in _refused(bytearray(b"garbage" * 10), content_type, 400)
