"""/v1 request and response bodies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    index: int = Field(description="Position of the file in the request, from 0.")
    filename: str
    error: str


class ErrorResponse(BaseModel):
    """Every error: a message, a stable code, and per-file details where files failed."""

    error: str
    code: str
    details: list[ErrorDetail] | None = None

    model_config = ConfigDict(
        json_schema_extra={"example": {"error": "empty file", "code": "invalid_image"}}
    )


class ModelRef(BaseModel):
    name: str
    version: str


class TopK(BaseModel):
    digit: int
    probability: float


class Prediction(BaseModel):
    index: int
    filename: str
    digit: int = Field(ge=0, le=9)
    confidence: float = Field(ge=0, le=1)
    probabilities: list[float] = Field(min_length=10, max_length=10)
    top_k: list[TopK] | None = None
    processed_image: str | None = Field(
        None, description="Base64 PNG of the 28x28 image the model saw (return_image=true)."
    )


class PredictResponse(BaseModel):
    model: ModelRef
    predictions: list[Prediction]

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "model": {"name": "mnist-cnn", "version": "1"},
                "predictions": [
                    {
                        "index": 0,
                        "filename": "seven.png",
                        "digit": 7,
                        "confidence": 0.9993,
                        "probabilities": [0.0, 0.0, 0.0002, 0.0001, 0.0, 0.0, 0.0, 0.9993,
                                          0.0, 0.0004],
                    }
                ],
            }
        }
    )  # fmt: skip


class Base64Image(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: str = Field(description="The image file, base64-encoded (standard alphabet).")
    filename: str | None = Field(None, max_length=255)


class PredictBase64Request(BaseModel):
    """JSON alternative to multipart for clients that cannot send files."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"images": [{"data": "iVBORw0KGgo...", "filename": "seven.png"}]}
        },
    )
    images: list[Base64Image] = Field(min_length=1)
    top_k: int | None = Field(None, ge=1, le=10)
    return_image: bool = False


class ModelSummary(BaseModel):
    name: str
    version: str
    device: str
    platform: str
    accuracy: float | None
    parameters: int | None
    mflops: float | None
    input: dict[str, Any]
    output: dict[str, Any]
    created_at: str
    sha256: str


class ModelsResponse(BaseModel):
    served: ModelSummary
    available_versions: list[str]
    limits: dict[str, Any]
    batching: dict[str, Any]


class HealthResponse(BaseModel):
    live: bool | None = None
    ready: bool | None = None
    reason: str | None = None
