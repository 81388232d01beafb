"""The one wording of a pydantic validation error, wherever it is reported."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, ValidationError

from service.errors import describe_validation


class _Inner(BaseModel):
    size: int = Field(ge=1)


class _Outer(BaseModel):
    name: str
    items: list[_Inner]


def _error(raw: object) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        _Outer.model_validate(raw)
    return info.value


def test_describe_validation_names_the_dotted_field() -> None:
    exc = _error({"name": "a", "items": [{"size": 0}]})
    assert describe_validation(exc) == "items.0.size: Input should be greater than or equal to 1"


def test_describe_validation_uses_where_for_the_whole_object() -> None:
    exc = _error([])
    assert (
        describe_validation(exc, "card") == "card: Input should be a valid dictionary or "
        "instance of _Outer"
    )
    assert describe_validation(exc).startswith("Input should be a valid dictionary")


def test_describe_validation_joins_the_first_errors() -> None:
    exc = _error({"items": [{"size": "x"}]})
    assert describe_validation(exc) == "name: Field required"
    assert describe_validation(exc, most=5) == (
        "name: Field required; items.0.size: Input should be a valid integer, unable to parse "
        "string as an integer"
    )
