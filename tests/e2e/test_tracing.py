"""Tracing end to end: a real server of two workers, configured only by the standard OTEL_*
variables, exports its spans with the real OpenTelemetry SDK and OTLP/gRPC exporter to an
OTLP receiver this test runs (the collector's TraceService from `opentelemetry-proto`).
The spans continue the caller's `traceparent` over HTTP and gRPC, and the access log line
carries the trace id."""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import httpx
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import png_bytes
from tests.support.server import ServerProcess, free_port

MODEL = "mnist-cnn"


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict
    resource: dict
    start: int
    end: int


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps what it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 - the proto's name
        with self.lock:
            for rs in request.resource_spans:
                resource = {a.key: _value(a.value) for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append(Span(
                            s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                            s.kind, {a.key: _value(a.value) for a in s.attributes}, resource,
                            s.start_time_unix_nano, s.end_time_unix_nano,
                        ))  # fmt: skip
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str, names: set[str], timeout_s: float = 20) -> list[Span]:
        """The spans of `trace_id` once those named have all arrived."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                found = [s for s in self.spans if s.trace_id == trace_id]
            if names <= {s.name for s in found}:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"spans of {trace_id}: {[s.name for s in found]}")
            time.sleep(0.05)


def _value(v):
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    servicer = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    yield servicer, port
    server.stop(0)


@pytest.fixture(scope="module")
def traced(tmp_path_factory, receiver) -> Iterator[ServerProcess]:
    env = {
        "MNIST_WORKERS": "2",
        # Every request through the queue, so that each trace has its queue wait.
        "MNIST_INLINE_WHEN_IDLE": "false",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver[1]}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_SERVICE_NAME": "digits-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    proc = ServerProcess(env=env)
    proc.start(tmp_path_factory.mktemp("tracing"))
    yield proc
    assert proc.stop() == 0, proc.log()


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = f"{random.getrandbits(128):032x}", f"{random.getrandbits(64):016x}"
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def test_http_predict_continues_the_callers_trace(traced, receiver, mnist_sample) -> None:
    spans_seen, _ = receiver
    digit = png_bytes(mnist_sample[0][0])
    header, trace_id, parent = _traceparent()
    r = httpx.post(traced.url + "/v1/predict", files=[("files", ("a.png", digit, "image/png"))],
                   headers={"traceparent": header, "X-Request-ID": "traced-1"})  # fmt: skip
    assert r.status_code == 200
    names = {"POST /v1/predict", "receive", "decode", "queue wait", "batch forward", "encode"}
    spans = {s.name: s for s in spans_seen.trace(trace_id, names)}
    server = spans["POST /v1/predict"]
    assert server.parent_id == parent  # the caller's span
    assert server.kind == 2  # SPAN_KIND_SERVER
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/v1/predict"
    assert server.resource["service.name"] == "digits-under-test"
    for name in names - {"POST /v1/predict"}:
        assert spans[name].parent_id == server.span_id, name
        assert server.start <= spans[name].start <= spans[name].end <= server.end, name
    forward, wait = spans["batch forward"], spans["queue wait"]
    assert wait.end == forward.start  # the wait ends as the forward pass starts
    assert forward.attributes["mnist.batch.images"] >= 1
    assert forward.attributes["mnist.batch.requests"] >= 1
    log = traced.wait_for_log("id=traced-1")
    assert re.search(rf'"POST /v1/predict" 200 .* id=traced-1 key=- trace={trace_id}\n', log)


def test_a_batch_is_recorded_in_every_trace_it_served(traced, receiver, mnist_sample) -> None:
    """Concurrent requests share batches: each one's trace has the forward pass, with the
    batch's size; and both workers export."""
    spans_seen, _ = receiver
    digits = [png_bytes(mnist_sample[0][i]) for i in range(16)]
    sent = [_traceparent() for _ in digits]

    def post(i: int) -> int:
        files = [("files", ("a.png", digits[i], "image/png"))]
        # A new connection each: the requests spread over the two workers.
        return httpx.post(traced.url + "/v1/predict", files=files,
                          headers={"traceparent": sent[i][0]}).status_code  # fmt: skip

    with futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(post, range(len(digits)))) == [200] * len(digits)
    forwards = []
    for _, trace_id, parent in sent:
        spans = {
            s.name: s for s in spans_seen.trace(trace_id, {"POST /v1/predict", "batch forward"})
        }
        assert spans["POST /v1/predict"].parent_id == parent
        forwards.append(spans["batch forward"])
    # The requests a batch served all hold its forward pass, with the same times and size.
    by_batch: dict[tuple[str, int, int], list[Span]] = {}
    for f in forwards:
        by_batch.setdefault((f.resource["process.pid"], f.start, f.end), []).append(f)
    for members in by_batch.values():
        assert {m.attributes["mnist.batch.requests"] for m in members} == {len(members)}
    assert len({f.resource["process.pid"] for f in forwards}) == 2  # both workers export


def test_grpc_infer_continues_the_callers_trace(traced, receiver, mnist_sample) -> None:
    spans_seen, _ = receiver
    header, trace_id, parent = _traceparent()
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="UINT8", shape=[1, 784])
    request.raw_input_contents.append(mnist_sample[0][0].astype(np.uint8).tobytes())
    with grpc.insecure_channel(traced.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(request, metadata=(("traceparent", header),), timeout=10)
    method = "inference.GRPCInferenceService/ModelInfer"
    names = {method, "receive", "decode", "queue wait", "batch forward", "encode"}
    spans = {s.name: s for s in spans_seen.trace(trace_id, names)}
    assert spans[method].parent_id == parent
    assert spans[method].kind == 2
    for name in names - {method}:
        assert spans[name].parent_id == spans[method].span_id, name
    log = traced.wait_for_log(f"trace={trace_id}")
    assert re.search(rf'"GRPC ModelInfer" 200 .* trace={trace_id}\n', log)
