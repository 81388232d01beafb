"""The demo web page at / (static files shipped in the package; no CDN, no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

router = APIRouter(include_in_schema=False)

_INDEX = Path(__file__).resolve().parent.parent / "static" / "index.html"
_PROTO = Path(__file__).resolve().parents[2] / "rpc" / "inference.proto"


@router.get("/")
async def get_index() -> Response:
    """The draw-or-upload page."""
    if _INDEX.is_file():
        return FileResponse(_INDEX, media_type="text/html")
    return RedirectResponse("/docs")


@router.get("/grpc/inference.proto")
async def get_grpc_proto() -> Response:
    """The gRPC service definition, for clients that load it at run time (Node's
    @grpc/proto-loader) or generate code from it."""
    return FileResponse(_PROTO, media_type="text/plain; charset=utf-8")
