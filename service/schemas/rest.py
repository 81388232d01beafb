"""/v1 request and response bodies."""

from __future__ import annotations

from typing import Any, Literal

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


class DigitInNumber(BaseModel):
    digit: int = Field(ge=0, le=9)
    confidence: float = Field(ge=0, le=1)
    box: list[int] = Field(
        min_length=4, max_length=4, description="[x0, y0, x1, y1] in the uploaded image's pixels."
    )
    processed_image: str | None = None


class Prediction(BaseModel):
    index: int
    filename: str
    kind: Literal["digit", "number", "not_a_digit"] = Field(
        description="A single digit, a whole number (several digits), or nothing to read."
    )
    digit: int | None = Field(ge=0, le=9, description="The digit; null unless kind is digit.")
    confidence: float | None = Field(
        ge=0, le=1, description="Chance the answer is right (a number's: its digits' product)."
    )
    reason: str | None = Field(None, description="Why it is not a digit (kind not_a_digit).")
    number: str | None = Field(
        None, description="The digits left to right; rows top to bottom separated by newlines."
    )
    digits: list[DigitInNumber] | None = Field(
        None, description="Each digit read, with its box (kinds digit and number)."
    )
    probabilities: list[float] | None = Field(
        None, min_length=10, max_length=11, description="Per class (kind digit only)."
    )
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
                        "kind": "digit",
                        "digit": 7,
                        "confidence": 0.9993,
                        "number": "7",
                        "digits": [{"digit": 7, "confidence": 0.9993, "box": [31, 12, 88, 110]}],
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


class PredictOptions(BaseModel):
    """How to read and answer: the query of /v1/predict, the same fields in /v1/predict/base64."""

    top_k: int | None = Field(
        None, ge=1, le=10, description="Also list the k most likely digits (1-10)."
    )
    one_digit: bool = Field(
        False, description="Read each image as exactly one digit (a form cell): never a number."
    )
    return_image: bool = Field(
        False, description="Include the 28x28 image the model saw, as a base64 PNG."
    )


class PredictBase64Request(PredictOptions):
    """JSON alternative to multipart for clients that cannot send files."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"images": [{"data": "iVBORw0KGgo...", "filename": "seven.png"}]}
        },
    )
    images: list[Base64Image] = Field(min_length=1)


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
