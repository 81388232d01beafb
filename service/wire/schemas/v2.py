"""Open Inference Protocol (KServe V2) REST objects, named as in the specification."""

from __future__ import annotations

from typing import Any, NotRequired

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12


class ServerMetadataResponse(BaseModel):
    """$metadata_server_response"""

    name: str
    version: str
    extensions: list[str]


# NOTE: the response bodies the routes build as plain dicts are TypedDicts: mypy checks the
# dicts against them and FastAPI documents them, so each shape has one definition.


class MetadataTensor(TypedDict):
    """$metadata_tensor"""

    name: str
    datatype: str
    shape: list[int]
    parameters: NotRequired[dict[str, Any]]


class MetadataModelResponse(TypedDict):
    """$metadata_model_response"""

    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: NotRequired[dict[str, Any]]


class ModelReadyResponse(TypedDict):
    name: str
    ready: bool


# NOTE: unknown request fields are ignored, as the protocol allows: the KServe SDK sends
# `model_name` in the body, for one.


class RequestInput(BaseModel):
    """$request_input"""

    model_config = ConfigDict(extra="ignore")
    name: str
    shape: list[int] = Field(max_length=8)
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    """$request_output"""

    model_config = ConfigDict(extra="ignore")
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """$inference_request"""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "example": {
                "id": "42",
                "inputs": [
                    {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["iVBORw0..."]}
                ],
                "outputs": [{"name": "label"}, {"name": "probabilities"}],
            }
        },
    )
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(TypedDict):
    """$response_output"""

    name: str
    shape: list[int]
    datatype: str
    parameters: NotRequired[dict[str, Any]]
    data: NotRequired[list[Any]]


class InferenceResponse(TypedDict):
    """$inference_response"""

    model_name: str
    model_version: NotRequired[str]
    id: NotRequired[str]
    parameters: NotRequired[dict[str, Any]]
    outputs: list[ResponseOutput]


class InferenceErrorResponse(TypedDict):
    """$inference_error_response (with our extra `code`)"""

    error: str
    code: NotRequired[str]
