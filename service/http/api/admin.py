"""Admin routes: exist only when MNIST_ADMIN_KEY is set, and require it."""

from __future__ import annotations

import asyncio
import os

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from service.errors import ServiceError
from service.feedback.quality import ShadowAgreement
from service.http.api.deps import DataPlaneDep, require_admin_key
from service.http.api.guard import guarded_route
from service.runtime.fleet import FleetMember
from service.serving.repository import ModelLoadError
from service.wire.schemas.rest import ErrorResponse

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
        description="The default version after the reload (the version policy applies "
        "with it pinned). Default: the pinned version, else the newest.",
    )


class ReloadIncomplete(ServiceError):
    """Some worker did not switch: it refused the version or did not answer in time."""

    status_code = 503
    code = "reload_incomplete"


class WorkerReload(BaseModel):
    pid: int
    version: str = Field(description="The version this worker serves now.")
    error: str | None = Field(None, description="Why it refused the new version.")


class ReloadResponse(BaseModel):
    name: str
    version: str
    previous_version: str
    reloaded: bool = Field(description="False when that version was already being served.")
    message: str
    versions: list[str] = Field(description="Every version served now (the version policy).")
    workers: list[WorkerReload] = Field(description="Every worker process, once it serves it.")


@router.post(
    "/reload",
    response_model=ReloadResponse,
    responses={
        401: {"model": ErrorResponse, "description": "Missing or wrong admin key"},
        409: {"model": ErrorResponse, "description": "New version refused; old one serves"},
        503: {"model": ErrorResponse, "description": "Some worker did not switch (details)"},
    },
)
async def reload_model(
    request: Request, plane: DataPlaneDep, body: ReloadRequest | None = None
) -> ReloadResponse:
    """Load a version beside the current one and switch every worker to it atomically."""
    try:
        done = await plane.repository.reload(body.version if body else None)
    except ModelLoadError as exc:
        raise ReloadRefused(f"reload refused: {exc}") from exc
    new, reloaded = done.current, done.switched
    workers = [WorkerReload(pid=os.getpid(), version=new.version)]
    fleet: FleetMember | None = request.app.state.fleet
    if fleet is not None:
        workers = await _reload_fleet(fleet, new.version)
    return ReloadResponse(
        name=new.name,
        version=new.version,
        previous_version=done.previous.version,
        reloaded=reloaded,
        message=f"now serving v{new.version}" if reloaded else f"already serving v{new.version}",
        versions=list(done.versions) or [new.version],
        workers=workers,
    )


async def _reload_fleet(fleet: FleetMember, version: str) -> list[WorkerReload]:
    """This worker serves `version`: have every other worker switch to it, or say which not."""
    try:
        reports, behind = await fleet.publish(version)
    except OSError as exc:  # the parent is gone: nobody can relay
        raise ReloadIncomplete(f"cannot reach the other workers: {exc}") from exc
    workers = [WorkerReload(pid=r.pid, version=r.version, error=r.error) for r in reports]
    failed = [w for w in workers if w.version != version or w.pid in behind]
    if failed:
        reasons = [
            f"worker {w.pid} " + ("did not answer in time" if w.pid in behind else
                                  f"serves v{w.version}: {w.error or 'a later reload won'}")
            for w in failed
        ]  # fmt: skip
        raise ReloadIncomplete(
            f"v{version} reached {len(workers) - len(failed)} of {len(workers)} workers; "
            + "; ".join(reasons),
            details=[w.model_dump() for w in workers],
        )
    return workers


class VersionFigures(BaseModel):
    version: str
    labelled: int = Field(description="Its answers in the window with feedback.")
    accuracy: float | None = Field(description="Share of those that were right.")


class ShadowResponse(BaseModel):
    served: str = Field(description="The version clients get answers from.")
    shadow: str | None = Field(description="The candidate (MNIST_SHADOW_VERSION); null: none.")
    rate: float = Field(description="Share of /v1 requests sampled for it (MNIST_SHADOW_RATE).")
    window_s: float = Field(description="The sliding window of the figures (by answer time).")
    compared: int = Field(description="Its answers stored beside the served ones.")
    agreement: float | None = Field(description="Share of those equal to the served answer.")
    labelled: int = Field(description="Of the compared files, those with feedback.")
    served_accuracy: float | None = Field(
        description="The served version's accuracy on those same files."
    )
    shadow_accuracy: float | None = Field(description="The shadow's accuracy on those files.")
    versions: list[VersionFigures] = Field(
        description="Accuracy from feedback of all the served answers in the window and of "
        "all the shadow's (different samples: compare on the same files above)."
    )


@router.get(
    "/shadow",
    response_model=ShadowResponse,
    responses={401: {"model": ErrorResponse, "description": "Missing or wrong admin key"}},
)
async def get_shadow(plane: DataPlaneDep) -> ShadowResponse:
    """The shadow version beside the served one: agreement, and accuracy once labelled."""
    shadow, recorder = plane.shadow, plane.recorder
    version = shadow.model.version if shadow is not None else None
    pair = ShadowAgreement(version or "", 0, None, 0, None, None)
    figures = []
    if recorder is not None:
        snap = await asyncio.to_thread(recorder.fresh_snapshot)
        pair = next((s for s in snap.shadows if s.version == version), pair)
        figures = [
            VersionFigures(version=q.version, labelled=q.labelled, accuracy=q.accuracy)
            for q in snap.versions
            if q.role == ("shadow" if q.version == version else "served")
        ]
    return ShadowResponse(
        served=plane.classifier.version,
        shadow=version,
        rate=shadow.rate if shadow is not None else 0.0,
        window_s=recorder.window_s if recorder is not None else 0.0,
        compared=pair.compared,
        agreement=pair.agreement,
        labelled=pair.labelled,
        served_accuracy=pair.served_accuracy,
        shadow_accuracy=pair.shadow_accuracy,
        versions=figures,
    )
