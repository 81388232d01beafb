"""One error hierarchy with the HTTP status on the class, and the handlers that render it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.wire.schemas.rest import ErrorDetail, ErrorResponse

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of every error a client can see; renders as {"error", "code"[, "details"]}."""

    status_code = 500
    code = "internal"

    def __init__(
        self,
        message: str,
        *,
        details: list[ErrorDetail | dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code}, message={self.message!r})"

    def body(self) -> ErrorResponse:
        out: ErrorResponse = {"error": self.message, "code": self.code}
        if self.details:
            out["details"] = self.details
        return out


class InvalidInput(ServiceError):
    status_code = 400
    code = "invalid_input"


class InvalidImage(InvalidInput):
    code = "invalid_image"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        # RFC 9110 section 11.6.1: a 401 names the scheme the client should use.
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="mnist-serving"'})


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class VersionNotServed(ModelNotFound):
    """A version the version policy does not serve (on disk or not): the same code on /v1,
    V2 REST and gRPC (NOT_FOUND)."""

    code = "version_not_served"


class ModelNotReady(ServiceError):
    status_code = 503
    code = "model_not_ready"

    def __init__(self, message: str = "the model is not ready") -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class Overloaded(ServiceError):
    status_code = 503
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class RateLimited(ServiceError):
    """Over one of the caller's key limits (service/serving/quota.py)."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class ShuttingDown(ServiceError):
    status_code = 503
    code = "shutting_down"

    def __init__(self, message: str = "server is shutting down") -> None:
        super().__init__(message, headers={"Retry-After": "1", "Connection": "close"})


class InferenceTimeout(ServiceError):
    status_code = 504
    code = "timeout"


class InferenceFailed(ServiceError):
    code = "inference_failed"


def _error_response(exc: ServiceError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


def service_error_response(request: Request, exc: ServiceError) -> JSONResponse:
    """The JSON error response for a ServiceError, logged at a level that fits its status."""
    if exc.status_code >= 500 and not isinstance(exc, Overloaded | ModelNotReady | ShuttingDown):
        logger.error("%s %s failed: %r", request.method, request.url.path, exc, exc_info=exc)
    else:
        logger.info("%s %s -> %d %s", request.method, request.url.path, exc.status_code, exc.code)
    return _error_response(exc)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return service_error_response(request, exc)


class _Validation(Protocol):
    def errors(self) -> Sequence[Any]: ...


def describe_validation(exc: _Validation, where: str = "", most: int = 1) -> str:
    """'<field>: <what is wrong>' for the first `most` errors of a pydantic ValidationError
    (or FastAPI's RequestValidationError), joined by '; '.

    The field is the dotted location (FastAPI's leading 'body' left out), or `where` when the
    error is about the whole object. Every message that reports a validation uses this.
    """
    parts = []
    for error in list(exc.errors())[:most]:
        loc = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or where
        msg = str(error.get("msg", "invalid"))
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message = describe_validation(exc, most=5)
    return await _service_error(request, InvalidInput(f"invalid request: {message}"))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
    code = codes.get(exc.status_code, "http_error" if exc.status_code < 500 else "internal")
    return JSONResponse(
        {"error": str(exc.detail), "code": code},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


def unhandled_error_response(request: Request, exc: Exception) -> JSONResponse:
    """500 with a generic body, the exception logged with its traceback."""
    # NOTE: never echo the exception text: it can leak paths and internals.
    logger.error("%s %s: unhandled error", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal server error", "code": "internal"}, status_code=500)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    return unhandled_error_response(request, exc)


#: nginx's "client closed request": what the access log and metrics record for a client that
#: hung up before its answer was ready (nothing is sent: there is nobody to send it to).
CLIENT_CLOSED = 499


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=CLIENT_CLOSED)


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unhandled)
