"""The gateway's one exception type; `app.py` maps it to an HTTP answer in a single handler."""

from __future__ import annotations

import re

CLIENT_CLOSED = 499
"""nginx's status for a request whose client went away before the answer: counted, never sent."""


class GatewayError(Exception):
    """An error with the HTTP status it maps to.

    `kind` is a short machine-readable label (also the `kind` label of the errors metric);
    `retry_after` (seconds) becomes a Retry-After header; `extra_headers` are sent as they are.
    """

    def __init__(self, status: int, message: str, kind: str = "error", retry_after: int | None = None,
                 extra_headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.retry_after = retry_after
        self.extra_headers = extra_headers or {}

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.message!r}, kind={self.kind!r})"

    def headers(self) -> dict[str, str]:
        retry = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
        return {**self.extra_headers, **retry}


_OBJECT_REPR = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")
_HOST_PATH = re.compile(r"(?<![\w.:/-])/(?:[^\s/'\"<>]+/)+([^\s/'\"<>]+)")


def public_text(text: str) -> str:
    """`text` fit for a client: object reprs and heap addresses dropped, absolute host paths cut to their last part.

    Messages come from many layers (PIL, onnxruntime, the file system); none of them needs to tell a
    client where the server keeps its files or what lives at which address."""
    return _HOST_PATH.sub(r"\1", _OBJECT_REPR.sub("<object>", text))


def closing(err: GatewayError) -> GatewayError:
    """`err` answered with Connection: close: for a refusal sent before the body has been read, so that the
    server reads no more of it and the client stops sending (it reads the answer when its upload fails)."""
    err.extra_headers["Connection"] = "close"
    return err


# Constructors for the recurring cases, so kinds and statuses stay consistent.
def bad_request(message: str) -> GatewayError:
    return GatewayError(400, message, "bad_request")


def unauthorized(message: str = "missing or invalid API key (send X-API-Key or Authorization: Bearer)") -> GatewayError:
    return GatewayError(401, message, "unauthorized", extra_headers={"WWW-Authenticate": 'Bearer realm="gateway"'})


def not_found(message: str) -> GatewayError:
    return GatewayError(404, message, "not_found")


def unprocessable(message: str) -> GatewayError:
    """A well-formed request asking for what cannot be (as FastAPI's own validation errors, kind "validation")."""
    return GatewayError(422, message, "validation")


def too_large(message: str) -> GatewayError:
    return GatewayError(413, message, "too_large")


def unsupported_media_type(message: str) -> GatewayError:
    return GatewayError(415, message, "unsupported_media_type")


def queue_full(message: str, retry_after: int) -> GatewayError:
    return GatewayError(429, message, "queue_full", retry_after=retry_after)


def backend_unavailable(message: str) -> GatewayError:
    return GatewayError(503, message, "backend_unavailable", retry_after=1)


def version_unavailable(message: str) -> GatewayError:
    """A model version on disk that cannot be served (it does not load): 503 with the reason, no Retry-After
    (it does not mend by itself)."""
    return GatewayError(503, message, "version_unavailable")


def backend_error(message: str) -> GatewayError:
    return GatewayError(502, message, "backend_error")


def client_gone(message: str) -> GatewayError:
    return GatewayError(CLIENT_CLOSED, message, "client_disconnected")
