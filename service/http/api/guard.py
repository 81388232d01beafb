"""Checks that run before FastAPI reads a request body: the caller's key and the body's size.

FastAPI reads and parses a route's body before it solves the route's dependencies, so a
dependency alone would check the key only after a 300 MB body had been buffered. The route
class below runs the same checks first, and counts the body as it streams in, so an
unauthenticated or oversized request costs no more than its headers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import unquote_plus

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import Message

from service.config import Settings
from service.errors import InvalidInput, Overloaded, PayloadTooLarge
from service.serving.quota import Quota
from service.wire.jsonbody import loads_bounded, validated

#: Unknown names quoted in one error, at most, each cut to `_NAME_CHARS`.
_NAMES_SHOWN = 5
_NAME_CHARS = 40

M = TypeVar("M", bound=BaseModel)
Check = Callable[[Request], Awaitable[None]]
Limit = Callable[[Settings], int]

#: Bodies up to this size are parsed on the event loop; bigger ones on a thread, so that no
#: request can hold the loop for a time proportional to what it sends.
INLINE_PARSE_BYTES = 64 * 1024


class BodyBudget:
    """Bytes of request bodies one worker holds at once, from the first byte read until the
    answer is sent: the memory that concurrent uploads take, bounded.

    A request with a Content-Length reserves it before anything is read; a streamed
    (chunked) one reserves each chunk as it arrives. Past the budget it is a 503. A request
    alone always passes: its own size limit bounds it.
    """

    def __init__(self, total_bytes: int) -> None:
        self.total = total_bytes
        self.used = 0

    def _take(self, nbytes: int, held: int) -> None:
        if self.used > held and self.used + nbytes > self.total:
            raise Overloaded(
                f"the server is receiving {self.used >> 20} MiB of uploads; retry shortly"
            )
        self.used += nbytes

    @contextlib.contextmanager
    def hold(self, request: Request, max_bytes: int) -> Iterator[Request]:
        """Reserve the request's body for the block; yields the request to read it from.

        A declared length over `max_bytes` reserves `max_bytes`: the size check then refuses
        it with 413, which says more than a 503.
        """
        declared = request.headers.get("content-length")
        held = 0
        if declared is not None and declared.isascii() and declared.isdigit():
            held = min(int(declared), max_bytes)
            self._take(held, 0)
            reading = request
        else:
            receive = request.receive

            async def counted() -> Message:
                nonlocal held
                message = await receive()
                size = len(message.get("body", b""))
                self._take(size, held)
                held += size
                return message

            reading = Request(request.scope, counted)
        try:
            yield reading
        finally:
            self.used -= held


def body_budget(request: Request) -> BodyBudget:
    budget: BodyBudget = request.app.state.body_budget
    return budget


def guarded_route(check: Check, limit: Limit, strict: bool = False) -> type[APIRoute]:
    """An APIRoute class that runs `check` and the body limit before the route's handler;
    `strict`: and refuses query parameters the route does not take (`query_names`)."""

    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            reads_body = self.body_field is not None
            known = query_names(self) if strict else None

            async def guarded(request: Request) -> Response:
                max_bytes = limit(request.app.state.settings)
                return await run_guarded(request, check, max_bytes, handler, reads_body, known)

            return guarded

    return GuardedRoute


def query_names(route: APIRoute) -> frozenset[str]:
    """The query parameters `route` takes: those FastAPI solves for it and those its OpenAPI
    entry declares (for a route that reads its query itself), so the document and the check
    cannot disagree."""
    names: set[str] = set()
    pending: list[Dependant] = [route.dependant]
    while pending:
        dependant = pending.pop()
        names.update(p.alias for p in dependant.query_params)
        pending.extend(dependant.dependencies)
    declared = (route.openapi_extra or {}).get("parameters", [])
    names.update(p["name"] for p in declared if p.get("in") == "query")
    return frozenset(names)


def refuse_unknown_query(request: Request, known: frozenset[str]) -> None:
    """400 naming the query parameters not in `known`: a misspelt option must not be
    silently ignored. A request without a query costs one lookup."""
    raw: bytes = request.scope["query_string"]
    if not raw:
        return
    # NOTE: the names alone, from the raw string: parsing the whole query here would be done
    # twice per request (the route parses its values); the names decode as Starlette's do.
    names = (part.partition(b"=")[0] for part in raw.split(b"&") if part)
    decoded = (
        unquote_plus(n.decode("latin-1")) if b"%" in n or b"+" in n else n.decode("latin-1")
        for n in names
    )
    unknown = [k for k in dict.fromkeys(decoded) if k not in known]
    if unknown:
        shown = ", ".join(k[:_NAME_CHARS] for k in unknown[:_NAMES_SHOWN])
        plural = "s" if len(unknown) > 1 else ""
        raise InvalidInput(f"unknown query parameter{plural}: {shown}")


async def run_guarded(
    request: Request,
    check: Check,
    max_bytes: int,
    handler: Callable[[Request], Coroutine[Any, Any, Response]],
    reads_body: bool = False,
    known_query: frozenset[str] | None = None,
) -> Response:
    """`check` (the API key), the query against `known_query` (when given), the declared
    length against `max_bytes` and the body budget, all before any byte of the body is
    read; then `handler` with the limited request."""
    await check(request)
    if known_query is not None:
        refuse_unknown_query(request, known_query)
    # A key with request limits (set by the check: service/http/api/deps.py).
    key = request.scope["state"].get("limited")
    if key is not None:
        quota: Quota = request.app.state.quota
        if quota.enter(key):
            try:
                return await _read_and_handle(request, max_bytes, handler, reads_body)
            finally:
                quota.leave(key)
    return await _read_and_handle(request, max_bytes, handler, reads_body)


async def _read_and_handle(
    request: Request,
    max_bytes: int,
    handler: Callable[[Request], Coroutine[Any, Any, Response]],
    reads_body: bool,
) -> Response:
    limited = _limited(request, max_bytes)
    if limited is request:  # no body
        return await handler(request)
    with body_budget(request).hold(limited, max_bytes) as limited:
        if reads_body:
            # FastAPI turns any error while it reads a body into a 400: read it here
            # first, so that going over the limit stays a 413.
            body = await read_body(limited)
            limited = _replaying(request, body)
        return await handler(limited)


def _limited(request: Request, max_bytes: int) -> Request:
    """The request with its declared length checked now and its streamed length as it comes."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return request
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isascii() or not declared.isdigit()):
        raise InvalidInput("Content-Length must be a decimal number")
    if declared is not None and int(declared) > max_bytes:
        raise too_large(max_bytes)
    receive = request.receive
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise too_large(max_bytes)
        return message

    return Request(request.scope, counted)


def _replaying(request: Request, body: bytes) -> Request:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await request.receive()  # after the body: only a disconnect can come
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


def too_large(max_bytes: int) -> PayloadTooLarge:
    # Connection: close, so the rest of an unread body is not read into the next request.
    return PayloadTooLarge(
        f"request body exceeds {max_bytes} bytes", headers={"Connection": "close"}
    )


#: Request bodies that routes read themselves (see `parse_json`); `create_app` adds their
#: schemas to the OpenAPI components, where the routes' `openapi_extra` refers to them.
BODY_MODELS: list[type[BaseModel]] = []


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI `requestBody` for a JSON body read by the route itself."""
    if model not in BODY_MODELS:
        BODY_MODELS.append(model)
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def add_body_schemas(openapi: dict[str, Any]) -> dict[str, Any]:
    """Put the schemas of `BODY_MODELS` (and the models they use) into `openapi`."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    for model in BODY_MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return openapi


async def read_body(request: Request) -> bytes:
    """The whole body (its size was limited by the route class)."""
    chunks = [chunk async for chunk in request.stream()]
    return b"".join(chunks)


async def parse_json(
    body: bytes,
    model: type[M],
    check: Callable[[Any], None] | None = None,
    max_values: int | None = None,
) -> M:
    """Validate a JSON body as `model`, off the event loop when it is big.

    `max_values` bounds the values (counted as commas, before parsing: the parse holds the
    GIL even on a thread, and millions of tiny values cost seconds and gigabytes). `check`
    sees the parsed JSON before pydantic builds objects from it.
    """
    if len(body) <= INLINE_PARSE_BYTES:
        return _parse(body, model, check, max_values)
    return await asyncio.to_thread(_parse, body, model, check, max_values)


def _parse(
    body: bytes, model: type[M], check: Callable[[Any], None] | None, max_values: int | None
) -> M:
    raw = loads_bounded(body, max_values)
    if check is not None:
        check(raw)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        unknown = [
            ".".join(str(p) for p in e["loc"])
            for e in exc.errors()
            if e["type"] == "extra_forbidden"
        ]
        if unknown:
            shown = ", ".join(u[:_NAME_CHARS] for u in unknown[:_NAMES_SHOWN])
            plural = "s" if len(unknown) > 1 else ""
            raise InvalidInput(f"unknown body field{plural}: {shown}") from None
    return validated(model, raw, "invalid request: ", "body")
