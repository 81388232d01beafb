"""Admin routes: exist only when MNIST_ADMIN_KEY is set, and require it."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import DataPlaneDep, require_admin_key
from service.api.guard import guarded_route
from service.schemas.rest import ErrorResponse

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin_key)],
    route_class=guarded_route(require_admin_key, lambda _: 4096),  # a version number, at most
)


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
    previous = plane.classifier
    version = body.version if body and body.version else plane.settings.model_version
    new = await plane.reload(version)
    reloaded = new is not previous
    return ReloadResponse(
        name=new.name,
        version=new.version,
        previous_version=previous.version,
        reloaded=reloaded,
        message=f"now serving v{new.version}" if reloaded else f"already serving v{new.version}",
    )
