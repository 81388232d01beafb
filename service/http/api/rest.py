"""/v1 routes: predict from multipart uploads or base64 JSON, and describe the served model."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from service.config import Settings
from service.errors import (
    CLIENT_CLOSED,
    InvalidInput,
    ServiceError,
    describe_validation,
    service_error_response,
)
from service.http.api.deps import (
    DataPlaneDep,
    cancelled_on_disconnect,
    check_capacity,
    get_dataplane,
    require_api_key,
)
from service.http.api.guard import (
    Limit,
    body_schema,
    guarded_route,
    parse_json,
    query_names,
    read_body,
    run_guarded,
)
from service.http.uploads import read_multipart
from service.runtime import tracing
from service.serving.dataplane import DataPlane, NamedFile
from service.serving.model import Classifier
from service.vision.preprocess import Scan, to_png
from service.vision.reading import DigitRead, Reading
from service.wire.schemas.rest import (
    DigitInNumber,
    ErrorResponse,
    ModelsResponse,
    PredictBase64Request,
    Prediction,
    PredictOptions,
    PredictResponse,
)


def _v1_route(limit: Limit) -> type[APIRoute]:
    """Every /v1 route: the API key and the body limit before the body, and strict: a query
    parameter the route does not take is a 400 naming it (not silently ignored)."""
    return guarded_route(require_api_key, limit, strict=True)


router = APIRouter(
    prefix="/v1",
    tags=["v1"],
    dependencies=[Depends(require_api_key)],
    route_class=_v1_route(lambda s: _base64_body_limit(s)),
)


def _base64_body_limit(settings: Settings) -> int:
    # Base64 is 4/3 of the files it carries; the JSON around them is small.
    return settings.max_request_bytes * 4 // 3 + 64 * 1024


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Invalid input: bad image, bad or unknown field or parameter, bad JSON",
        401: "Missing or wrong API key",
        404: "The version asked for is not served (version_not_served)",
        413: "Too many files, too many bytes, or too many pixels",
        415: "Not an image (or not multipart/form-data)",
        503: "Model not ready, shutting down, or queue full (see Retry-After)",
        504: "Request deadline passed",
    }
    return {c: {"model": ErrorResponse, "description": text[c]} for c in codes}


_MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "One or more image files (PNG, JPEG, BMP, GIF, "
                            "WebP, TIFF), each in a part named 'files'.",
                        }
                    },
                }
            }
        },
    }
}


def _json(content: Any, background: BackgroundTask | None = None) -> Response:
    return Response(orjson.dumps(content), media_type="application/json", background=background)


def render_predictions(
    filenames: list[str],
    readings: list[Reading | ServiceError],
    model: Classifier,
    options: PredictOptions,
    request_id: str = "",
) -> PredictResponse:
    """The PredictResponse body: one prediction per file, in upload order (kind "error",
    with the error's code and message, for a file that could not be read), and the request
    id that feedback on them names."""
    top_k, return_image = options.top_k, options.return_image
    predictions = []
    for i, (name, reading) in enumerate(zip(filenames, readings, strict=True)):
        if isinstance(reading, ServiceError):
            predictions.append(_failed(i, name, reading))
            continue
        item: Prediction = {
            "index": i,
            "filename": name,
            "kind": reading.kind,
            "digit": reading.digit,
            "confidence": reading.confidence,
        }
        if reading.kind == "not_a_digit":
            item["reason"] = reading.reason
        elif reading.kind == "digit":
            row = reading.digits[0].probabilities
            item["number"] = reading.number
            item["probabilities"] = row
            if top_k:
                order = sorted(range(10), key=row.__getitem__, reverse=True)[:top_k]
                item["top_k"] = [{"digit": d, "probability": row[d]} for d in order]
            if return_image:
                item["processed_image"] = _png64(reading.digits[0].glyph.pixels)
        else:
            item["number"] = reading.number
        if reading.digits:
            item["digits"] = [_digit(d, return_image) for d in reading.digits]
        predictions.append(item)
    return {
        "request_id": request_id,
        "model": {"name": model.name, "version": model.version},
        "predictions": predictions,
    }


def _failed(index: int, filename: str, exc: ServiceError) -> Prediction:
    return {"index": index, "filename": filename, "kind": "error", "digit": None,
            "confidence": None, "code": exc.code, "error": exc.message}  # fmt: skip


def _digit(d: DigitRead, return_image: bool) -> DigitInNumber:
    out: DigitInNumber = {"digit": d.digit, "confidence": d.confidence, "box": list(d.box)}
    if return_image:
        out["processed_image"] = _png64(d.glyph.pixels)
    return out


def _png64(pixels: np.ndarray) -> str:
    return base64.b64encode(to_png(pixels)).decode("ascii")


_DEFAULT_OPTIONS = PredictOptions()


async def predict_options(request: Request) -> PredictOptions:
    """The query as `PredictOptions` (the route class has refused unknown parameters).

    NOTE: FastAPI's own query-model parameter cost a large share of a single-image
    request's CPU, query or not (measured: docs/decisions.md); most requests send none.
    """
    if not request.scope["query_string"]:
        return _DEFAULT_OPTIONS
    query = request.query_params
    known = {k: query[k] for k in PredictOptions.model_fields if k in query}
    try:
        return PredictOptions.model_validate(known)
    except ValidationError as exc:
        raise InvalidInput(f"invalid request: query.{describe_validation(exc)}") from None


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI query parameters generated from the model that validates them."""
    schema = model.model_json_schema()
    return [
        {"name": name, "in": "query", "required": False, "schema": prop,
         "description": prop.get("description", "")}
        for name, prop in schema["properties"].items()
    ]  # fmt: skip


async def predict_digits(
    request: Request,
    plane: DataPlaneDep,
    options: Annotated[PredictOptions, Depends(predict_options)],
) -> Response:
    """Read each uploaded file (multipart `files` parts): a digit, a number, or not a digit."""
    # NOTE: the route class has checked the key and the declared length, and holds the body
    # budget while the body is read here, part by part, with the file limits applied as the
    # bytes arrive.
    client = check_capacity(request)
    plane.version(options.version)  # a version not served is a 404 before the body is read
    with tracing.span("receive"):
        uploads = await read_multipart(
            request.headers.get("content-type"),
            request.headers.get("content-length"),
            request.stream(),
            plane.upload_limits,
        )
    files = [NamedFile(u.filename, u.data) for u in uploads]
    del uploads
    request.state.images = len(files)
    return await _answer(request, plane, files, client, options)


async def _answer(
    request: Request,
    plane: DataPlane,
    files: list[NamedFile],
    client: str,
    options: PredictOptions,
) -> Response:
    """Read the files and render the answer; keep it for feedback, and hand the scans to the
    shadow version after the answer is sent (each only when on)."""
    shadow = plane.shadow
    scans: list[Scan | None] | None = [] if shadow is not None and shadow.sample() else None
    with cancelled_on_disconnect(request):
        readings, model = await plane.predict_files(
            files, client, options.one_digit, scans, options.version
        )
    request_id: str = request.scope["state"]["request_id"]
    with tracing.span("encode"):
        names = [f.filename for f in files]
        body = render_predictions(names, readings, model, options, request_id)
        if plane.recorder is not None:
            plane.recorder.record_readings(request_id, "served", model.version, readings)
        if scans is not None and shadow is not None:
            return _json(body, BackgroundTask(shadow.run, request_id, scans))
        return _json(body)


async def predict_lane(scope: Scope, receive: Receive, send: Send) -> None:
    """`POST /v1/predict` as a plain ASGI app: the same checks, handler and error bodies as
    the FastAPI route below, without the router, FastAPI's dependency solving and the
    middleware it adds per request (their cost per single-image request:
    docs/decisions.md). `ServingApp` sends the route's requests here whenever nothing
    overrides its dependencies; the FastAPI route documents it and serves the rest."""
    request = Request(scope, receive)
    try:
        max_bytes = request.app.state.settings.max_request_bytes
        response = await run_guarded(
            request, require_api_key, max_bytes, _predict_resolved, known_query=PREDICT_QUERY
        )
    except ServiceError as exc:
        response = service_error_response(request, exc)
    except ClientDisconnect:
        response = Response(status_code=CLIENT_CLOSED)
    await response(scope, receive, send)


async def _predict_resolved(request: Request) -> Response:
    # The route's dependencies in FastAPI's order (the key was checked by run_guarded).
    return await predict_digits(
        request, await get_dataplane(request), await predict_options(request)
    )


router.add_api_route(
    "/predict",
    predict_digits,
    methods=["POST"],
    response_model=PredictResponse,
    responses=_errors(400, 401, 404, 413, 415, 503, 504),
    openapi_extra={**_MULTIPART_BODY, "parameters": _query_parameters(PredictOptions)},
    summary="Predict digits from uploaded image files",
    # The multipart body is capped at max_request_bytes, not at the base64 routes' 4/3 of it.
    route_class_override=_v1_route(lambda s: s.max_request_bytes),
)
#: The route `predict_lane` stands in for (its label in metrics, its OpenAPI entry).
predict_route = next(
    r for r in router.routes if isinstance(r, APIRoute) and r.path == "/v1/predict"
)
#: Its query parameters, which the lane checks as the route class does.
PREDICT_QUERY = query_names(predict_route)


@router.post(
    "/predict/base64",
    response_model=PredictResponse,
    responses=_errors(400, 401, 404, 413, 415, 503, 504),
    summary="Predict digits from base64-encoded images in JSON",
    openapi_extra=body_schema(PredictBase64Request),
)
async def predict_digits_base64(request: Request, plane: DataPlaneDep) -> Response:
    """Same as /v1/predict for clients that cannot send multipart: images as base64 strings."""
    # NOTE: the body is read here, not declared as a parameter: FastAPI would read and parse
    # it on the event loop before the API key is checked (see service/http/api/guard.py).

    def count_images(raw: Any) -> None:
        images = raw.get("images") if isinstance(raw, dict) else None
        if isinstance(images, list):
            plane.check_file_count(len(images))

    client = check_capacity(request)
    with tracing.span("receive"):
        body = await parse_json(
            await read_body(request),
            PredictBase64Request,
            count_images,
            max_values=4 * plane.settings.max_files + 64,  # a few fields per image
        )
    files = (
        await asyncio.to_thread(_decode_base64, body)
        if len(body.images) > 1
        else (_decode_base64(body))
    )
    request.state.images = len(files)
    return await _answer(request, plane, files, client, body)


def _decode_base64(body: PredictBase64Request) -> list[NamedFile]:
    files = []
    for i, image in enumerate(body.images):
        text = image.data
        if text.startswith("data:"):
            # A data URL, as a browser canvas's toDataURL() gives: the base64 after the comma.
            header, _, text = text.partition(",")
            if not header.endswith(";base64"):
                raise InvalidInput(f"images[{i}].data is a data URL without ';base64'")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"images[{i}].data is not valid base64") from None
        files.append(NamedFile(image.filename or f"image{i}", data))
    return files


@router.get("/models", response_model=ModelsResponse, responses=_errors(400, 401, 503))
async def list_models(plane: DataPlaneDep) -> Response:
    """The served model with its card summary, the versions available, and the limits."""
    return _json(plane.models_summary())
