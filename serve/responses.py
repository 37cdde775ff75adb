"""How the gateway writes answers: JSON through orjson when it is installed (numpy arrays serialised
natively), else the standard library; errors in one format, {"error": {"status", "kind", "message"}}."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse, Response

from serve.errors import GatewayError, public_text
from serve.metrics import Metrics

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is optional
    orjson = None


class FastJSONResponse(JSONResponse):
    """JSON via orjson when installed (numpy arrays serialised natively), else the standard library."""

    def render(self, content: Any) -> bytes:
        if orjson is not None:
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
        return json.dumps(content, default=_to_list, separators=(",", ":")).encode()


def _to_list(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def error_response(err: GatewayError, metrics: Metrics | None) -> Response:
    """The answer to a GatewayError (counted by kind in /metrics), the message fit for a client."""
    if metrics is not None:
        metrics.errors.labels(err.kind).inc()
    body = {"error": {"status": err.status, "kind": err.kind, "message": public_text(err.message)}}
    return FastJSONResponse(body, status_code=err.status, headers=err.headers())
