"""HotRoutes on its own: dispatch, error bodies and a client that leaves mid-upload."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from starlette.requests import Request
from starlette.responses import Response

from service.api.hot import HotRoute, HotRoutes
from service.errors import PayloadTooLarge


async def _read_body(request: Request) -> Response:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > 4:
            raise PayloadTooLarge("too big")
    return Response(str(size))


async def _inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b"inner"})


def _call(path: str, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict]:
    app = HotRoutes(_inner, [HotRoute("POST", "/hot", _read_body)])
    scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "headers": [],
             "query_string": b""}  # fmt: skip
    pending = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent, scope


def test_hot_route_is_served_and_labelled() -> None:
    sent, scope = _call("/hot", [{"type": "http.request", "body": b"abc", "more_body": False}])
    assert (sent[0]["status"], sent[1]["body"]) == (200, b"3")
    assert scope["route"].path == "/hot"


def test_other_paths_go_to_the_wrapped_app() -> None:
    sent, scope = _call("/other", [])
    assert (sent[0]["status"], sent[1]["body"]) == (404, b"inner")
    assert "route" not in scope


def test_service_error_becomes_its_json_body() -> None:
    sent, _ = _call("/hot", [{"type": "http.request", "body": b"abcdef", "more_body": False}])
    assert sent[0]["status"] == 413
    assert orjson.loads(sent[1]["body"]) == {"error": "too big", "code": "payload_too_large"}


def test_client_leaving_mid_upload_sends_nothing_and_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        sent, _ = _call(
            "/hot",
            [
                {"type": "http.request", "body": b"ab", "more_body": True},
                {"type": "http.disconnect"},
            ],
        )
    assert sent == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
