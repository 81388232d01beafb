"""Typed results and the one exception of the client."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


class ClientError(Exception):
    """Any failure: `code` is the server's error slug (or a client-side one such as
    "connection_error"), `status` the HTTP status when there was a response, `details`
    the server's per-file errors ({"index", "filename", "error"})."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.details = details or []

    def __repr__(self) -> str:
        return f"ClientError(code={self.code!r}, status={self.status}, message={self.message!r})"


@dataclass(frozen=True)
class TopK:
    digit: int
    probability: float


@dataclass(frozen=True)
class DigitRead:
    """One digit of an answer: the digit, its confidence, and its box [x0, y0, x1, y1] in
    the uploaded image's pixels."""

    digit: int
    confidence: float
    box: tuple[int, int, int, int]

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DigitRead:
        x0, y0, x1, y1 = (int(v) for v in raw["box"])
        return cls(int(raw["digit"]), float(raw["confidence"]), (x0, y0, x1, y1))


@dataclass(frozen=True)
class Prediction:
    """The answer for one file; `kind` says which fields are set.

    - "digit": `digit`, `confidence`, `probabilities` (and `top_k` when asked), `number`.
    - "number": `number` (the digits left to right, rows joined by "\\n"), `confidence`
      (the digits' product); `digit` is None.
    - "not_a_digit": `reason`; `digit` and `confidence` are None.
    - "error": the file could not be read (the others of the request were): `code` (the
      server's slug, e.g. "invalid_image") and `error` (its message).

    `digits` lists each digit read with its box (empty for "not_a_digit"). `kind` is kept as
    the server sent it, so a kind added by a newer server does not break this client.
    """

    index: int
    filename: str
    digit: int | None
    confidence: float | None
    probabilities: tuple[float, ...] = ()
    top_k: tuple[TopK, ...] | None = None
    kind: str = "digit"
    number: str | None = None
    digits: tuple[DigitRead, ...] = ()
    reason: str | None = None
    code: str | None = None
    error: str | None = None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Prediction:
        top = raw.get("top_k")
        digit, confidence = raw.get("digit"), raw.get("confidence")
        number, reason = raw.get("number"), raw.get("reason")
        return cls(
            index=int(raw["index"]),
            filename=str(raw["filename"]),
            digit=int(digit) if digit is not None else None,
            confidence=float(confidence) if confidence is not None else None,
            probabilities=tuple(float(p) for p in raw.get("probabilities") or ()),
            top_k=tuple(TopK(int(t["digit"]), float(t["probability"])) for t in top)
            if top is not None
            else None,
            kind=str(raw.get("kind") or "digit"),
            number=str(number) if number is not None else None,
            digits=tuple(DigitRead.from_json(d) for d in raw.get("digits") or ()),
            reason=str(reason) if reason is not None else None,
            code=str(raw["code"]) if raw.get("code") is not None else None,
            error=str(raw["error"]) if raw.get("error") is not None else None,
        )


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str


@dataclass(frozen=True)
class PredictResult:
    """The model that answered and one prediction per input, in input order."""

    model: ModelRef
    predictions: list[Prediction] = field(default_factory=list)
    #: The answer's id, which `Client.feedback` names (None from a server before 1.1).
    request_id: str | None = None

    def __iter__(self) -> Iterator[Prediction]:
        return iter(self.predictions)

    def __len__(self) -> int:
        return len(self.predictions)

    def __getitem__(self, index: int) -> Prediction:
        return self.predictions[index]

    @property
    def digits(self) -> list[int | None]:
        """Each file's digit: None where it held a number or no digit (see `kind`)."""
        return [p.digit for p in self.predictions]

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PredictResult:
        model = ModelRef(str(raw["model"]["name"]), str(raw["model"]["version"]))
        request_id = raw.get("request_id")
        return cls(
            model,
            [Prediction.from_json(p) for p in raw["predictions"]],
            str(request_id) if request_id else None,
        )


#: The truth of an upload that shows no digit, as `Client.feedback` takes it.
NOT_A_DIGIT = "not_a_digit"


@dataclass(frozen=True)
class FeedbackResult:
    """What the server kept: the truth, the answer it had given (`version`, `answer`: the
    digits or "not_a_digit") and whether that answer was right."""

    request_id: str
    index: int
    truth: str
    version: str
    answer: str
    correct: bool

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FeedbackResult:
        return cls(
            str(raw["request_id"]),
            int(raw["index"]),
            str(raw["truth"]),
            str(raw["version"]),
            str(raw["answer"]),
            bool(raw["correct"]),
        )
