"""/v1 routes: predict from multipart uploads or base64 JSON, and describe the served model."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from service.api.deps import (
    DataPlaneDep,
    SettingsDep,
    cancelled_on_disconnect,
    check_capacity,
    get_dataplane,
    require_api_key,
)
from service.api.guard import body_budget, body_schema, guarded_route, parse_json, read_body
from service.api.hot import HotRoute
from service.config import Settings
from service.dataplane import NamedFile
from service.errors import InvalidInput
from service.model import Classifier
from service.preprocess import to_png
from service.reading import Reading
from service.schemas.rest import (
    ErrorResponse,
    ModelsResponse,
    PredictBase64Request,
    PredictResponse,
)
from service.uploads import read_multipart

router = APIRouter(
    prefix="/v1",
    tags=["v1"],
    dependencies=[Depends(require_api_key)],
    route_class=guarded_route(require_api_key, lambda s: _base64_body_limit(s)),
)


def _base64_body_limit(settings: Settings) -> int:
    # Base64 is 4/3 of the files it carries; the JSON around them is small.
    return settings.max_request_bytes * 4 // 3 + 64 * 1024


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Invalid input: bad image, bad field or bad JSON",
        401: "Missing or wrong API key",
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


def _json(content: Any) -> Response:
    return Response(orjson.dumps(content), media_type="application/json")


def render_predictions(
    filenames: list[str],
    readings: list[Reading],
    model: Classifier,
    top_k: int | None,
    return_image: bool,
) -> dict[str, Any]:
    predictions = []
    for i, (name, reading) in enumerate(zip(filenames, readings, strict=True)):
        item: dict[str, Any] = {
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
            item["digits"] = [
                {"digit": d.digit, "confidence": d.confidence, "box": list(d.box)}
                | ({"processed_image": _png64(d.glyph.pixels)} if return_image else {})
                for d in reading.digits
            ]
        predictions.append(item)
    return {"model": {"name": model.name, "version": model.version}, "predictions": predictions}


def _png64(pixels: np.ndarray) -> str:
    return base64.b64encode(to_png(pixels)).decode("ascii")


_QUERY_DOCS = [
    {
        "name": "top_k",
        "in": "query",
        "required": False,
        "description": "Also list the k most likely digits (1-10).",
        "schema": {"type": "integer", "minimum": 1, "maximum": 10},
    },
    {
        "name": "one_digit",
        "in": "query",
        "required": False,
        "description": "Read each image as exactly one digit (a form cell): never a number.",
        "schema": {"type": "boolean", "default": False},
    },
    {
        "name": "return_image",
        "in": "query",
        "required": False,
        "description": "Include the 28x28 image the model saw, as a base64 PNG.",
        "schema": {"type": "boolean", "default": False},
    },
]


def _query(request: Request) -> tuple[int | None, bool, bool]:
    """top_k, return_image and one_digit from the query string."""
    if not request.scope["query_string"]:
        return None, False, False  # the usual case: skip building QueryParams
    params = request.query_params
    top_k: int | None = None
    raw = params.get("top_k")
    if raw is not None:
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 10:
            raise InvalidInput("invalid request: top_k: must be an integer from 1 to 10")
        top_k = int(raw)
    flags = []
    for name in ("return_image", "one_digit"):
        flag = params.get(name, "false").lower()
        if flag not in _BOOLS:
            raise InvalidInput(f"invalid request: {name}: must be true or false")
        flags.append(_BOOLS[flag])
    return top_k, flags[0], flags[1]


_BOOLS = {"true": True, "1": True, "yes": True, "on": True,
          "false": False, "0": False, "no": False, "off": False}  # fmt: skip


async def predict_digits(request: Request) -> Response:
    """Read each uploaded file (multipart `files` parts): a digit, a number, or not a digit."""
    # NOTE: the hot route takes only the Request and is served by `HotRoutes` ahead of the
    # router (see create_app): FastAPI's dependency and validation layer, the router and the
    # exception middleware cost CPU on every request (measured: docs/decisions.md). OpenAPI
    # still documents the route.
    await require_api_key(request)
    plane = await get_dataplane(request)
    client = check_capacity(request)
    settings: Settings = request.app.state.settings
    top_k, return_image, one_digit = _query(request)
    with body_budget(request).hold(request, settings.max_request_bytes) as reading:
        uploads = await read_multipart(
            request.headers.get("content-type"),
            request.headers.get("content-length"),
            reading.stream(),
            plane.upload_limits,
        )
        files = [NamedFile(u.filename, u.data) for u in uploads]
        del uploads
        request.state.images = len(files)
        with cancelled_on_disconnect(request):
            readings, model = await plane.predict_files(files, client, one_digit)
        body = render_predictions([f.filename for f in files], readings, model, top_k, return_image)
    return _json(body)


router.add_api_route(
    "/predict",
    predict_digits,
    methods=["POST"],
    response_model=PredictResponse,
    responses=_errors(400, 401, 413, 415, 503, 504),
    openapi_extra={**_MULTIPART_BODY, "parameters": _QUERY_DOCS},
    summary="Predict digits from uploaded image files",
)


#: Served by `HotRoutes` ahead of the router (same handler, without the per-request layers).
hot_routes = [HotRoute("POST", "/v1/predict", predict_digits)]


@router.post(
    "/predict/base64",
    response_model=PredictResponse,
    responses=_errors(400, 401, 413, 415, 503, 504),
    summary="Predict digits from base64-encoded images in JSON",
    openapi_extra=body_schema(PredictBase64Request),
)
async def predict_digits_base64(
    request: Request, plane: DataPlaneDep, settings: SettingsDep
) -> Response:
    """Same as /v1/predict for clients that cannot send multipart: images as base64 strings."""
    # NOTE: the body is read here, not declared as a parameter: FastAPI would read and parse
    # it on the event loop before the API key is checked (see service/api/guard.py).

    def count_images(raw: Any) -> None:
        images = raw.get("images") if isinstance(raw, dict) else None
        if isinstance(images, list):
            plane.check_file_count(len(images))

    client = check_capacity(request)
    body = await parse_json(
        await read_body(request),
        PredictBase64Request,
        count_images,
        max_values=4 * settings.max_files + 64,  # a few fields per image
    )
    files = (
        await asyncio.to_thread(_decode_base64, body)
        if len(body.images) > 1
        else (_decode_base64(body))
    )
    request.state.images = len(files)
    with cancelled_on_disconnect(request):
        readings, model = await plane.predict_files(files, client, body.one_digit)
    return _json(
        render_predictions(
            [f.filename for f in files], readings, model, body.top_k, body.return_image
        )
    )


def _decode_base64(body: PredictBase64Request) -> list[NamedFile]:
    files = []
    for i, image in enumerate(body.images):
        try:
            data = base64.b64decode(image.data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"images[{i}].data is not valid base64") from None
        files.append(NamedFile(image.filename or f"image{i}", data))
    return files


@router.get("/models", response_model=ModelsResponse, responses=_errors(401, 503))
async def list_models(plane: DataPlaneDep) -> Response:
    """The served model with its card summary, the versions available, and the limits."""
    return _json(plane.models_summary())
