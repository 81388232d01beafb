"""Open Inference Protocol (KServe V2) routes over the same DataPlane as /v1.

Supports the binary tensor data extension (Inference-Header-Content-Length) for inputs and
outputs, and the classification extension (`classification: k` on an output).
"""

from __future__ import annotations

import base64
import binascii
import struct
from typing import Annotated, Any

import numpy as np
import orjson
import torch
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from service import __version__
from service.api.deps import (
    DataPlaneDep,
    SettingsDep,
    cancelled_on_disconnect,
    client_key,
    require_api_key,
)
from service.api.guard import guarded_route
from service.api.ops import readiness
from service.dataplane import DataPlane, NamedFile
from service.errors import InvalidInput, ModelNotFound, ModelNotReady, PayloadTooLarge
from service.model import Classifier, digit_probabilities
from service.schemas.v2 import (
    InferenceErrorResponse,
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    ModelReadyResponse,
    RequestInput,
    RequestOutput,
    ServerMetadataResponse,
)

router = APIRouter(prefix="/v2", tags=["v2"])
protected = APIRouter(
    tags=["v2"],
    dependencies=[Depends(require_api_key)],
    route_class=guarded_route(require_api_key, lambda s: s.max_request_bytes),
)

EXTENSIONS = ["binary_tensor_data", "classification"]
HEADER_LENGTH = "inference-header-content-length"
_DTYPES = {"FP32": np.float32, "UINT8": np.uint8, "FP64": np.float64, "FP16": np.float16}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": InferenceErrorResponse, "description": "Invalid inference request"},
    401: {"model": InferenceErrorResponse, "description": "Missing or wrong API key"},
    404: {"model": InferenceErrorResponse, "description": "Unknown model or version"},
    413: {"model": InferenceErrorResponse, "description": "Too many bytes or images"},
    503: {"model": InferenceErrorResponse, "description": "Not ready"},
}

ModelName = Annotated[str, Path(description="Model name, e.g. mnist-cnn")]
ModelVersion = Annotated[str, Path(description="Model version, e.g. 1")]


@router.get("", response_model=ServerMetadataResponse)
async def get_server_metadata() -> ServerMetadataResponse:
    """Server name, version and supported protocol extensions."""
    return ServerMetadataResponse(name="mnist-serving", version=__version__, extensions=EXTENSIONS)


def _check_model(plane: DataPlane, name: str, version: str | None) -> Classifier:
    clf = plane.classifier
    if name != clf.name:
        raise ModelNotFound(f"unknown model {name!r}; this server serves {clf.name!r}")
    if version is not None and version != clf.version:
        available = plane.available_versions()
        hint = "available but not loaded" if version in available else "not found"
        raise ModelNotFound(
            f"model {name!r} version {version!r} is {hint}; serving version {clf.version}"
        )
    return clf


def _model_metadata(clf: Classifier) -> dict[str, Any]:
    card = clf.card
    return {
        "name": card.name,
        "versions": [card.version],
        "platform": card.platform,
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28],
             "parameters": {"normalization": card.input.normalization.model_dump(),
                            "also_accepts": ["[-1,28,28]", "[-1,784]", "UINT8 raw pixels"]}},
            {"name": "image", "datatype": "BYTES", "shape": [-1],
             "parameters": {"content": "encoded image files (PNG, JPEG, BMP, GIF, WebP, TIFF)"}},
        ],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10],
             "parameters": {"labels": card.output.labels[:10]}},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ],
    }  # fmt: skip


@protected.get("/models/{name}", response_model=MetadataModelResponse, responses=_ERRORS)
async def get_model_metadata(name: ModelName, plane: DataPlaneDep) -> Response:
    """Model metadata built from the model card."""
    return JSONResponse(_model_metadata(_check_model(plane, name, None)))


@protected.get(
    "/models/{name}/versions/{version}", response_model=MetadataModelResponse, responses=_ERRORS
)
async def get_model_version_metadata(
    name: ModelName, version: ModelVersion, plane: DataPlaneDep
) -> Response:
    """Metadata of one model version."""
    return JSONResponse(_model_metadata(_check_model(plane, name, version)))


async def _model_ready(request: Request, name: str, version: str | None) -> Response:
    plane: DataPlane | None = request.app.state.dataplane
    if plane is None:
        raise ModelNotReady("the model is not loaded yet")
    clf = _check_model(plane, name, version)
    ready, _ = readiness(request)
    return JSONResponse(
        {"name": clf.name, "ready": ready},
        status_code=200 if ready else 503,
        headers=None if ready else {"Retry-After": "1"},
    )


@protected.get("/models/{name}/ready", response_model=ModelReadyResponse, responses=_ERRORS)
async def get_model_readiness(name: ModelName, request: Request) -> Response:
    """200 when this model can serve inference requests."""
    return await _model_ready(request, name, None)


@protected.get(
    "/models/{name}/versions/{version}/ready",
    response_model=ModelReadyResponse,
    responses=_ERRORS,
)
async def get_model_version_readiness(
    name: ModelName, version: ModelVersion, request: Request
) -> Response:
    """200 when this model version can serve inference requests."""
    return await _model_ready(request, name, version)


_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "Binary tensor data extension: JSON header of "
                "Inference-Header-Content-Length bytes followed by the raw tensors.",
            },
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


# ---------------------------------------------------------------------------- request parsing


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    binary = b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length!r} is not a length within "
                f"the {len(body)}-byte body"
            )
        split = int(header_length)
        body, binary = body[:split], body[split:]
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from exc
    try:
        return InferenceRequest.model_validate(raw), binary
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        raise InvalidInput(f"invalid inference request at {where}: {first['msg']}") from exc


def _split_binary(req: InferenceRequest, binary: bytes) -> dict[str, bytes]:
    """Assign the binary section to inputs, in order, by their binary_data_size."""
    out: dict[str, bytes] = {}
    offset = 0
    for item in req.inputs:
        size = (item.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"input {item.name!r}: binary_data_size must be an integer >= 0")
        if offset + size > len(binary):
            raise InvalidInput(
                f"input {item.name!r}: binary_data_size {size} runs past the end of the body"
            )
        out[item.name] = binary[offset : offset + size]
        offset += size
    if offset != len(binary):
        raise InvalidInput(f"binary section has {len(binary)} bytes but inputs declare {offset}")
    return out


def _element_count(shape: list[int]) -> int:
    if any(d < 0 for d in shape):
        raise InvalidInput(f"shape {shape} has a negative dimension")
    count = 1
    for d in shape:
        count *= d
    return count


def _tensor_input(item: RequestInput, raw: bytes | None, clf: Classifier, limit: int) -> np.ndarray:
    """`input` -> [N,28,28] pixels in [0,1] (FP32 is MNIST-normalised, UINT8 is raw)."""
    dtype = _DTYPES.get(item.datatype)
    if dtype is None:
        raise InvalidInput(
            f"input 'input' has datatype {item.datatype}; expected FP32 (normalised) or UINT8"
        )
    shape = item.shape
    count = _element_count(shape)
    if (
        len(shape) == 4
        and shape[1:] == [1, 28, 28]
        or len(shape) == 3
        and shape[1:] == [28, 28]
        or len(shape) == 2
        and shape[1:] == [784]
    ):
        n = shape[0]
    else:
        raise InvalidInput(
            f"input 'input' has shape {shape}; expected [N,1,28,28], [N,28,28] or [N,784]"
        )
    if n < 1:
        raise InvalidInput("input 'input' has no rows")
    if n > limit:
        raise PayloadTooLarge(f"input 'input' has {n} rows; the limit is {limit}")
    if raw is not None:
        itemsize = np.dtype(dtype).itemsize
        if len(raw) != count * itemsize:
            raise InvalidInput(
                f"input 'input': {len(raw)} bytes of binary data for {count} {item.datatype} "
                f"elements (expected {count * itemsize})"
            )
        arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    else:
        if item.data is None:
            raise InvalidInput("input 'input' has neither data nor binary_data_size")
        try:
            arr = np.asarray(item.data, dtype=dtype).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"input 'input' data is not a flat list of numbers: {exc}") from exc
        if arr.size != count:
            raise InvalidInput(
                f"input 'input' has {arr.size} elements but shape {shape} needs {count}"
            )
    arr = arr.astype(np.float32).reshape(n, 28, 28)
    if not np.isfinite(arr).all():
        raise InvalidInput("input 'input' contains NaN or infinity")
    if item.datatype == "UINT8":
        return arr / 255.0
    norm = clf.card.input.normalization
    return arr * norm.std + norm.mean  # back to pixels: the batcher normalises for the model


def _deserialize_bytes(raw: bytes) -> list[bytes]:
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput("BYTES tensor is truncated (incomplete length prefix)")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidInput("BYTES tensor is truncated (element runs past the end)")
        out.append(raw[offset : offset + size])
        offset += size
    return out


def _image_input(item: RequestInput, raw: bytes | None, limit: int) -> list[NamedFile]:
    if item.datatype != "BYTES":
        raise InvalidInput(f"input 'image' has datatype {item.datatype}; expected BYTES")
    count = _element_count(item.shape)
    if len(item.shape) not in (1, 2) or (len(item.shape) == 2 and item.shape[1] != 1):
        raise InvalidInput(f"input 'image' has shape {item.shape}; expected [N] or [N,1]")
    if raw is not None:
        elements = _deserialize_bytes(raw)
    else:
        if item.data is None:
            raise InvalidInput("input 'image' has neither data nor binary_data_size")
        elements = []
        for i, value in enumerate(item.data):
            if not isinstance(value, str):
                raise InvalidInput(f"input 'image' element {i} must be a base64 string")
            try:
                elements.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise InvalidInput(f"input 'image' element {i} is not valid base64") from exc
    if len(elements) != count:
        raise InvalidInput(
            f"input 'image' has {len(elements)} elements but shape {item.shape} needs {count}"
        )
    if count < 1:
        raise InvalidInput("input 'image' has no elements")
    if count > limit:
        raise PayloadTooLarge(f"too many images: {count}; the limit is {limit}")
    return [NamedFile(f"image[{i}]", data) for i, data in enumerate(elements)]


# ---------------------------------------------------------------------------- response


def _serialize_bytes(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def _flag(params: dict[str, Any] | None, key: str) -> bool:
    value = (params or {}).get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"parameter {key!r} must be a boolean")
    return value


def _build_outputs(
    req: InferenceRequest, probs: torch.Tensor
) -> tuple[list[dict[str, Any]], list[bytes]]:
    # The V2 outputs stay a plain ten-digit classifier whatever the model's class count.
    probs = digit_probabilities(probs)
    n = int(probs.shape[0])
    default_binary = _flag(req.parameters, "binary_data_output")
    requested = req.outputs or [RequestOutput(name="probabilities"), RequestOutput(name="label")]
    seen: set[str] = set()
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out in requested:
        params = out.parameters or {}
        if out.name in seen:
            raise InvalidInput(f"output {out.name!r} is requested twice")
        seen.add(out.name)
        binary = _flag(params, "binary_data") if "binary_data" in params else default_binary
        k = params.get("classification", 0)
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise InvalidInput("parameter 'classification' must be an integer >= 0")
        payload: np.ndarray | list[bytes]
        if out.name not in ("probabilities", "label"):
            raise InvalidInput(
                f"unknown output {out.name!r}; this model has 'probabilities' and 'label'"
            )
        if k:
            # Classification extension: top-k "<score>:<index>:<label>" strings, as Triton.
            k = min(k, 10)
            scores, indices = probs.topk(k, dim=1)
            strings = [
                f"{s:f}:{i}:{i}".encode()
                for row_s, row_i in zip(scores.tolist(), indices.tolist(), strict=True)
                for s, i in zip(row_s, row_i, strict=True)
            ]
            meta: dict[str, Any] = {"name": out.name, "datatype": "BYTES", "shape": [n, k]}
            payload = strings
        elif out.name == "probabilities":
            meta = {"name": out.name, "datatype": "FP32", "shape": [n, 10]}
            payload = probs.numpy().astype("<f4")
        else:
            meta = {"name": out.name, "datatype": "INT64", "shape": [n]}
            payload = probs.argmax(dim=1).numpy().astype("<i8")
        if binary:
            blob = _serialize_bytes(payload) if isinstance(payload, list) else payload.tobytes()
            meta["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif isinstance(payload, list):
            meta["data"] = [p.decode() for p in payload]
        else:
            meta["data"] = payload.reshape(-1).tolist()
        outputs.append(meta)
    return outputs, blobs


async def _infer(
    request: Request, plane: DataPlane, limit: int, name: str, version: str | None
) -> Response:
    clf = _check_model(plane, name, version)
    plane.batcher.check_capacity(client_key(request))  # before the body is read
    body = await _read_body(request, limit)
    req, binary = _parse_request(body, request.headers.get(HEADER_LENGTH))
    raw = _split_binary(req, binary)
    if len(req.inputs) != 1:
        raise InvalidInput(
            f"expected exactly one input ('input' or 'image'), got {len(req.inputs)}"
        )
    item = req.inputs[0]
    settings = plane.settings
    # Validate the requested outputs before spending any model time.
    _build_outputs(req, torch.zeros(1, 10))
    if item.name == "input":
        pixels = _tensor_input(item, raw.get(item.name), clf, settings.max_queue_size)
        request.state.images = len(pixels)
        with cancelled_on_disconnect(request):
            probs, model = await plane.infer(pixels, client_key(request))
    elif item.name == "image":
        files = _image_input(item, raw.get(item.name), settings.max_files)
        request.state.images = len(files)
        with cancelled_on_disconnect(request):
            _, probs, model = await plane.predict_files(files, client_key(request))
    else:
        raise InvalidInput(f"unknown input {item.name!r}; expected 'input' or 'image'")
    outputs, blobs = _build_outputs(req, probs)
    response: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model.version,
        "outputs": outputs,
    }
    if req.id is not None:
        response["id"] = req.id
    header = orjson.dumps(response)
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


router.include_router(protected)
