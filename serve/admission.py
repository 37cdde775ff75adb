"""What a request must pass before any route sees it (pure ASGI, under the routes' own checks), and the headers
every answer carries.

- Host (setting allowed_hosts), on every path but /healthz: a Host the gateway is not reached at is 400, so
  that a page of another site whose name is re-pointed at 127.0.0.1 (DNS rebinding) cannot use a
  gateway without a key.
- API key (setting api_key), from the headers, before anything reads the body: a 300 MB upload without
  the key is a 401 after its headers. Open without it: /healthz, the page's own files (/ and /static/:
  the page asks for the key), and with open_docs /docs and /openapi.json. The routes still declare the
  key (serve/auth.py), which documents it in the OpenAPI page.
- Body: a POST (images) may send up to max_request_bytes, counted as it arrives by the routes
  (serve/images.py); any other method at most SMALL_BODY_BYTES, read here before the route runs. A
  Content-Length above the limit is 413 before a byte of the body is read.
- Every answer: X-Content-Type-Options: nosniff and X-Frame-Options: DENY (the page sets its own
  Content-Security-Policy, serve/page.py).
"""

from __future__ import annotations

from typing import Any

from serve.auth import key_matches, presented_key
from serve.errors import GatewayError, bad_request, closing, too_large, unauthorized
from serve.metrics import Metrics
from serve.responses import error_response
from serve.settings import Settings

SMALL_BODY_BYTES = 64 * 1024
"""The largest body of a request that is not a POST of images (a rename is {"name": ...} of 100 characters)."""
OPEN_PATHS = ("/healthz",)
PAGE_PREFIXES = ("/static/",)
DOCS_PATHS = ("/docs", "/openapi.json")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY")]


def host_name(value: str) -> str:
    """A Host header's name or address, lower case, without the port or IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class AdmissionMiddleware:
    """Host, API key and body size of every request, before the routes (see the module docstring)."""

    def __init__(self, app: Any, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.hosts = settings.hosts

    def open_path(self, path: str) -> bool:
        """Paths served without the key."""
        if path in OPEN_PATHS or path == "/" or path.startswith(PAGE_PREFIXES):
            return True
        return self.settings.open_docs and (path in DOCS_PATHS or path.startswith("/docs/"))

    def refusal(self, scope: dict) -> GatewayError | None:
        """Why the request is refused before its body is read (None: it may go on)."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if path not in OPEN_PATHS and self.hosts is not None and host_name(headers.get("host", "")) not in self.hosts:
            return closing(bad_request(f"host {headers.get('host', '')!r} is not served here (setting "
                                       f"allowed_hosts: {', '.join(sorted(self.hosts))})"))
        needs_key = bool(self.settings.api_key) and not self.open_path(path)
        if needs_key and not key_matches(self.settings, presented_key(headers)):
            return closing(unauthorized())
        limit = self.settings.max_request_bytes if scope["method"] == "POST" else SMALL_BODY_BYTES
        length = headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > limit:
            return closing(too_large(f"request body of {length} bytes is larger than {limit} bytes"))
        return None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        refused = self.refusal(scope)
        if refused is None and scope["method"] != "POST":
            try:
                receive = await self.small_body(receive)
            except GatewayError as err:
                refused = err
        if refused is not None:
            await error_response(refused, self.metrics)(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    async def small_body(self, receive: Any) -> Any:
        """Read a body of at most SMALL_BODY_BYTES (whatever the client said of its length; 413 beyond it);
        returns a receive that replays it to the route."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                chunks.append(message)  # the client left: the route sees that
                break
            size += len(message.get("body", b""))
            if size > SMALL_BODY_BYTES:
                raise closing(too_large(f"request body larger than {SMALL_BODY_BYTES} bytes"))
            chunks.append(message)
            if not message.get("more_body", False):
                break
        replay = iter(chunks)

        async def replayed() -> dict:
            return next(replay, None) or await receive()

        return replayed
