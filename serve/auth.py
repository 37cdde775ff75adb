"""The API key (setting api_key): every route but the page's files, /healthz and /readyz needs it when one
is set, as X-API-Key or Authorization: Bearer, compared in constant time; 401 otherwise."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from serve.errors import unauthorized
from serve.settings import Settings

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="the gateway's API key, if one is set")
_bearer = HTTPBearer(auto_error=False, description="the gateway's API key as a bearer token, if one is set")


def api_key_dependencies(settings: Settings) -> list[Any]:
    """The dependencies of a protected route; none without a key, so that the OpenAPI page then shows no
    security scheme."""
    if not settings.api_key:
        return []
    expected = settings.api_key.encode()

    async def require_api_key(key: Annotated[str | None, Security(_api_key)],
                              bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> None:
        given = key or (bearer.credentials if bearer is not None else "")
        if not given or not secrets.compare_digest(given.encode(), expected):
            raise unauthorized()

    return [Depends(require_api_key)]
