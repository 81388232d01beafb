"""Recorder: keeps every answer for later feedback, off the request path.

A request hands its answers to `record`, which only appends to a bounded queue (and drops,
counting, when it is full: a slow database never slows an answer). One writer thread per
worker drains the queue in batched transactions, prunes the store by age and size, and
refreshes the quality snapshot that /metrics shows. Feedback itself is written at once,
by the request that brings it, on asyncio's thread pool.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from service.config import Settings
from service.errors import NotFound, ServiceError
from service.feedback.quality import QualitySnapshot, snapshot_of
from service.feedback.store import FeedbackStore, PredictionRow, Served, now, rows_of
from service.runtime.metrics import Metrics
from service.vision.reading import Reading

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class WriterRules:
    """How the writer thread paces itself."""

    #: Longest an answer waits in the queue before its batch is written.
    flush_s: float = 0.2
    #: How often a feedback that found no answer looks again (see `Recorder.give`).
    miss_poll_s: float = 0.05
    #: Rows per transaction at most.
    batch_rows: int = 2000
    #: How often the store is pruned by age and size.
    prune_every_s: float = 60.0
    #: How long a write may wait for another process's lock (SQLite) or a connection (PG).
    busy_timeout_s: float = 5.0


class PredictionNotFound(NotFound):
    code = "prediction_not_found"


class FeedbackUnavailable(ServiceError):
    status_code = 503
    code = "feedback_unavailable"


class Recorder:
    """The queue, the writer thread and the request side's connection of one worker."""

    def __init__(
        self, settings: Settings, metrics: Metrics | None = None, rules: WriterRules | None = None
    ) -> None:
        self.rules = rules or WriterRules()
        self._metrics = metrics
        self.retention_s = settings.feedback_retention_h * 3600
        self.window_s = settings.feedback_window_h * 3600
        self.refresh_s = settings.feedback_refresh_s
        self.max_rows = settings.feedback_max_rows
        self._open: Callable[[], FeedbackStore] = lambda: FeedbackStore.open(
            settings.feedback_url, settings.feedback_path, self.rules.busy_timeout_s
        )
        self._queue: queue.Queue[list[PredictionRow] | None] = queue.Queue(
            settings.feedback_queue_requests
        )
        self.snapshot = QualitySnapshot(self.window_s)
        self._request_store: FeedbackStore | None = None
        self._request_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Open the store (fails fast on a bad path or URL) and start the writer."""
        self._request_store = self._open()
        self._refresh(self._request_store)
        self._thread = threading.Thread(target=self._write_loop, name="feedback-writer")
        self._thread.daemon = True  # never holds up an exit; stop() drains it first
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Write what is queued (within `timeout_s`) and close the store."""
        if self._thread is not None:
            self._queue.put(None)  # blocks at most while the writer makes room
            self._thread.join(timeout_s)
        with self._request_lock:
            if self._request_store is not None:
                self._request_store.close()
                self._request_store = None

    # ---------------------------------------------------------------- the request path

    def record(self, rows: list[PredictionRow]) -> None:
        """Queue one request's answers; never blocks."""
        try:
            self._queue.put_nowait(rows)
        except queue.Full:
            self._count("dropped", len(rows))

    def record_readings(
        self, request_id: str, role: str, version: str, readings: Sequence[object]
    ) -> None:
        """Queue one request's readings by `role` ("served" or "shadow"); an entry that is
        not a Reading (a file that could not be read) has no answer to give feedback on."""
        answers = [
            (i, r.kind, r.number, r.confidence)
            for i, r in enumerate(readings)
            if isinstance(r, Reading)
        ]
        self.record(rows_of(request_id, role, version, answers, now()))

    # ---------------------------------------------------------------- feedback

    async def give(self, request_id: str, idx: int, truth: str) -> Served:
        """Store `truth` for the served answer (request id, index); 404 when unknown or
        older than the retention. An answer made a moment ago may still be in some
        worker's queue: a miss is looked up again for up to two flush intervals."""
        served = await asyncio.to_thread(self._served, request_id, idx)
        waited = 0.0
        while served is None and waited < 2 * self.rules.flush_s:
            await asyncio.sleep(self.rules.miss_poll_s)
            waited += self.rules.miss_poll_s
            served = await asyncio.to_thread(self._served, request_id, idx)
        if served is None:
            raise PredictionNotFound(
                f"no answer {idx} of request {request_id!r} is kept (unknown id, index out "
                f"of range, a file that could not be read, or older than the retention)"
            )
        if served.created_at < now() - self.retention_s:
            raise PredictionNotFound(
                f"answer {idx} of request {request_id!r} is older than the retention"
            )
        await asyncio.to_thread(self._on_request_store, lambda s: s.add_feedback(
            request_id, idx, truth, now()))  # fmt: skip
        return served

    def _served(self, request_id: str, idx: int) -> Served | None:
        return self._on_request_store(lambda s: s.served(request_id, idx))

    def _on_request_store(self, work: Callable[[FeedbackStore], T]) -> T:
        with self._request_lock:
            try:
                if self._request_store is None:
                    self._request_store = self._open()
                return work(self._request_store)
            except Exception as exc:
                logger.warning("feedback store error: %s", exc)
                self._discard(self._request_store)
                self._request_store = None
                raise FeedbackUnavailable("the feedback store cannot be reached") from None

    # ---------------------------------------------------------------- the writer thread

    def _write_loop(self) -> None:
        store: FeedbackStore | None = None
        next_prune = time.monotonic()
        next_refresh = time.monotonic() + self.refresh_s
        running = True
        while running:
            batch, running = self._collect()
            try:
                if store is None:
                    store = self._open()
                if batch:
                    store.write_predictions(batch)
                    self._count("written", len(batch))
                clock = time.monotonic()
                if clock >= next_prune:
                    store.prune(now() - self.retention_s, self.max_rows)
                    next_prune = clock + self.rules.prune_every_s
                if clock >= next_refresh:
                    self._refresh(store)
                    next_refresh = clock + self.refresh_s
            except Exception as exc:
                self._count("failed", len(batch))
                logger.warning("feedback writer: %d answers not kept: %s", len(batch), exc)
                self._discard(store)
                store = None
        self._discard(store)

    def _collect(self) -> tuple[list[PredictionRow], bool]:
        """Answers queued within one flush interval (up to a batch); False once stopped."""
        batch: list[PredictionRow] = []
        deadline = time.monotonic() + self.rules.flush_s
        while len(batch) < self.rules.batch_rows:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                return batch + self._drain(), False
            batch.extend(item)
        return batch, True

    def _drain(self) -> list[PredictionRow]:
        rest: list[PredictionRow] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return rest
            if item is not None:
                rest.extend(item)

    def _refresh(self, store: FeedbackStore) -> None:
        at = now()
        since = at - self.window_s
        self.snapshot = snapshot_of(
            store.tallies(since), store.agreements(since), self.window_s, at
        )

    def _count(self, outcome: str, n: int) -> None:
        if self._metrics is not None and n:
            self._metrics.feedback_answers.labels(outcome).inc(n)

    def fresh_snapshot(self) -> QualitySnapshot:
        """The window's figures now, from the store (for /admin/shadow)."""
        at = now()
        since = at - self.window_s

        def read(store: FeedbackStore) -> QualitySnapshot:
            return snapshot_of(store.tallies(since), store.agreements(since), self.window_s, at)

        return self._on_request_store(read)

    @staticmethod
    def _discard(store: FeedbackStore | None) -> None:
        if store is None:
            return
        try:
            store.close()
        except Exception as exc:
            logger.debug("closing the feedback store: %s", exc)
