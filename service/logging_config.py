"""One dictConfig for the app and uvicorn's loggers; optional JSON lines.

Records reach stderr through a bounded queue and one writer thread, so a stalled log reader
(a full pipe) stalls only that thread: records beyond the queue are dropped and counted, and
one warning line says how many once writing resumes.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import logging
import logging.handlers
import os
import queue
import sys
import time
import weakref
from datetime import UTC, datetime
from typing import Any

#: Probe and scrape paths kept out of the access log.
QUIET_PATHS = ("/v2/health/live", "/v2/health/ready", "/metrics")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, built with json.dumps so quotes never break it."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "method", "path", "status", "latency_ms", "images", "client"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:  # rendered before queueing (QueuedHandler.prepare)
            out["exc_info"] = record.exc_text
        return json.dumps(out)


#: Records waiting for the writer thread by default (Settings.log_queue_records).
QUEUE_RECORDS = 10_000


class _Writer(logging.handlers.QueueListener):
    """The writer thread: formats records, writes them, and reports drops once a write has
    gone through again."""

    def __init__(self, records: queue.Queue[Any], stream: Any, owner: QueuedHandler) -> None:
        super().__init__(records, respect_handler_level=False)
        self.records = records
        self.stream = stream
        self.owner = owner
        self.formatter = logging.Formatter()
        self.reported = 0
        try:
            self.fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # e.g. a test's in-memory stream
            self.fd = None

    def handle(self, record: logging.LogRecord) -> None:
        self._write(record)  # blocks while the reader is stalled: only this thread waits
        dropped = self.owner.dropped
        if dropped > self.reported:
            warning = logging.LogRecord(
                "service.logging", logging.WARNING, __file__, 0,
                "%d log records dropped: the log reader was not keeping up",
                (dropped - self.reported,), None,
            )  # fmt: skip
            self.reported = dropped
            self._write(warning)

    def _write(self, record: logging.LogRecord) -> None:
        data = (self.formatter.format(record) + "\n").encode("utf-8", "backslashreplace")
        try:
            if self.fd is None:
                self.stream.write(data.decode())
                self.stream.flush()
                return
            # NOTE: straight to the file descriptor, not through a logging.Handler or
            # sys.stderr: a write blocked on a full pipe would hold their locks, and
            # logging.shutdown() and the interpreter's exit both take those locks.
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:  # the reader is gone (EPIPE): nothing left to tell
            pass

    def enqueue_sentinel(self) -> None:
        # NOTE: the stdlib's blocking put would hang the exit behind a stalled reader.
        with contextlib.suppress(queue.Full):
            self.records.put_nowait(None)


_HANDLERS: weakref.WeakSet[QueuedHandler] = weakref.WeakSet()


class QueuedHandler(logging.handlers.QueueHandler):
    """A QueueHandler whose queue is bounded and never blocks the caller: when it is full
    the record is dropped and counted (`dropped`)."""

    def __init__(self, stream: Any = None, capacity: int = QUEUE_RECORDS) -> None:
        records: queue.Queue[Any] = queue.Queue(capacity)
        super().__init__(records)
        self.records = records
        self._drops = itertools.count()  # next() is atomic under the GIL; += is not
        self._dropped = 0
        self.writer = _Writer(records, stream or sys.stderr, self)
        self.writer.start()
        _HANDLERS.add(self)

    @property
    def dropped(self) -> int:
        return self._dropped

    def setFormatter(self, fmt: logging.Formatter | None) -> None:  # noqa: N802 - logging API
        self.writer.formatter = fmt or logging.Formatter()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Render the message and traceback now and drop the exception: a queued record must
        # not keep a traceback's frames (and whatever arrays they hold) alive.
        record = copy.copy(record)
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.records.put_nowait(record)
        except queue.Full:
            self._dropped = next(self._drops) + 1

    def flush(self, timeout_s: float = 1.0) -> None:
        """Wait (bounded) until the writer has taken everything queued."""
        deadline = time.monotonic() + timeout_s
        while not self.records.empty() and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.flush()
        self.writer.enqueue_sentinel()
        thread = self.writer._thread
        if thread is not None:
            thread.join(1.0)  # a writer stuck on a stalled reader is a daemon: let it be
        super().close()


def dropped_records() -> int:
    """Records dropped so far by this process's queued log handlers."""
    return sum(h.dropped for h in list(_HANDLERS))


def flush_logs(timeout_s: float = 1.0) -> None:
    """Give the writer thread a bounded moment to write what is queued (before exiting)."""
    for handler in list(_HANDLERS):
        handler.flush(timeout_s)


def build_log_config(
    level: str = "info", json_logs: bool = False, queue_records: int = QUEUE_RECORDS
) -> dict[str, Any]:
    formatter = (
        {"()": JsonFormatter}
        if json_logs
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {"()": QueuedHandler, "formatter": "default", "capacity": queue_records}
        },
        "loggers": {
            "service": {"handlers": ["default"], "level": level, "propagate": False},
            "mnist.access": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"handlers": ["default"], "level": level, "propagate": False},
            # Our middleware writes the access line (with request id); uvicorn's is off.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
        "root": {"handlers": ["default"], "level": "WARNING"},
    }
