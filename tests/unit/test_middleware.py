"""RequestContextMiddleware: what a request cancelled by the drain bound answers."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from service.http.middleware import RequestContextMiddleware
from service.runtime.metrics import Metrics


async def test_a_request_cancelled_at_the_drain_bound_gets_a_503_not_a_500() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise asyncio.CancelledError  # what uvicorn does to tasks left after the drain bound

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    middleware = RequestContextMiddleware(app, Metrics(), access_log=False)
    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "headers": []}
    for _ in range(2):  # the canned answer must not accumulate headers between uses
        sent.clear()
        await middleware(scope, receive, send)
        start, body = sent
        assert start["status"] == 503
        headers = dict(start["headers"])
        assert headers[b"retry-after"] == b"1"
        assert len(start["headers"]) == 5  # four of the answer, and the request id
        assert orjson.loads(body["body"])["code"] == "shutting_down"


async def test_an_unhandled_error_is_a_generic_500_with_the_request_id() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("secret internal detail")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    middleware = RequestContextMiddleware(app, Metrics(), access_log=False)
    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "query_string": b"",
             "headers": [(b"x-request-id", b"abc")]}  # fmt: skip
    await middleware(scope, receive, send)  # answered here: nothing reaches the server
    start, body = sent
    assert start["status"] == 500
    assert dict(start["headers"])[b"x-request-id"] == b"abc"
    assert orjson.loads(body["body"]) == {"error": "internal server error", "code": "internal"}
