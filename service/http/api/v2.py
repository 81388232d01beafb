"""Open Inference Protocol (KServe V2) routes over the same DataPlane as /v1.

Supports the binary tensor data extension (Inference-Header-Content-Length) for inputs and
outputs, and the classification extension (`classification: k` on an output).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response

from service import __version__
from service.errors import PayloadTooLarge
from service.http.api.deps import (
    DataPlaneDep,
    MetricsDep,
    SettingsDep,
    cancelled_on_disconnect,
    client_key,
    require_api_key,
)
from service.http.api.guard import guarded_route
from service.http.api.ops import readiness
from service.runtime import tracing
from service.serving.dataplane import DataPlane
from service.wire.codec import triton
from service.wire.codec import v2 as codec
from service.wire.schemas.v2 import (
    InferenceErrorResponse,
    InferenceResponse,
    MetadataModelResponse,
    ModelReadyResponse,
    ServerMetadataResponse,
)

# NOTE: two routers side by side, each with the /v2 prefix, not one included in the other:
# FastAPI keeps an included router's routes as they were declared, so a route of a nested
# router without the prefix would be labelled "/models/{name}/infer" in metrics.
router = APIRouter(prefix="/v2", tags=["v2"])
protected = APIRouter(
    prefix="/v2",
    tags=["v2"],
    dependencies=[Depends(require_api_key)],
    route_class=guarded_route(require_api_key, lambda s: s.max_request_bytes),
)

HEADER_LENGTH = "inference-header-content-length"
_DTYPES = {"FP32": np.float32, "UINT8": np.uint8, "FP64": np.float64, "FP16": np.float16}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": InferenceErrorResponse, "description": "Invalid inference request"},
    401: {"model": InferenceErrorResponse, "description": "Missing or wrong API key"},
    404: {
        "model": InferenceErrorResponse,
        "description": "Unknown model (model_not_found) or a version not served "
        "(version_not_served)",
    },
    413: {"model": InferenceErrorResponse, "description": "Too many bytes or images"},
    503: {"model": InferenceErrorResponse, "description": "Not ready"},
}

ModelName = Annotated[str, Path(description="Model name, e.g. mnist-cnn")]
ModelVersion = Annotated[str, Path(description="Model version, e.g. 1")]


@router.get("", response_model=ServerMetadataResponse)
async def get_server_metadata() -> ServerMetadataResponse:
    """Server name, version and supported protocol extensions."""
    return ServerMetadataResponse(
        name="mnist-serving", version=__version__, extensions=codec.EXTENSIONS
    )


# Triton's statistics and model configuration extensions (tritonclient's
# get_inference_statistics and get_model_config). `/models/stats` is declared before
# `/models/{name}` so that it is not taken for a model called "stats".
@protected.get("/models/stats", response_model=dict[str, Any], responses=_ERRORS)
async def get_all_model_statistics(plane: DataPlaneDep, metrics: MetricsDep) -> Response:
    """Triton statistics extension: every served model version, this worker process."""
    return JSONResponse(triton.model_statistics(plane.served_models(), metrics.registry))


@protected.get("/models/{name}/stats", response_model=dict[str, Any], responses=_ERRORS)
async def get_model_statistics(
    name: ModelName, plane: DataPlaneDep, metrics: MetricsDep
) -> Response:
    """Triton statistics extension: inference counts and durations of every served version,
    this worker process."""
    plane.get_model(name)
    return JSONResponse(triton.model_statistics(plane.served_models(), metrics.registry))


@protected.get(
    "/models/{name}/versions/{version}/stats", response_model=dict[str, Any], responses=_ERRORS
)
async def get_model_version_statistics(
    name: ModelName, version: ModelVersion, plane: DataPlaneDep, metrics: MetricsDep
) -> Response:
    """Triton statistics extension for one model version."""
    clf = plane.get_model(name, version)
    return JSONResponse(triton.model_statistics([clf], metrics.registry))


@protected.get("/models/{name}/config", response_model=dict[str, Any], responses=_ERRORS)
async def get_model_config(name: ModelName, plane: DataPlaneDep, settings: SettingsDep) -> Response:
    """Triton model configuration extension, built from the model card and settings."""
    return JSONResponse(triton.model_config(plane.get_model(name), settings))


@protected.get(
    "/models/{name}/versions/{version}/config", response_model=dict[str, Any], responses=_ERRORS
)
async def get_model_version_config(
    name: ModelName, version: ModelVersion, plane: DataPlaneDep, settings: SettingsDep
) -> Response:
    """Triton model configuration extension for one model version."""
    return JSONResponse(triton.model_config(plane.get_model(name, version), settings))


@protected.get("/models/{name}", response_model=MetadataModelResponse, responses=_ERRORS)
async def get_model_metadata(name: ModelName, plane: DataPlaneDep) -> Response:
    """Model metadata built from the model card."""
    return JSONResponse(plane.model_metadata(name))


@protected.get(
    "/models/{name}/versions/{version}", response_model=MetadataModelResponse, responses=_ERRORS
)
async def get_model_version_metadata(
    name: ModelName, version: ModelVersion, plane: DataPlaneDep
) -> Response:
    """Metadata of one model version."""
    return JSONResponse(plane.model_metadata(name, version))


def _model_ready(request: Request, plane: DataPlane, name: str, version: str | None) -> Response:
    clf = plane.get_model(name, version)
    ready, _ = readiness(request)
    body: ModelReadyResponse = {"name": clf.name, "ready": ready}
    return JSONResponse(
        body,
        status_code=200 if ready else 503,
        headers=None if ready else {"Retry-After": "1"},
    )


@protected.get("/models/{name}/ready", response_model=ModelReadyResponse, responses=_ERRORS)
async def get_model_readiness(name: ModelName, request: Request, plane: DataPlaneDep) -> Response:
    """200 when this model can serve inference requests."""
    return _model_ready(request, plane, name, None)


@protected.get(
    "/models/{name}/versions/{version}/ready",
    response_model=ModelReadyResponse,
    responses=_ERRORS,
)
async def get_model_version_readiness(
    name: ModelName, version: ModelVersion, request: Request, plane: DataPlaneDep
) -> Response:
    """200 when this model version can serve inference requests."""
    return _model_ready(request, plane, name, version)


# NOTE: only the JSON form is a content type here. The binary tensor data extension sends
# the same JSON followed by raw bytes, in any content type; listing it as a second media
# type made openapi-python-client generate a client that does not import.
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "An $inference_request. Binary tensor data extension: the JSON header "
        "(its length in the Inference-Header-Content-Length header) followed by the raw "
        "tensors, each input declaring its parameters.binary_data_size.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
        },
    }
}


@protected.post(
    "/models/{name}/infer",
    response_model=InferenceResponse,
    responses=_ERRORS,
    openapi_extra=_INFER_BODY,
)
async def infer(
    name: ModelName, request: Request, plane: DataPlaneDep, settings: SettingsDep
) -> Response:
    """Run inference (JSON or binary tensor data)."""
    return await _infer(request, plane, settings.max_request_bytes, name, None)


@protected.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferenceResponse,
    responses=_ERRORS,
    openapi_extra=_INFER_BODY,
)
async def infer_version(
    name: ModelName,
    version: ModelVersion,
    request: Request,
    plane: DataPlaneDep,
    settings: SettingsDep,
) -> Response:
    """Run inference on a specific model version."""
    return await _infer(request, plane, settings.max_request_bytes, name, version)


# ---------------------------------------------------------------------------- inference

#: Bodies larger than this are parsed and decoded on a worker thread (the codec's bound).
OFFLOAD_BYTES = codec.OFFLOAD_BYTES


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isascii() and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes, header_length: str | None, limits: codec.Limits) -> codec.V2Request:
    header, binary = codec.split_body(body, header_length)
    return codec.parse_json_request(header, binary, limits)


async def _infer(
    request: Request, plane: DataPlane, limit: int, name: str, version: str | None
) -> Response:
    plane.get_model(name, version)  # 404 for another model, before the body is read
    client = client_key(request)
    plane.batcher.check_capacity(client)
    with tracing.span("receive"):
        body = await _read_body(request, limit)
        args = (body, request.headers.get(HEADER_LENGTH), plane.tensor_limits)
        large = len(body) > OFFLOAD_BYTES
        req = await asyncio.to_thread(_parse, *args) if large else _parse(*args)
    with cancelled_on_disconnect(request):
        answer = await plane.infer_v2(req, client, large, version)
    request.state.images = answer.images
    with tracing.span("encode"):
        header, blobs = codec.render_json(
            answer.tensors, answer.model.name, answer.model.version, req.id
        )
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        header + blobs,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
