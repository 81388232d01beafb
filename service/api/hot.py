"""Pure-ASGI dispatch of the hot prediction route, ahead of the router.

The handler is the same function the FastAPI router documents in OpenAPI; this only skips
the layers between the user middleware and the handler (Starlette's exception middleware,
FastAPI's exit stack, route matching and the request/response wrapper). Errors become the
same JSON bodies the app's exception handlers send.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ServiceError, service_error_response, unhandled_error_response

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class HotRoute:
    """One method + exact path served without the router. `path` is the metrics label."""

    method: str
    path: str
    endpoint: Endpoint


class HotRoutes:
    """ASGI middleware: serve the given routes directly, pass everything else on."""

    def __init__(self, app: ASGIApp, routes: list[HotRoute]) -> None:
        self.app = app
        self.routes = {(r.method, r.path): r for r in routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (
            self.routes.get((scope["method"], get_route_path(scope)))
            if scope["type"] == "http"
            else None
        )
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # what RequestContextMiddleware labels metrics with
        request = Request(scope, receive)
        try:
            response = await route.endpoint(request)
        except ClientDisconnect:
            return  # the client left mid-upload: nobody to answer, nothing went wrong here
        except ServiceError as exc:
            response = service_error_response(request, exc)
        except Exception as exc:
            response = unhandled_error_response(request, exc)
        await response(scope, receive, send)
