"""The API key (setting api_key): every route but /healthz and the page's files needs it when one is set
(with open_docs, /docs and /openapi.json neither), as X-API-Key or Authorization: Bearer, compared in
constant time; 401 otherwise. serve/admission.py checks it before a request's body is read; the routes
declare it too, which documents it in the OpenAPI page."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from serve.errors import unauthorized
from serve.settings import Settings

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="the gateway's API key, if one is set")
_bearer = HTTPBearer(auto_error=False, description="the gateway's API key as a bearer token, if one is set")


def presented_key(headers: dict[str, str]) -> str:
    """The key a request presents: X-API-Key, else an Authorization: Bearer token ("" for none); header names
    in lower case."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return headers.get("x-api-key") or (token.strip() if scheme.lower() == "bearer" else "")


def key_matches(settings: Settings, given: str) -> bool:
    """Whether `given` is the gateway's API key (constant time)."""
    return bool(given) and secrets.compare_digest(given.encode(), settings.api_key.encode())


def api_key_dependencies(settings: Settings) -> list[Any]:
    """The dependencies of a protected route; none without a key, so that the OpenAPI page then shows no
    security scheme."""
    if not settings.api_key:
        return []

    async def require_api_key(key: Annotated[str | None, Security(_api_key)],
                              bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> None:
        if not key_matches(settings, key or (bearer.credentials if bearer is not None else "")):
            raise unauthorized()

    return [Depends(require_api_key)]
