"""Dependencies: routes borrow lifespan-owned resources through these aliases."""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import ClientDisconnect

from service.config import Settings
from service.errors import ModelNotReady, Unauthorized
from service.runtime.metrics import Metrics
from service.serving.dataplane import DataPlane
from service.serving.keys import ANONYMOUS, ApiKey, KeyRing, client_id


# NOTE: async on purpose: FastAPI runs plain `def` dependencies in a thread pool, which costs
# a thread hop per dependency per request (measured: docs/decisions.md).
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_dataplane(request: Request) -> DataPlane:
    plane: DataPlane | None = getattr(request.app.state, "dataplane", None)
    if plane is None:
        raise ModelNotReady("the model is not loaded yet")
    return plane


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def _presented_key(request: Request) -> str | None:
    return presented_key(request.headers.get("authorization"), request.headers.get("x-api-key"))


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key from `Authorization: Bearer <key>`, else from `X-API-Key` (HTTP and gRPC)."""
    auth = authorization or ""
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return x_api_key


def client_key(request: Request) -> str:
    """Who a request counts against for the batcher's fair share: its API key's name when
    keys are on (it was checked before), else its peer address. Without keys a made-up key
    per request would be a new client each time."""
    client = request.scope.get("client")
    key: ApiKey | None = request.scope.get("state", {}).get("api_key")
    return client_key_of(key.name if key is not None else None, client[0] if client else None)


def client_key_of(key_name: str | None, host: str | None) -> str:
    """`client_key` from its parts (shared with the gRPC front end)."""
    if key_name:
        return client_id(key_name)
    return f"addr:{host or '-'}"


def check_capacity(request: Request) -> str:
    """503 before the body is read when this worker's queue (or the client's share of it) is
    already full; returns the client key the request counts against."""
    client = client_key(request)
    plane: DataPlane | None = getattr(request.app.state, "dataplane", None)
    if plane is not None:
        plane.batcher.check_capacity(client)
    return client


async def require_api_key(request: Request) -> None:
    """401 unless a configured API key is presented (no-op when none are configured).

    The request's state then names its caller (`caller`: the key's name, "anonymous" before
    a key is found) for the access log and metrics, and holds the key (`api_key`); a key
    with request limits is also `limited`, for `run_guarded` to count (service/serving/quota.py).
    """
    ring: KeyRing = request.app.state.api_keys
    if ring:
        state = request.scope.setdefault("state", {})
        if "api_key" in state:
            return  # checked already: the route class runs it before FastAPI's dependency
        state["caller"] = ANONYMOUS
        key = check_api_key(ring, _presented_key(request))
        state["caller"], state["api_key"] = key.name, key
        if key.limits_requests:
            state["limited"] = key


def check_api_key(ring: KeyRing, presented: str | None) -> ApiKey:
    """The key `presented` is, or Unauthorized (HTTP and gRPC)."""
    if presented is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'")
    key = ring.identify(presented)
    if key is None:
        raise Unauthorized("invalid API key")
    return key


async def require_admin_key(request: Request) -> None:
    admin: str = request.app.state.settings.admin_key
    presented = _presented_key(request)
    if presented is None or not hmac.compare_digest(presented.encode(), admin.encode()):
        raise Unauthorized("admin key required")


SettingsDep = Annotated[Settings, Depends(get_settings)]
DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


#: Requests still waiting for the model this long start watching for a hang-up. Watching
#: costs a task per request, which the many that finish sooner never pay.
WATCH_AFTER_S = 0.05


class cancelled_on_disconnect:  # noqa: N801 - used like the function it was
    """Stop waiting for the model once the client has hung up, and raise ClientDisconnect.

    Cancelling the wait releases the request's queue slot at once, so clients that gave up
    (timeouts, retries) cannot fill the queue with work nobody will read. Use after the body
    has been read: from then on the only message `receive` can bring is the disconnect.

    NOTE: a class, not @contextmanager: most requests finish before the watch starts, and
    for them the generator was most of the cost (docs/decisions.md).
    """

    __slots__ = ("_request", "_task", "_timer", "_watcher", "_gone")

    def __init__(self, request: Request, after_s: float = WATCH_AFTER_S) -> None:
        self._request = request
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._watcher: asyncio.Task[None] | None = None
        self._gone = False
        self._timer = asyncio.get_running_loop().call_later(after_s, self._start)

    def _start(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._request.receive())["type"] != "http.disconnect":
            pass
        self._gone = True
        self._task.cancel()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
            # NOTE: the watcher's CancelledError keeps its frames, whose `self` would keep the
            # watcher: a reference cycle per watched request, left for the cyclic GC
            # (cost: docs/benchmarks.md). Without it the task is freed when it ends.
            self._watcher = None
        if kind is not None and issubclass(kind, asyncio.CancelledError) and self._gone:
            self._task.uncancel()
            raise ClientDisconnect() from None
