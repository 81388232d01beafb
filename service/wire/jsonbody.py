"""JSON request bodies: parsed with their values bounded, validated with one error wording."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from service.errors import InvalidInput, PayloadTooLarge, describe_validation

M = TypeVar("M", bound=BaseModel)


def loads_bounded(body: bytes, max_values: int | None) -> Any:
    """Parsed JSON, refused (413) before parsing when it holds more than `max_values` values.

    Values are counted as commas, in C: the parse holds the GIL even on a thread, and a body
    of millions of tiny values (`[[],[],...]`) costs seconds and gigabytes before any check
    on the parsed result could run.
    """
    if max_values is not None and body.count(b",") > max_values:
        raise PayloadTooLarge(f"request JSON has more than {max_values} values")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None


def validated(model: type[M], raw: Any, prefix: str, default_where: str) -> M:
    """`raw` as `model`, or a 400 naming the first field that is wrong."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(prefix + describe_validation(exc, default_where)) from None
