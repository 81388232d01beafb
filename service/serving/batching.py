"""Batcher: coalesces concurrent requests into one forward pass on a single inference thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from service.errors import (
    InferenceFailed,
    InferenceTimeout,
    ModelNotReady,
    ShuttingDown,
)
from service.runtime import tracing
from service.serving.admission import Admission, AdmissionPolicy

logger = logging.getLogger(__name__)


class Predictor(Protocol):
    """What the batcher needs from a model: rows of model inputs in, rows of probabilities out."""

    def predict_batch(self, pixels: torch.Tensor) -> torch.Tensor: ...


class BatchObserver(Protocol):
    def observe_batch(
        self, size: int, queue_wait_s: float, forward_s: float, model: Any = None
    ) -> None: ...


@dataclass(eq=False)
class _Item:
    rows: torch.Tensor
    future: asyncio.Future[tuple[torch.Tensor, Any]]
    enqueued_at: float
    deadline: float
    client: Hashable = None
    counted: bool = True
    #: The model the request named (a version of several served); None: the default one,
    #: asked when its batch forms.
    model: Predictor | None = None
    #: Set by the batch loop before the result: the forward pass of its batch.
    forward: float = 0.0
    #: The request's trace context while tracing is on (service/runtime/tracing.py).
    trace: Any = None


#: `_Lanes.get_nowait` without a model: the next item, whichever model it is for.
_ANY: Any = object()


class _Lanes:
    """One FIFO lane per client (and per model version the client named), served
    round-robin: a client that sends big requests back to back cannot push everybody
    else's work behind its own, and a batch for one version takes that version's lanes
    while the others keep their place."""

    def __init__(self) -> None:
        # Keyed by (the id of the model an item named, or None; its client): a model need
        # not be hashable, and the items in a lane keep theirs alive, so the id is unique.
        self._lanes: OrderedDict[tuple[int | None, Hashable], deque[_Item]] = OrderedDict()
        self._nonempty = asyncio.Event()

    def __len__(self) -> int:
        return len(self._lanes)

    @staticmethod
    def _key(item: _Item) -> tuple[int | None, Hashable]:
        return (None if item.model is None else id(item.model), item.client)

    def put(self, item: _Item) -> None:
        key = self._key(item)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = deque()
        lane.append(item)
        self._nonempty.set()

    def put_back(self, item: _Item) -> None:
        """Return an item taken too early: it goes first, its lane first."""
        key = self._key(item)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = deque()
        lane.appendleft(item)
        self._lanes.move_to_end(key, last=False)
        self._nonempty.set()

    def get_nowait(self, model: Any = _ANY, current: Any = None) -> _Item | None:
        """The next item, round-robin; with `model`, the next one for that model (a lane's
        named model, or `current` for the lanes that named none)."""
        if not self._lanes:
            return None
        if model is _ANY:
            key, lane = next(iter(self._lanes.items()))
        else:
            # NOTE: with one version served the first lane matches: one comparison per item.
            for key, lane in self._lanes.items():  # noqa: B007 - used after the loop
                if (lane[0].model or current) is model:
                    break
            else:
                return None
        item = lane.popleft()
        if lane:
            self._lanes.move_to_end(key)  # its next item waits for the other lanes' turn
        else:
            del self._lanes[key]
        return item

    async def get(self) -> _Item:
        while not self._lanes:
            self._nonempty.clear()
            await self._nonempty.wait()
        item = self.get_nowait()
        assert item is not None
        return item


class _Incoming:
    """The block during which admitted images are being decoded (`Batcher.incoming`).

    NOTE: a class, not @contextmanager: a generator per request costs more than the rest
    of the admission (docs/decisions.md)."""

    __slots__ = ("_batcher", "_images", "_client", "_big_bytes")

    def __init__(self, batcher: Batcher, images: int, client: Hashable, big_bytes: int) -> None:
        self._batcher, self._images, self._client = batcher, images, client
        self._big_bytes = big_bytes

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self._batcher._announced(self._images, self._client, self._big_bytes)


class Batcher:
    """Dynamic batching in front of a `Predictor`.

    A lone request goes straight to the model; while a forward pass runs, new requests queue
    up and leave together in the next one (up to `max_batch_size` images). The batch waits up
    to `max_batch_wait_ms` for more only while other requests are still being decoded.
    A batch holds one model: with several versions served, it takes the requests for its
    first request's version and leaves the others queued, in their order, for the next
    batch (docs/decisions.md).

    With an `InlineWhenIdle` policy, a single image that finds everything idle runs its
    forward pass right on the event loop instead (see that class).
    """

    def __init__(
        self,
        current_model: Callable[[], Predictor],
        *,
        max_batch_size: int,
        max_batch_wait_ms: float,
        max_queue_size: int,
        request_timeout_s: float,
        enabled: bool,
        observer: BatchObserver | None = None,
        inline: InlineWhenIdle | None = None,
        admission: Admission | None = None,
    ) -> None:
        #: The served model, asked per batch (the model repository owns it).
        self.current_model = current_model
        self.max_batch_size = max_batch_size
        self.max_batch_wait_s = max_batch_wait_ms / 1000
        self.request_timeout_s = request_timeout_s
        self.enabled = enabled
        self.observer = observer
        #: The idle fast path (a policy of its own; None: every image goes through the queue).
        self.inline = inline
        #: Who may bring more work: the expected wait against the deadline, fair shares.
        self.admission = admission or Admission(
            AdmissionPolicy.for_deadline(max_queue_size, request_timeout_s)
        )
        self._queue: _Lanes | None = None
        self._task: asyncio.Task[None] | None = None
        # NOTE: one thread serialises access to the device and keeps torch's own intra-op
        # pool as the only parallelism inside a forward pass.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._queued_images = 0
        self._incoming = 0
        self._incoming_big_bytes = 0  # of the big files among them (Admission.big_bytes)
        #: Images each client has announced or queued, for the per-client share.
        self._by_client: Counter[Hashable] = Counter()
        self._arrived = asyncio.Event()
        self._accepting = False
        self._busy = False

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        # NOTE: the queue must be created inside the running loop it will be used from.
        self._queue = _Lanes()
        self._arrived = asyncio.Event()
        self._accepting = True
        self._task = asyncio.create_task(self._run(), name="batcher")

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def idle(self) -> bool:
        return (
            self._queued_images == 0
            and not self._busy
            and self._incoming == 0
            and (self.inline is None or self.inline.claims == 0)
        )

    @property
    def queued_images(self) -> int:
        return self._queued_images

    @property
    def pending_images(self) -> int:
        """Images announced (being decoded) or queued: what admission weighs."""
        return self._queued_images + self._incoming

    def check_capacity(self, client: Hashable = None) -> None:
        """503 now, before a request's body is read, when the expected wait is already past
        the deadline (or this client holds more than its share while others wait): refusing
        must cost far less than the work it turns away."""
        self._admit(1, client)

    def _admit(self, images: int, client: Hashable, big_bytes: int = 0) -> None:
        self.admission.check(
            images, client, self.pending_images, self._by_client,
            decoding=self._incoming, pending_big_bytes=self._incoming_big_bytes,
            big_bytes=big_bytes,
        )  # fmt: skip

    def stop_accepting(self) -> None:
        self._accepting = False

    async def drain(self, timeout_s: float) -> bool:
        """Wait until queued and in-flight work is done; True when it finished in time."""
        deadline = time.monotonic() + timeout_s
        while not self.idle and time.monotonic() < deadline and self.alive:
            await asyncio.sleep(0.01)
        return self.idle

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, give queued work up to `timeout_s`, then fail what is left."""
        self.stop_accepting()
        await self.drain(timeout_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, timeout=1.0)
        if self._queue is not None:
            while (item := self._queue.get_nowait()) is not None:
                if not item.future.done():
                    item.future.set_exception(ShuttingDown())
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -------------------------------------------------------------- clients

    def incoming(
        self, images: int = 1, client: Hashable = None, sizes: Sequence[int] = ()
    ) -> _Incoming:
        """Admit work that is about to be decoded (or refuse it with 503 before any decoding),
        and announce it, so a forming batch can wait for it. `sizes`: the files' bytes, when
        known (big files are costed by their size). A context manager: the announcement
        ends with the block."""
        if not self._accepting:
            raise ShuttingDown()
        big_bytes = self.admission.big_bytes(sizes)
        self._admit(images, client, big_bytes)
        self._incoming += images
        self._incoming_big_bytes += big_bytes
        self._by_client[client] += images
        return _Incoming(self, images, client, big_bytes)

    def _announced(self, images: int, client: Hashable, big_bytes: int = 0) -> None:
        self._incoming -= images
        self._incoming_big_bytes -= big_bytes
        self._forget(client, images)
        self._arrived.set()

    def _forget(self, client: Hashable, images: int) -> None:
        left = self._by_client[client] - images
        if left > 0:
            self._by_client[client] = left
        else:
            del self._by_client[client]

    async def submit(
        self,
        pixels: torch.Tensor,
        client: Hashable = None,
        admitted: bool = False,
        model: Predictor | None = None,
        timing: list[float] | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """Probabilities for `pixels` ([N,28,28] in [0,1]) and the model that produced them.

        `admitted`: the images were announced with `incoming` (which decided admission), so
        they are not weighed again: refusing them now would waste their decoding.
        `model`: the version the request named (default: the served default, per batch).
        `timing` gets the seconds the request spent in the queue and in forward passes
        (the statistics extension's queue and compute_infer; together, its time in here).
        """
        if not self._accepting:
            raise ShuttingDown()
        if not self.alive or self._queue is None:
            raise ModelNotReady("the inference loop is not running")
        n = int(pixels.shape[0])
        if n == 0:
            raise InferenceFailed("empty batch submitted")
        if not admitted:
            self._admit(n, client)
        if n == 1 and self.inline is not None and await self.inline.claim(self):
            return self._forward_inline(pixels, model, timing)
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        split = self.enabled and n > self.max_batch_size
        chunks = torch.split(pixels, self.max_batch_size) if split else (pixels,)
        items = []
        trace = tracing.current()
        for chunk in chunks:
            deadline = now + self.request_timeout_s
            item = _Item(
                chunk, loop.create_future(), now, deadline, client, model=model, trace=trace
            )
            items.append(item)
            self._queue.put(item)
            self._queued_images += int(chunk.shape[0])
            self._by_client[client] += int(chunk.shape[0])
        self._arrived.set()
        # NOTE: a timer handle, not `asyncio.timeout`: that costs a Timeout object, a
        # reschedule and a cancellation check per request (cost: docs/decisions.md).
        timer = loop.call_at(loop.time() + self.request_timeout_s, self._expire, items)
        try:
            results = [await item.future for item in items]
        finally:
            timer.cancel()
            for item in items:
                if not item.future.done():
                    item.future.cancel()
                self._release(item)
        probs = torch.cat([r[0] for r in results]) if len(results) > 1 else results[0][0]
        if timing is not None:
            # The chunks of a split request wait side by side but run one forward after
            # another: the queue time is the rest of the time in here, so the two add up.
            forward = sum(item.forward for item in items)
            timing += (time.monotonic() - now - forward, forward)
        return probs, results[-1][1]

    def _expire(self, items: list[_Item]) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(
                    InferenceTimeout(
                        f"no result within the {self.request_timeout_s:g} s request deadline"
                    )
                )

    # -------------------------------------------------------------- inline forward

    def _forward_inline(
        self, pixels: torch.Tensor, named: Predictor | None, timing: list[float] | None
    ) -> tuple[torch.Tensor, Any]:
        model = named or self.current_model()
        self._busy = True
        t0 = time.monotonic()
        try:
            out = _checked_forward(model, pixels)
        except Exception as exc:
            logger.error("inline forward of %d images failed", pixels.shape[0], exc_info=exc)
            raise InferenceFailed("inference failed") from None
        finally:
            self._busy = False
        t1 = time.monotonic()
        forward = t1 - t0
        self.admission.observe_forward(int(pixels.shape[0]), forward)
        if self.observer is not None:
            self.observer.observe_batch(int(pixels.shape[0]), 0.0, forward, model)
        if timing is not None:
            timing += (0.0, forward)
        if tracing.tracer is not None:
            tracing.record_batch([(tracing.current(), t0)], t0, t1, int(pixels.shape[0]), 1)
        return out, model

    # -------------------------------------------------------------- the loop

    def _release(self, item: _Item) -> None:
        # A cancelled or timed-out client frees its queue slot at once.
        if item.counted:
            item.counted = False
            self._queued_images -= int(item.rows.shape[0])
            self._forget(item.client, int(item.rows.shape[0]))

    async def _collect(self) -> tuple[list[_Item], Predictor]:
        """A batch of items for one model, and that model (a reload switches the default
        between batches; the batch keeps the model it was formed for)."""
        assert self._queue is not None
        first = await self._queue.get()
        current = self.current_model()
        model = first.model or current
        batch, size = [first], int(first.rows.shape[0])
        limit = self.max_batch_size if self.enabled else size
        started = time.monotonic()
        while size < limit:
            item = self._queue.get_nowait(model, current)
            if item is None:
                # Wait only for work we know is coming: never when the model would sit idle.
                remaining = started + self.max_batch_wait_s - time.monotonic()
                if self._incoming <= 0 or remaining <= 0:
                    break
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                continue
            rows = int(item.rows.shape[0])
            if size + rows > limit:
                self._queue.put_back(item)  # first in the next batch
                break
            batch.append(item)
            size += rows
        return batch, model

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch, model = await self._collect()
            now = time.monotonic()
            live: list[_Item] = []
            for item in batch:
                if item.future.done():
                    continue  # cancelled by its client
                if now > item.deadline:
                    item.future.set_exception(InferenceTimeout("request expired in the queue"))
                    continue
                live.append(item)
            if not live:
                continue
            x = torch.cat([item.rows for item in live]) if len(live) > 1 else live[0].rows
            queue_wait = now - min(item.enqueued_at for item in live)
            self._busy = True
            t0 = time.monotonic()
            try:
                out, spent = await loop.run_in_executor(self._executor, _timed_forward, model, x)
            except Exception as exc:
                logger.error("batch of %d images failed", x.shape[0], exc_info=exc)
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(InferenceFailed("inference failed"))
                continue
            finally:
                self._busy = False
            t1 = time.monotonic()
            forward = t1 - t0
            if tracing.tracer is not None:
                traced = [(item.trace, item.enqueued_at) for item in live]
                tracing.record_batch(traced, t0, t1, int(x.shape[0]), len(live))
            logger.debug(
                "batch size=%d queue_wait=%.2fms forward=%.2fms",
                x.shape[0], queue_wait * 1000, forward * 1000,
            )  # fmt: skip
            # The forward's own time, timed in its thread: the wait for the event loop to
            # pick the result up is not a cost of the images (docs/limits.md).
            self.admission.observe_forward(int(x.shape[0]), spent)
            if self.observer is not None:
                self.observer.observe_batch(int(x.shape[0]), queue_wait, forward, model)
            offset = 0
            for item in live:
                rows = int(item.rows.shape[0])
                item.forward = forward
                if not item.future.done():
                    item.future.set_result((out[offset : offset + rows], model))
                offset += rows


class InlineWhenIdle:
    """The idle fast path, a policy apart from the batching core.

    A single image whose request is the only one its process is serving (`alone`), and that
    finds the batcher idle, runs its forward pass right on the event loop: nobody can be
    delayed by it, and it saves the two thread hand-offs of the queue (their cost:
    docs/decisions.md).
    """

    def __init__(self, alone: Callable[[], bool]) -> None:
        self.alone = alone
        #: Requests between their two checks; the batcher is not idle while any are.
        self.claims = 0

    async def claim(self, batcher: Batcher) -> bool:
        """True when this request may run its forward pass on the event loop.

        Checked twice around one turn of the loop: the turn lets requests the loop has
        already read off their sockets start (and count themselves), and the claim makes any
        of them that reach `submit` meanwhile queue up instead, so both go through the batch
        path together.
        """
        if not batcher.idle or not self.alone():
            return False
        self.claims += 1
        try:
            await asyncio.sleep(0)
        finally:
            self.claims -= 1
        return batcher.idle and self.alone()


def _timed_forward(model: Predictor, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    started = time.perf_counter()
    out = _checked_forward(model, x)
    return out, time.perf_counter() - started


def _checked_forward(model: Predictor, x: torch.Tensor) -> torch.Tensor:
    out = model.predict_batch(x)
    if out.shape[0] != x.shape[0]:
        raise RuntimeError(f"model returned {out.shape[0]} rows for {x.shape[0]}")
    return out
