"""Admin routes: exist only when MNIST_ADMIN_KEY is set, and require it."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import DataPlaneDep, require_admin_key
from service.api.guard import guarded_route
from service.errors import ServiceError
from service.repository import ModelLoadError
from service.schemas.rest import ErrorResponse

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin_key)],
    route_class=guarded_route(require_admin_key, lambda _: 4096),  # a version number, at most
)


class ReloadRefused(ServiceError):
    """The requested version cannot be served; the current one goes on serving."""

    status_code = 409
    code = "reload_refused"


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str | None = Field(
        None,
        pattern=r"^[0-9]+$",
        max_length=18,
        description="Default: the pinned version, else the newest.",
    )


class ReloadResponse(BaseModel):
    name: str
    version: str
    previous_version: str
    reloaded: bool = Field(description="False when that version was already being served.")
    message: str


@router.post(
    "/reload",
    response_model=ReloadResponse,
    responses={
        401: {"model": ErrorResponse, "description": "Missing or wrong admin key"},
        409: {"model": ErrorResponse, "description": "New version refused; old one serves"},
    },
)
async def reload_model(plane: DataPlaneDep, body: ReloadRequest | None = None) -> ReloadResponse:
    """Load a version beside the current one and switch to it atomically."""
    try:
        done = await plane.repository.reload(body.version if body else None)
    except ModelLoadError as exc:
        raise ReloadRefused(f"reload refused: {exc}") from exc
    new, reloaded = done.current, done.switched
    return ReloadResponse(
        name=new.name,
        version=new.version,
        previous_version=done.previous.version,
        reloaded=reloaded,
        message=f"now serving v{new.version}" if reloaded else f"already serving v{new.version}",
    )
