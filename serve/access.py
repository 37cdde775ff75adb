r"""Request ids and access log lines (text or JSON), and the gateway's log configuration.

Every request gets an id: the client's `X-Request-ID` when it is a sane token (letters, digits and
`._:-`, at most 128 characters), else a new one; it is echoed in the response's X-Request-ID, kept in
`scope["state"]["request_id"]` for the endpoints, and written in the request's access log line:

    text: 127.0.0.1:51234 "POST /cluster?model=digits" 200 12.3 ms rid=4f1c...
    json: {"event": "access", "client": "127.0.0.1:51234", "method": "POST", "path": "/cluster", ...}

What a client sent is written escaped: in text lines every character that is not printable (a line
break from `%0a`, an ESC from `%1b`, a right-to-left override) as `\n`, `\x1b`, `\u202e`, and `"` and `\`
inside the quoted request as `\"` and `\\`, so that a request can neither forge a log line nor drive the
terminal that shows the log; JSON lines escape them as JSON does.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any

REQUEST_ID_HEADER = "x-request-id"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_log = logging.getLogger("serve.access")


def printable(text: str) -> str:
    """`text` with every character that is not printable written as its escape (\\n, \\x1b, \\u202e)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def quoted_field(text: str) -> str:
    """`text` for a double-quoted field of a text log line: printable, its `\\` and `"` escaped."""
    return printable(text.replace("\\", "\\\\").replace('"', '\\"'))


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID if it is a sane token, else a new random one (32 hex digits)."""
    for key, value in headers:
        if key.lower() == REQUEST_ID_HEADER.encode():
            given = value.decode("latin-1")
            if _SANE_ID.match(given):
                return given
    return uuid.uuid4().hex


class AccessLogMiddleware:
    """Pure ASGI: assigns the request id, echoes it, logs one line per request when `enabled`."""

    def __init__(self, app: Any, enabled: bool = True, json_lines: bool = False) -> None:
        self.app = app
        self.enabled = enabled
        self.json_lines = json_lines

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope.get("headers", []))
        scope.setdefault("state", {})["request_id"] = rid
        status, began = 500, time.perf_counter()

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER.encode(), rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.enabled:
                self.log(scope, status, (time.perf_counter() - began) * 1000, rid)

    def log(self, scope: dict, status: int, ms: float, rid: str) -> None:
        client = scope.get("client")
        where = f"{client[0]}:{client[1]}" if client else "-"
        query = scope.get("query_string", b"").decode("latin-1")
        if self.json_lines:
            access_log.info(json.dumps({"event": "access", "client": where, "method": scope["method"],
                                        "path": scope["path"], "query": query, "status": status,
                                        "duration_ms": round(ms, 2), "request_id": rid}))
        else:
            target = scope["path"] + (f"?{query}" if query else "")
            access_log.info('%s "%s %s" %d %.1f ms rid=%s', where, quoted_field(scope["method"]), quoted_field(target),
                            status, ms, rid)


class TextFormatter(logging.Formatter):
    """Log records as text lines whose message has no character that is not printable (tracebacks, added
    after the message, keep their lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        escaped = logging.makeLogRecord(record.__dict__)
        escaped.message = printable(record.message)
        return super().formatMessage(escaped)


class JSONFormatter(logging.Formatter):
    """Log records as one JSON object per line (access lines are JSON already: passed through)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == access_log.name and message.startswith("{"):
            return message
        data = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                "message": message}
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data)


def configure_logging(level: str, log_format: str) -> None:
    """The gateway's own loggers ("serve", "serve.access") to stderr, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if log_format == "json" else
                         TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("serve")
    logger.handlers[:] = [handler]
    logger.setLevel(getattr(logging, level.upper(), logging.DEBUG))  # uvicorn also has "trace"
    logger.propagate = False
