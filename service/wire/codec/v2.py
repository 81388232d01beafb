"""The Open Inference Protocol (KServe V2) codec as pure functions, shared by REST and gRPC.

A front end turns its wire request into a `V2Request` (REST: JSON plus the binary tensor
data extension; gRPC: protobuf plus raw_input_contents), then: `plan_outputs` parses the
requested outputs once, `decode_input` turns the one input into rows or image files, the
data plane runs the model, and `encode_outputs` renders the plan over the probabilities.
Nothing here touches a socket, a route or the model.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from service.errors import InvalidInput, PayloadTooLarge
from service.wire.jsonbody import loads_bounded, validated
from service.wire.schemas.v2 import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    MetadataTensor,
    ResponseOutput,
)

if TYPE_CHECKING:
    from service.serving.card import ModelCard

EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics"]
PIXELS = 28 * 28
_DTYPES: dict[str, type[np.generic]] = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "UINT8": np.uint8,
}
_TENSOR_SHAPES = ([1, 28, 28], [28, 28], [784])


# ---------------------------------------------------------------------------- request


@dataclass
class Tensor:
    """One request input: `data` holds wire values (JSON numbers, base64 strings, or bytes
    elements from gRPC), `raw` the binary form (binary extension or raw_input_contents)."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] = field(default_factory=dict)
    data: Sequence[Any] | None = None
    raw: bytes | None = None


@dataclass
class Requested:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class V2Request:
    inputs: list[Tensor]
    outputs: list[Requested] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class Limits:
    """Per-request caps: tensor rows and encoded images."""

    max_rows: int
    max_files: int

    @classmethod
    def of(cls, max_queue_size: int, max_files: int) -> Limits:
        # Half the queue: a single request may never hold more than a client's share, so a
        # client sending big tensors back to back leaves the other half to everyone else.
        return cls(max_rows=max(1, max_queue_size // 2), max_files=max_files)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary section) by the Inference-Header-Content-Length header."""
    if header_length is None:
        return body, b""
    # NOTE: str.isdigit() also accepts characters such as '²' that int() refuses.
    value = header_length.strip()
    if not (value.isascii() and value.isdigit()) or int(value) > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length {header_length!r} is not a length within "
            f"the {len(body)}-byte body"
        )
    split = int(value)
    return body[:split], body[split:]


def parse_json_request(header: bytes, binary: bytes, limits: Limits) -> V2Request:
    """A V2Request from the JSON header, the binary section assigned to its inputs in order."""
    # The largest acceptable tensor, and room for the rest of the request.
    raw = loads_bounded(header, max(limits.max_rows * PIXELS, limits.max_files) + 4096)
    _check_counts(raw, limits)
    req = validated(InferenceRequest, raw, "invalid inference request at ", "request")
    inputs = [
        Tensor(i.name, i.datatype, i.shape, dict(i.parameters or {}), i.data) for i in req.inputs
    ]
    _assign_binary(inputs, binary)
    outputs = (
        [Requested(o.name, dict(o.parameters or {})) for o in req.outputs]
        if req.outputs is not None
        else None
    )
    return V2Request(inputs, outputs, dict(req.parameters or {}), req.id)


def _check_counts(raw: Any, limits: Limits) -> None:
    """413 for a `data` list longer than any acceptable input, before pydantic builds
    millions of objects from it (the JSON parse itself is bounded by the body limit)."""
    inputs = raw.get("inputs") if isinstance(raw, dict) else None
    if not isinstance(inputs, list):
        return  # the schema check names what is wrong
    most = max(limits.max_rows * PIXELS, limits.max_files)
    for item in inputs:
        data = item.get("data") if isinstance(item, dict) else None
        if isinstance(data, list) and len(data) > most:
            raise PayloadTooLarge(
                f"input {item.get('name')!r} has {len(data)} data elements; the limit is {most}"
            )


def _assign_binary(inputs: list[Tensor], binary: bytes) -> None:
    """Give each input that declares binary_data_size its slice of the binary section."""
    offset = 0
    for item in inputs:
        size = item.parameters.get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"input {item.name!r}: binary_data_size must be an integer >= 0")
        if offset + size > len(binary):
            raise InvalidInput(
                f"input {item.name!r}: binary_data_size {size} runs past the end of the body"
            )
        item.raw = binary[offset : offset + size]
        offset += size
    if offset != len(binary):
        raise InvalidInput(f"binary section has {len(binary)} bytes but inputs declare {offset}")


def single_input(req: V2Request) -> Tensor:
    if len(req.inputs) != 1:
        raise InvalidInput(
            f"expected exactly one input ('input' or 'image'), got {len(req.inputs)}"
        )
    return req.inputs[0]


def _element_count(shape: Sequence[int]) -> int:
    if any(d < 0 for d in shape):
        raise InvalidInput(f"shape {list(shape)} has a negative dimension")
    count = 1
    for d in shape:
        count *= d
    return count


@dataclass(frozen=True)
class Rows:
    """The `input` tensor as [N,28,28] float32 `values`: the model's inputs as sent (FP32,
    FP64, FP16: normalised by the client with the card's mean and std), or pixels in [0,1]
    (UINT8 0..255 scaled), which the data plane normalises."""

    values: np.ndarray
    normalized: bool

    def __len__(self) -> int:
        return len(self.values)


def decode_input(item: Tensor, limits: Limits) -> Rows | list[bytes]:
    """`input` -> its rows; `image` -> the encoded image files."""
    if item.name == "input":
        return tensor_rows(item, limits.max_rows)
    if item.name == "image":
        return image_files(item, limits.max_files)
    raise InvalidInput(f"unknown input {item.name!r}; expected 'input' or 'image'")


def tensor_rows(item: Tensor, max_rows: int) -> Rows:
    """[N,28,28] float32 rows: normalised model inputs (FP32) or pixels in [0,1] (UINT8).

    The row cap is checked on the declared shape, before any work proportional to the data.
    """
    dtype = _DTYPES.get(item.datatype)
    if dtype is None:
        raise InvalidInput(
            f"input 'input' has datatype {item.datatype}; expected FP32 (normalised) or UINT8"
        )
    shape = list(item.shape)
    if len(shape) < 2 or shape[1:] not in _TENSOR_SHAPES:
        raise InvalidInput(
            f"input 'input' has shape {shape}; expected [N,1,28,28], [N,28,28] or [N,784]"
        )
    count = _element_count(shape)
    n = shape[0]
    if n < 1:
        raise InvalidInput("input 'input' has no rows")
    if n > max_rows:
        raise PayloadTooLarge(f"input 'input' has {n} rows; the limit is {max_rows}")
    if item.raw is not None:
        itemsize = np.dtype(dtype).itemsize
        if len(item.raw) != count * itemsize:
            raise InvalidInput(
                f"input 'input': {len(item.raw)} bytes of binary data for {count} "
                f"{item.datatype} elements (expected {count * itemsize})"
            )
        arr = np.frombuffer(item.raw, dtype=np.dtype(dtype).newbyteorder("<"))
    else:
        arr = _json_numbers(item, dtype, count)
    pixels = arr.astype(np.float32).reshape(n, 28, 28)
    if not np.isfinite(pixels).all():
        raise InvalidInput("input 'input' contains NaN or infinity")
    if item.datatype == "UINT8":
        return Rows(pixels / np.float32(255), normalized=False)
    return Rows(pixels, normalized=True)  # to the model as they came


def _json_numbers(item: Tensor, dtype: type[np.generic], count: int) -> np.ndarray:
    data = item.data
    if data is None:
        raise InvalidInput("input 'input' has neither data nor binary_data_size")
    # The length is checked before numpy touches the list: a body of millions of elements
    # must cost no more than counting them.
    if len(data) != count:
        raise InvalidInput(
            f"input 'input' has {len(data)} elements but shape {list(item.shape)} needs {count}"
        )
    try:
        if dtype is np.uint8:
            # NOTE: numpy raises OverflowError for 300 or 2**64 and wraps -1 silently on some
            # paths; an int64 detour with a range check gives one clear message for all.
            wide = np.asarray(data, dtype=np.int64)
            if wide.size and (wide.min() < 0 or wide.max() > 255):
                raise InvalidInput("input 'input': UINT8 values must be integers in 0..255")
            return wide.astype(np.uint8)
        return np.asarray(data, dtype=dtype).reshape(-1)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"input 'input' data is not a flat list of numbers: {exc}") from exc


def image_files(item: Tensor, max_files: int) -> list[bytes]:
    """The encoded image files of a BYTES `image` input, at most `max_files` of them."""
    if item.datatype != "BYTES":
        raise InvalidInput(f"input 'image' has datatype {item.datatype}; expected BYTES")
    if len(item.shape) not in (1, 2) or (len(item.shape) == 2 and item.shape[1] != 1):
        raise InvalidInput(f"input 'image' has shape {list(item.shape)}; expected [N] or [N,1]")
    count = _element_count(item.shape)
    if count < 1:
        raise InvalidInput("input 'image' has no elements")
    if count > max_files:
        raise PayloadTooLarge(f"too many images: {count}; the limit is {max_files}")
    if item.raw is not None:
        elements = deserialize_bytes(item.raw, max_files)
    else:
        if item.data is None:
            raise InvalidInput("input 'image' has neither data nor binary_data_size")
        if len(item.data) > max_files:
            raise PayloadTooLarge(f"too many images: {len(item.data)}; the limit is {max_files}")
        elements = [_element_bytes(i, v) for i, v in enumerate(item.data)]
    if len(elements) != count:
        raise InvalidInput(
            f"input 'image' has {len(elements)} elements but shape {list(item.shape)} needs {count}"
        )
    return elements


def _element_bytes(index: int, value: Any) -> bytes:
    if isinstance(value, bytes):  # gRPC bytes_contents: already raw
        return value
    if not isinstance(value, str):
        raise InvalidInput(f"input 'image' element {index} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"input 'image' element {index} is not valid base64") from exc


def deserialize_bytes(raw: bytes, max_elements: int) -> list[bytes]:
    """Split a length-prefixed BYTES tensor; refuses more than `max_elements` as it goes."""
    out: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if len(out) >= max_elements:
            raise PayloadTooLarge(f"too many BYTES elements; the limit is {max_elements}")
        if offset + 4 > len(raw):
            raise InvalidInput("BYTES tensor is truncated (incomplete length prefix)")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidInput("BYTES tensor is truncated (element runs past the end)")
        out.append(raw[offset : offset + size])
        offset += size
    return out


def serialize_bytes(values: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


# ---------------------------------------------------------------------------- outputs


#: Output name -> (datatype, row shape, probabilities [N,10] -> values). Other outputs
#: (e.g. per-image kind) register here; the plan and the encoder need no change.
def _image_only(name: str) -> Callable[[np.ndarray], np.ndarray]:
    def fail(_: np.ndarray) -> np.ndarray:
        raise InvalidInput(f"output {name!r} needs the 'image' input")

    return fail


OUTPUTS: dict[str, tuple[str, list[int], Callable[[np.ndarray], np.ndarray]]] = {
    "probabilities": ("FP32", [10], lambda p: p.astype("<f4", copy=False)),
    "label": ("INT64", [], lambda p: p.argmax(axis=1).astype("<i8")),
    # The `image` input's reading per file (see service/vision/reading.py): given by the data plane.
    "kind": ("BYTES", [], _image_only("kind")),
    "number": ("BYTES", [], _image_only("number")),
    # Per file, why it could not be read (kind "error"; empty for a file that was read).
    "error": ("BYTES", [], _image_only("error")),
}
DEFAULT_OUTPUTS = ("probabilities", "label")
#: Without `outputs`, the protocol answers every output the request can have: for the
#: `image` input that includes its reading (a number or "not a digit" is label -1).
IMAGE_DEFAULT_OUTPUTS = (*DEFAULT_OUTPUTS, "kind", "number", "error")


@dataclass(frozen=True)
class OutputSpec:
    name: str
    binary: bool
    classes: int  # classification extension: top-k as "<score>:<index>:<label>" (0 = off)


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray | list[bytes]
    binary: bool


def _flag(params: dict[str, Any], key: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"parameter {key!r} must be a boolean")
    return value


#: Requests larger than this are parsed and decoded on a worker thread, over REST and gRPC:
#: JSON parsing, validation and BYTES splitting grow with the body and would stall every
#: other request on the event loop.
OFFLOAD_BYTES = 64 * 1024


def one_digit_option(req: V2Request) -> bool:
    """The request's `one_digit` parameter (read each image as exactly one digit)."""
    value = req.parameters.get("one_digit", False)
    if not isinstance(value, bool):
        raise InvalidInput("parameter 'one_digit' must be a boolean")
    return value


def plan_outputs(req: V2Request, binary_default: bool = False) -> list[OutputSpec]:
    """Validate the requested outputs once, before any model time is spent."""
    default_binary = _flag(req.parameters, "binary_data_output", binary_default)
    defaults = (
        IMAGE_DEFAULT_OUTPUTS if any(i.name == "image" for i in req.inputs) else DEFAULT_OUTPUTS
    )
    requested = req.outputs or [Requested(name) for name in defaults]
    plan: list[OutputSpec] = []
    seen: set[str] = set()
    for out in requested:
        if out.name in seen:
            raise InvalidInput(f"output {out.name!r} is requested twice")
        seen.add(out.name)
        if out.name not in OUTPUTS:
            known = " and ".join(repr(n) for n in OUTPUTS)
            raise InvalidInput(f"unknown output {out.name!r}; this model has {known}")
        k = out.parameters.get("classification", 0)
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise InvalidInput("parameter 'classification' must be an integer >= 0")
        binary = _flag(out.parameters, "binary_data", default_binary)
        plan.append(OutputSpec(out.name, binary, min(k, 10)))
    return plan


def encode_outputs(
    plan: list[OutputSpec],
    probs: np.ndarray,
    given: dict[str, np.ndarray | list[bytes]] | None = None,
) -> list[OutputTensor]:
    """The planned outputs over probabilities [N,10]; `given` outputs (the `image` input's
    label, kind and number per file) are taken as they are."""
    if probs.shape[1] > 10:
        # An 11-class model: the tensor outputs stay a plain ten-digit classifier, as
        # service.serving.model.digit_probabilities renormalises them.
        digits = probs[:, :10]
        probs = digits / np.maximum(digits.sum(axis=1, keepdims=True), 1e-12)
    n = int(probs.shape[0])
    tensors = []
    for spec in plan:
        if given and spec.name in given and not spec.classes:
            datatype, row, _ = OUTPUTS[spec.name]
            tensors.append(
                OutputTensor(spec.name, datatype, [n, *row], given[spec.name], spec.binary)
            )
            continue
        if spec.classes:
            # Classification extension, as Triton renders it: "<score>:<index>:<label>".
            order = np.argsort(-probs, axis=1, kind="stable")[:, : spec.classes]
            scores = np.take_along_axis(probs, order, axis=1)
            strings = [
                f"{s:f}:{i}:{i}".encode()
                for row_s, row_i in zip(scores.tolist(), order.tolist(), strict=True)
                for s, i in zip(row_s, row_i, strict=True)
            ]
            tensors.append(
                OutputTensor(spec.name, "BYTES", [n, spec.classes], strings, spec.binary)
            )
            continue
        datatype, row, fn = OUTPUTS[spec.name]
        tensors.append(OutputTensor(spec.name, datatype, [n, *row], fn(probs), spec.binary))
    return tensors


def render_json(
    tensors: list[OutputTensor], model_name: str, model_version: str, request_id: str | None
) -> tuple[bytes, bytes]:
    """(JSON header, binary section) of a REST inference response."""
    outputs: list[ResponseOutput] = []
    blobs: list[bytes] = []
    for t in tensors:
        meta: ResponseOutput = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if t.binary:
            blob = tensor_bytes(t)
            meta["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif isinstance(t.values, list):
            meta["data"] = [v.decode() for v in t.values]
        else:
            meta["data"] = t.values.reshape(-1).tolist()
        outputs.append(meta)
    response: InferenceResponse = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": outputs,
    }
    if request_id is not None:
        response["id"] = request_id
    return orjson.dumps(response), b"".join(blobs)


def tensor_bytes(t: OutputTensor) -> bytes:
    """Little-endian row-major bytes (BYTES: length-prefixed elements)."""
    if isinstance(t.values, list):
        return serialize_bytes(t.values)
    return t.values.tobytes()


# ---------------------------------------------------------------------------- models


def model_metadata(card: ModelCard, versions: list[str] | None = None) -> MetadataModelResponse:
    """$metadata_model_response built from the model card; `versions`: those served (default:
    the card's)."""
    digit_labels = card.output.labels[:10]  # the tensor outputs never hold not_a_digit
    return {
        "name": card.name,
        "versions": versions or [card.version],
        "platform": card.platform,
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28],
             "parameters": {"normalization": card.input.normalization.model_dump(),
                            "also_accepts": ["[-1,28,28]", "[-1,784]", "UINT8 raw pixels"]}},
            {"name": "image", "datatype": "BYTES", "shape": [-1],
             "parameters": {"content": "encoded image files (PNG, JPEG, BMP, GIF, WebP, TIFF)"}},
        ],
        "outputs": [_output_metadata(name, digit_labels) for name in OUTPUTS],
    }  # fmt: skip


def _output_metadata(name: str, digit_labels: list[str]) -> MetadataTensor:
    datatype, row, _ = OUTPUTS[name]
    tensor: MetadataTensor = {"name": name, "datatype": datatype, "shape": [-1, *row]}
    if name == "probabilities":
        tensor["parameters"] = {"labels": digit_labels}
    return tensor
