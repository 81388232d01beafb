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
class Prediction:
    index: int
    filename: str
    digit: int
    confidence: float
    probabilities: tuple[float, ...]
    top_k: tuple[TopK, ...] | None = None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Prediction:
        top = raw.get("top_k")
        return cls(
            index=int(raw["index"]),
            filename=str(raw["filename"]),
            digit=int(raw["digit"]),
            confidence=float(raw["confidence"]),
            probabilities=tuple(float(p) for p in raw["probabilities"]),
            top_k=tuple(TopK(int(t["digit"]), float(t["probability"])) for t in top)
            if top is not None
            else None,
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

    def __iter__(self) -> Iterator[Prediction]:
        return iter(self.predictions)

    def __len__(self) -> int:
        return len(self.predictions)

    def __getitem__(self, index: int) -> Prediction:
        return self.predictions[index]

    @property
    def digits(self) -> list[int]:
        return [p.digit for p in self.predictions]

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PredictResult:
        model = ModelRef(str(raw["model"]["name"]), str(raw["model"]["version"]))
        return cls(model, [Prediction.from_json(p) for p in raw["predictions"]])
