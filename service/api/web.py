"""The demo web page at / (static files shipped in the package; no CDN, no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

router = APIRouter(include_in_schema=False)

_INDEX = Path(__file__).resolve().parent.parent / "static" / "index.html"


@router.get("/")
async def get_index() -> Response:
    """The draw-or-upload page."""
    if _INDEX.is_file():
        return FileResponse(_INDEX, media_type="text/html")
    return RedirectResponse("/docs")
