"""The gRPC front end: the Open Inference Protocol on its own port, over the same DataPlane.

It runs on the uvicorn worker's event loop (grpc.aio), so requests from both front ends meet
in one batcher. Auth, limits, error statuses, metrics and access logs follow the HTTP side.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service import __version__
from service.config import Settings
from service.errors import ModelNotReady, ServiceError
from service.http.api.deps import check_api_key, client_key_of, presented_key
from service.http.api.ops import state_readiness
from service.rpc import inference_pb2 as pb
from service.rpc import inference_pb2_grpc as pb_grpc
from service.runtime import tracing
from service.runtime.metrics import Metrics
from service.serving.dataplane import DataPlane
from service.serving.keys import ANONYMOUS, ApiKey, KeyRing
from service.wire.codec import triton
from service.wire.codec import v2 as codec

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("mnist.access")

SERVICE = "inference.GRPCInferenceService"
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
#: Contents fields by V2 datatype, for inputs sent without raw_input_contents.
_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "UINT8": "uint_contents",
             "BYTES": "bytes_contents"}  # fmt: skip

R = TypeVar("R")


class _Rpc:
    """What one call reports to its access-log line and metrics."""

    __slots__ = ("images", "key", "trace_id")

    def __init__(self) -> None:
        self.images = 0
        self.key: ApiKey | None = None
        self.trace_id = "-"


def grpc_code(exc: ServiceError) -> grpc.StatusCode:
    """The gRPC status for a ServiceError, by its HTTP status."""
    return _CODES.get(exc.status_code, grpc.StatusCode.INTERNAL)


def _parameters(params: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, choice) if choice else None
    return out


def request_from_proto(msg: pb.ModelInferRequest) -> codec.V2Request:
    """The codec's V2Request from a ModelInferRequest (contents or raw_input_contents)."""
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise codec.InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs"
        )
    inputs = []
    for i, item in enumerate(msg.inputs):
        tensor = codec.Tensor(
            item.name, item.datatype, list(item.shape), _parameters(item.parameters)
        )
        if raw:
            tensor.raw = raw[i]
        else:
            field = _CONTENTS.get(item.datatype)
            tensor.data = getattr(item.contents, field) if field else None
        inputs.append(tensor)
    outputs = [codec.Requested(o.name, _parameters(o.parameters)) for o in msg.outputs]
    return codec.V2Request(inputs, outputs or None, _parameters(msg.parameters), msg.id or None)


def response_to_proto(
    tensors: list[codec.OutputTensor], model_name: str, model_version: str, request_id: str
) -> pb.ModelInferResponse:
    """Every output as raw_output_contents, as Triton answers tritonclient."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version,
                                     id=request_id)  # fmt: skip
    for t in tensors:
        response.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        response.raw_output_contents.append(codec.tensor_bytes(t))
    return response


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The GRPCInferenceService methods, reading the app's state as the HTTP routes do."""

    def __init__(self, state: Any, settings: Settings, metrics: Metrics) -> None:
        self.state = state
        self.settings = settings
        self.metrics = metrics

    # ---------------------------------------------------------------- plumbing

    def _plane(self) -> DataPlane:
        plane: DataPlane | None = getattr(self.state, "dataplane", None)
        if plane is None:
            raise ModelNotReady("the model is not loaded yet")
        return plane

    @staticmethod
    def _presented(context: grpc.aio.ServicerContext) -> str | None:
        metadata = dict(context.invocation_metadata() or ())
        return presented_key(metadata.get("authorization"), metadata.get("x-api-key"))

    def _authorize(self, context: grpc.aio.ServicerContext, rpc: _Rpc) -> None:
        ring: KeyRing = self.state.api_keys
        if ring:
            rpc.key = check_api_key(ring, self._presented(context))

    def _client(self, context: grpc.aio.ServicerContext, rpc: _Rpc) -> str:
        """The batcher's fair-share key, as HTTP computes it: the key's name, else the host."""
        peer = context.peer() or ""  # "ipv4:127.0.0.1:53580", "ipv6:[::1]:53580"
        host = peer.partition(":")[2].rpartition(":")[0].strip("[]") or None
        return client_key_of(rpc.key.name if rpc.key is not None else None, host)

    async def _call(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        handler: Callable[[_Rpc], Awaitable[R]],
        protected: bool = True,
    ) -> R:
        """Tracing (when on) around `_run`."""
        if tracing.tracer is None:
            return await self._run(method, context, handler, protected, _Rpc())
        carrier = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method}
        with tracing.server_span(f"{SERVICE}/{method}", carrier, attributes) as span:
            rpc = _Rpc()
            rpc.trace_id = tracing.trace_id(span)
            return await self._run(method, context, handler, protected, rpc)

    async def _run(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        handler: Callable[[_Rpc], Awaitable[R]],
        protected: bool,
        rpc: _Rpc,
    ) -> R:
        """Auth, the key's limits, error mapping, metrics and the access log around one RPC."""
        started = time.perf_counter()
        status, held = 200, False
        try:
            if protected:
                self._authorize(context, rpc)
                if rpc.key is not None and rpc.key.limits_requests:
                    held = self.state.quota.enter(rpc.key)
            return await handler(rpc)
        except ServiceError as exc:
            status = exc.status_code
            if status >= 500 and status not in (503, 504):
                logger.error("gRPC %s failed: %r", method, exc, exc_info=exc)
            retry = exc.headers.get("Retry-After") if exc.headers else None
            if retry is not None:
                context.set_trailing_metadata((("retry-after", retry),))
            await context.abort(grpc_code(exc), exc.message)
            raise  # not reached: abort raises
        except grpc.aio.AbortError:
            raise
        except Exception:
            status = 500
            logger.exception("gRPC %s: unhandled error", method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")
            raise
        finally:
            if held:
                self.state.quota.leave(rpc.key)
            elapsed = time.perf_counter() - started
            self.metrics.observe_request(f"/{SERVICE}/{method}", "GRPC", status, elapsed)
            caller = None
            if protected and self.state.api_keys:
                caller = rpc.key.name if rpc.key is not None else ANONYMOUS
                self.metrics.observe_caller(caller, status)
            if self.settings.access_log and method not in ("ServerLive", "ServerReady"):
                access_logger.info(
                    '%s "GRPC %s" %d %.1fms images=%s key=%s trace=%s',
                    context.peer(), method, status, elapsed * 1000, rpc.images, caller or "-",
                    rpc.trace_id,
                    extra={"method": "GRPC", "path": method, "status": status,
                           "latency_ms": round(elapsed * 1000, 2), "images": rpc.images,
                           "client": context.peer(), "key": caller, "trace_id": rpc.trace_id},
                )  # fmt: skip

    # ---------------------------------------------------------------- health and metadata

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        async def run(rpc: _Rpc) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self._call("ServerLive", context, run, protected=False)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        async def run(rpc: _Rpc) -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=state_readiness(self.state)[0])

        return await self._call("ServerReady", context, run, protected=False)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        async def run(rpc: _Rpc) -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(
                name="mnist-serving", version=__version__, extensions=codec.EXTENSIONS
            )

        return await self._call("ServerMetadata", context, run, protected=False)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        async def run(rpc: _Rpc) -> pb.ModelReadyResponse:
            self._plane().get_model(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=state_readiness(self.state)[0])

        return await self._call("ModelReady", context, run)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        async def run(rpc: _Rpc) -> pb.ModelMetadataResponse:
            meta = self._plane().model_metadata(request.name, request.version or None)
            for tensor in (*meta["inputs"], *meta["outputs"]):
                tensor.pop("parameters", None)  # the gRPC message has no tensor parameters
            return json_format.ParseDict(meta, pb.ModelMetadataResponse())

        return await self._call("ModelMetadata", context, run)

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Any
    ) -> pb.ModelConfigResponse:
        async def run(rpc: _Rpc) -> pb.ModelConfigResponse:
            clf = self._plane().get_model(request.name, request.version or None)
            config = triton.model_config(clf, self.settings)
            return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig()))

        return await self._call("ModelConfig", context, run)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        async def run(rpc: _Rpc) -> pb.ModelStatisticsResponse:
            plane = self._plane()
            models = plane.served_models()
            if request.name:
                clf = plane.get_model(request.name, request.version or None)
                models = [clf] if request.version else models
            stats = triton.model_statistics(models, self.metrics.registry)
            return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

        return await self._call("ModelStatistics", context, run)

    # ---------------------------------------------------------------- inference

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Any
    ) -> pb.ModelInferResponse:
        async def run(rpc: _Rpc) -> pb.ModelInferResponse:
            plane = self._plane()
            plane.get_model(request.model_name, request.model_version or None)  # or a 404
            client = self._client(context, rpc)
            plane.batcher.check_capacity(client)  # before any decoding, as over HTTP
            # Big messages are converted off the loop, as big HTTP bodies are parsed.
            large = request.ByteSize() > codec.OFFLOAD_BYTES
            with tracing.span("receive"):
                req = (
                    await asyncio.to_thread(request_from_proto, request)
                    if large
                    else request_from_proto(request)
                )
            # NOTE: a client deadline cancels this task (grpc.aio), which releases the
            # request's queue slot; the server's own request_timeout_s still applies.
            answer = await plane.infer_v2(req, client, large, request.model_version or None)
            rpc.images = answer.images
            with tracing.span("encode"):
                return response_to_proto(
                    answer.tensors, answer.model.name, answer.model.version, request.id
                )

        return await self._call("ModelInfer", context, run)


def _enable_reflection(server: grpc.aio.Server) -> None:
    """Server reflection (grpc.reflection.v1alpha), so that tools can list and call the
    services without the .proto (which is also served at /grpc/inference.proto)."""
    from grpc_reflection.v1alpha import reflection

    names = (
        pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)


class GrpcServer:
    """grpc.aio server with the inference service and grpc.health.v1, on the current loop."""

    def __init__(self, state: Any, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        options = [
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.max_send_message_length", settings.max_request_bytes),
            # NOTE: several uvicorn workers each bind the gRPC port; SO_REUSEPORT lets the
            # kernel spread connections over them. With one worker it is off, so a port
            # already taken fails loudly instead of being shared with a stranger.
            ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        ]
        self.server = grpc.aio.server(options=options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(state, settings, metrics), self.server
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if settings.grpc_reflection:
            _enable_reflection(self.server)
        self.state = state
        self.port = 0
        self._watcher: asyncio.Task[None] | None = None
        #: What grpc.health.v1 says now; the watcher compares readiness with it, not with
        #: its own first look (the app turns ready after gRPC starts).
        self._serving = False

    async def start(self) -> int:
        address = f"{self.settings.host}:{self.settings.grpc_port}"
        self.port = self.server.add_insecure_port(address)
        await self.server.start()
        await self.set_serving(state_readiness(self.state)[0])
        self._watcher = asyncio.create_task(self._follow_readiness(), name="grpc-health")
        logger.info("gRPC listening on %s:%d", self.settings.host, self.port)
        return self.port

    async def _follow_readiness(self, every_s: float = 0.1) -> None:
        """Keep grpc.health.v1 equal to HTTP readiness: NOT_SERVING from the moment SIGTERM
        arrives (while HTTP drains) or the batch loop dies, as /v2/health/ready turns 503."""
        while True:
            await asyncio.sleep(every_s)
            ready = state_readiness(self.state)[0]
            if ready != self._serving:
                await self.set_serving(ready)

    async def refresh(self) -> None:
        """Make grpc.health.v1 say what readiness says now (the app calls it once ready)."""
        await self.set_serving(state_readiness(self.state)[0])

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self._serving = serving
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING for probes, refuse new RPCs, let running ones finish within grace_s."""
        if self._watcher is not None:
            self._watcher.cancel()
        await self.set_serving(False)
        await self.server.stop(grace_s)
