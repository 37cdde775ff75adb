"""The gateway's web page: GET / and its static files (serve/static/, plain HTML/CSS/JS, no external assets).

The page calls the same HTTP API as any client (/models, /models/{name}, /cluster, ...), so it needs
nothing the API does not already offer; with an API key set it asks for the key once per browser tab.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")


def mount_page(app: FastAPI) -> None:
    """GET / (the page) and /static/* (its script and style sheet); both open, like the files of any page."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")
