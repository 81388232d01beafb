"""Tracing: OpenTelemetry spans sent over OTLP, configured by the standard `OTEL_*` variables.

Off unless an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
`OTEL_EXPORTER_OTLP_ENDPOINT`; `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` keep
it off). Off, the SDK is never imported and `tracer` stays None: the request path pays one
module attribute read per span site (`span`, `current`). On, each worker process has its own
provider and batch exporter; the SDK itself reads `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`, `OTEL_PROPAGATORS` and
the exporter's endpoint, headers, timeout and protocol.

A request's trace: the server span (`POST /v1/predict`, or the gRPC method) continues the
caller's W3C `traceparent`, with children `receive`, `decode`, `queue wait`,
`batch forward` (attributes: the batch's images and requests) and `encode`. One batch serves
many requests: its forward pass is recorded in each request's trace, with the same times.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

logger = logging.getLogger(__name__)

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
#: The service name when OTEL_SERVICE_NAME is unset (the SDK's would be "unknown_service").
DEFAULT_SERVICE_NAME = "mnist-serving"

#: The process's tracer, or None when tracing is off (read on the request path).
tracer: Any = None
_provider: Any = None
_NO_SPAN: AbstractContextManager[Any] = contextlib.nullcontext()


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARS)


def configure(environ: Mapping[str, str] = os.environ) -> bool:
    """Start this process's tracer when the environment asks for one; True when on."""
    global tracer, _provider
    if tracer is not None or not wanted(environ):
        return tracer is not None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            f"an OTLP endpoint is set but the OpenTelemetry SDK is missing ({exc.name}): "
            "install mnist-serving[tracing], or unset OTEL_EXPORTER_OTLP_ENDPOINT"
        ) from None

    name = environ.get("OTEL_SERVICE_NAME", "").strip() or DEFAULT_SERVICE_NAME
    # The worker's pid tells the workers of one server apart in a trace view.
    resource = Resource.create({SERVICE_NAME: name, "process.pid": os.getpid()})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(_exporter(environ)))
    # Global too: FastAPI's own telemetry (MNIST_OPENTELEMETRY) then reports to it.
    trace.set_tracer_provider(provider)
    _provider, tracer = provider, provider.get_tracer("mnist-serving")
    return True


def _exporter(environ: Mapping[str, str]) -> Any:
    # NOTE: grpc by default, as the Python SDK's own auto-configuration.
    protocol = next((environ[v] for v in PROTOCOL_VARS if environ.get(v)), "grpc").strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    else:
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r}: use grpc or http/protobuf")
    return OTLPSpanExporter()


def shutdown() -> None:
    """Send what is buffered and stop (a worker's shutdown)."""
    global tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    tracer = _provider = None


# ---------------------------------------------------------------------- on the request path


def span(name: str) -> AbstractContextManager[Any]:
    """A child span of the current one, or a shared no-op while tracing is off."""
    t = tracer
    return _NO_SPAN if t is None else t.start_as_current_span(name)


def current() -> Any:
    """The current trace context, to carry into the batcher (None while off)."""
    if tracer is None:
        return None
    from opentelemetry import context

    return context.get_current()


def server_span(
    name: str, carrier: Mapping[str, str], attributes: Mapping[str, Any]
) -> AbstractContextManager[Any]:
    """The server span of one request, continuing the caller's `traceparent` (tracing on)."""
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    parent = extract(dict(carrier))
    return tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.SERVER, attributes=dict(attributes)
    )


def trace_id(active: Any) -> str:
    """The 32-hex trace id of a span (what the access log shows)."""
    return format(active.get_span_context().trace_id, "032x")


def record_batch(
    contexts: Iterable[tuple[Any, float]],
    started: float,
    ended: float,
    images: int,
    requests: int,
) -> None:
    """`queue wait` (from each request's enqueue) and `batch forward` spans, in the trace of
    every request the batch served; times are `time.monotonic()` readings."""
    t = tracer
    if t is None:
        return
    to_ns = time.time_ns() - time.monotonic_ns()
    start_ns, end_ns = int(started * 1e9) + to_ns, int(ended * 1e9) + to_ns
    attributes = {"mnist.batch.images": images, "mnist.batch.requests": requests}
    for ctx, enqueued in contexts:
        if ctx is None:
            continue
        if enqueued < started:
            t.start_span("queue wait", context=ctx, start_time=int(enqueued * 1e9) + to_ns).end(
                end_time=start_ns
            )
        forward = t.start_span("batch forward", context=ctx, start_time=start_ns,
                               attributes=attributes)  # fmt: skip
        forward.end(end_time=end_ns)
