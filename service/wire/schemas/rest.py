"""/v1 request and response bodies."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, NotRequired

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    field_validator,
    with_config,
)
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

# NOTE: the response bodies below are TypedDicts: the routes build them as plain dicts (no
# model objects on the hot path) and mypy checks every key and value against these
# definitions, which FastAPI also turns into the OpenAPI schemas. One definition each.


class ErrorDetail(TypedDict):
    index: Annotated[int, Field(description="Position of the file in the request, from 0.")]
    filename: str
    error: str


@with_config(
    ConfigDict(json_schema_extra={"example": {"error": "empty file", "code": "invalid_image"}})
)
class ErrorResponse(TypedDict):
    """Every error: a message, a stable code, and per-file details where files failed."""

    error: str
    code: str
    details: NotRequired[
        Annotated[
            list[ErrorDetail | dict[str, Any]],
            Field(description="The files that failed; for a reload, each worker's outcome."),
        ]
    ]


class ModelRef(TypedDict):
    name: str
    version: str


class TopK(TypedDict):
    digit: int
    probability: float


class DigitInNumber(TypedDict):
    digit: Annotated[int, Field(ge=0, le=9)]
    confidence: Annotated[float, Field(ge=0, le=1)]
    box: Annotated[
        list[int],
        Field(
            min_length=4,
            max_length=4,
            description="[x0, y0, x1, y1] in the uploaded image's pixels.",
        ),
    ]
    processed_image: NotRequired[str]


class Prediction(TypedDict):
    index: int
    filename: str
    kind: Annotated[
        Literal["digit", "number", "not_a_digit", "error"],
        Field(
            description="A single digit, a whole number (several digits), nothing to read, or "
            "a file that could not be read (error: its code and message; the other files of "
            "the request are still read)."
        ),
    ]
    digit: Annotated[
        int | None, Field(ge=0, le=9, description="The digit; null unless kind is digit.")
    ]
    confidence: Annotated[
        float | None,
        Field(
            ge=0, le=1, description="Chance the answer is right (a number's: its digits' product)."
        ),
    ]
    reason: NotRequired[
        Annotated[str | None, Field(description="Why it is not a digit (kind not_a_digit).")]
    ]
    number: NotRequired[
        Annotated[
            str | None,
            Field(
                description="The digits left to right; rows top to bottom separated by newlines."
            ),
        ]
    ]
    digits: NotRequired[
        Annotated[
            list[DigitInNumber],
            Field(description="Each digit read, with its box (kinds digit and number)."),
        ]
    ]
    probabilities: NotRequired[
        Annotated[
            list[float],
            Field(min_length=10, max_length=11, description="Per class (kind digit only)."),
        ]
    ]
    top_k: NotRequired[list[TopK]]
    code: NotRequired[
        Annotated[str, Field(description="Why the file was not read (kind error), e.g. "
                                         "invalid_image, unsupported_media_type.")]
    ]  # fmt: skip
    error: NotRequired[
        Annotated[str, Field(description="The message for a file not read (kind error).")]
    ]
    processed_image: NotRequired[
        Annotated[
            str,
            Field(description="Base64 PNG of the 28x28 image the model saw (return_image=true)."),
        ]
    ]


@with_config(
    ConfigDict(
        json_schema_extra={
            "example": {
                "request_id": "5f0c3a8e9d2b4c7a8e1f6b3d2c9a0e4f",
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
    )
)  # fmt: skip
class PredictResponse(TypedDict):
    request_id: Annotated[
        str,
        Field(
            description="This answer's id (also the X-Request-ID header): POST /v1/feedback "
            "names it, with a prediction's index, to give the truth."
        ),
    ]
    model: ModelRef
    predictions: list[Prediction]


class Base64Image(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: str = Field(
        description="The image file, base64-encoded (standard alphabet), or a base64 data URL "
        "(data:image/png;base64,...) as a canvas gives."
    )
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
    version: str | None = Field(
        None,
        pattern=r"^[0-9]{1,18}$",
        description="The model version to answer with, one of those served (GET /v1/models); "
        "default: the default version. Another is a 404 version_not_served.",
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


class ModelSummary(TypedDict):
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


class Limits(TypedDict):
    max_files: int
    max_file_bytes: int
    max_request_bytes: int
    max_image_pixels: int
    max_image_frames: int
    request_timeout_s: float


class Batching(TypedDict):
    enabled: bool
    max_batch_size: int
    max_batch_wait_ms: float
    max_queue_size: int


class VersionState(TypedDict):
    version: str
    state: Annotated[
        Literal["ready", "available"],
        Field(description="ready: loaded and served; available: on disk, not in the policy."),
    ]
    default: Annotated[bool, Field(description="Answers requests that name no version.")]


class ModelsResponse(TypedDict):
    version_policy: Annotated[str, Field(description="latest:N, all or specific:V,...")]
    versions: list[VersionState]
    served: Annotated[ModelSummary, Field(description="The default version.")]
    available_versions: list[str]
    limits: Limits
    batching: Batching


class HealthResponse(TypedDict, total=False):
    live: bool
    ready: bool
    reason: str


#: Truth as a number: the digits, rows of a multi-line number joined by newlines.
_NUMBER = re.compile(r"[0-9]+(\n[0-9]+)*")


class FeedbackRequest(BaseModel):
    """The truth about one answer: which (request id, index) and what the file really shows."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"request_id": "5f0c3a8e9d2b4c7a8e1f6b3d2c9a0e4f", "index": 0, "truth": 7},
                {"request_id": "5f0c3a8e9d2b4c7a8e1f6b3d2c9a0e4f", "index": 1, "truth": "1204"},
                {"request_id": "5f0c3a8e9d2b4c7a8e1f6b3d2c9a0e4f", "truth": "not_a_digit"},
            ]
        },
    )
    request_id: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[\x20-\x7e]+$",
        description="The answer's request_id (or X-Request-ID header).",
    )
    index: int = Field(0, ge=0, description="The prediction's index in that answer.")
    truth: StrictInt | StrictStr = Field(
        description='The digit (0-9), a number as a string of digits (rows joined by "\\n"), '
        'or "not_a_digit".'
    )

    @field_validator("truth")
    @classmethod
    def _known_truth(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if not 0 <= value <= 9:
                raise ValueError("a digit is 0 to 9; give a number as a string of digits")
            return value
        if value != "not_a_digit" and (len(value) > 1024 or not _NUMBER.fullmatch(value)):
            raise ValueError('must be a digit, a string of digits, or "not_a_digit"')
        return value

    def truth_text(self) -> str:
        """The truth as stored: the digits, or "not_a_digit" (the answers' encoding)."""
        return str(self.truth)


class FeedbackResponse(TypedDict):
    request_id: str
    index: int
    truth: str
    version: Annotated[str, Field(description="The model version that gave the answer.")]
    answer: Annotated[str, Field(description='What it answered: digits or "not_a_digit".')]
    correct: bool
