"""One dictConfig for the app and uvicorn's loggers; optional JSON lines.

Records reach stderr through a bounded buffer and one writer thread, so a stalled log reader
(a full pipe) stalls only that thread: records beyond the buffer are dropped and counted, and
one warning line says how many once writing resumes.
"""

from __future__ import annotations

import collections
import copy
import itertools
import json
import logging
import os
import sys
import threading
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
        elif record.exc_text:  # rendered when buffered (QueuedHandler.emit)
            out["exc_info"] = record.exc_text
        return json.dumps(out)


#: Records waiting for the writer thread by default (Settings.log_queue_records).
QUEUE_RECORDS = 10_000

#: How long the writer lets records gather after the first one before writing them all.
GATHER_S = 0.01


class QueuedHandler(logging.Handler):
    """Hands records to one writer thread through a bounded buffer that never blocks the
    caller: when it is full the record is dropped and counted (`dropped`).

    The writer is woken once per batch, not per record: the first record into an empty
    buffer wakes it, it lets more gather for GATHER_S, then formats them all and writes
    them in one system call. A per-record wake-up (stdlib QueueHandler and QueueListener)
    cost the event loop a condition-variable hand-off per access line (docs/decisions.md).
    """

    def __init__(self, stream: Any = None, capacity: int = QUEUE_RECORDS) -> None:
        super().__init__()
        self.capacity = capacity
        self.records: collections.deque[logging.LogRecord] = collections.deque()
        self.stream = stream or sys.stderr
        try:
            self.fd: int | None = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # e.g. a test's in-memory stream
            self.fd = None
        self.formatter = logging.Formatter()
        self._drops = itertools.count()  # next() is atomic under the GIL; += is not
        self._dropped = 0
        self._reported = 0
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._closing = False
        # Neither format shows the caller, thread or process: not collecting them saves a
        # stack walk and three lookups per record (the logging HOWTO's "Optimization").
        logging._srcfile = None
        logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()
        _HANDLERS.add(self)

    @property
    def dropped(self) -> int:
        return self._dropped

    def setFormatter(self, fmt: logging.Formatter | None) -> None:  # noqa: N802 - logging API
        self.formatter = fmt or logging.Formatter()

    # NOTE: the handler lock is not taken: deque.append and len are atomic under the GIL,
    # and the writer thread is the only consumer.
    def handle(self, record: logging.LogRecord) -> bool:
        if self.filters and not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) >= self.capacity:
            self._dropped = next(self._drops) + 1
            return
        if record.exc_info:
            # Render the traceback now and drop the exception: a buffered record must not
            # keep a traceback's frames (and whatever arrays they hold) alive.
            record = copy.copy(record)
            record.exc_text = logging.Formatter().formatException(record.exc_info)  # type: ignore[arg-type]
            record.exc_info = None
        self.records.append(record)
        if not self._wake.is_set():
            self._wake.set()

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if not self._closing:
                time.sleep(GATHER_S)
            self._idle.clear()
            self._wake.clear()
            lines = []
            formatter = self.formatter or logging.Formatter()
            while self.records:
                record = self.records.popleft()
                try:
                    lines.append(formatter.format(record))
                except Exception:  # a bad record must not end the writer
                    lines.append(f"unformattable log record from {record.name}")
            dropped = self._dropped
            if dropped > self._reported:
                lines.append(
                    formatter.format(
                        logging.LogRecord(
                            "service.logging",
                            logging.WARNING,
                            __file__,
                            0,
                            "%d log records dropped: the log reader was not keeping up",
                            (dropped - self._reported,),
                            None,
                        )  # fmt: skip
                    )
                )
                self._reported = dropped
            if lines:
                self._write(("\n".join(lines) + "\n").encode("utf-8", "backslashreplace"))
            self._idle.set()
            if self._closing and not self.records:
                return

    def _write(self, data: bytes) -> None:
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

    # ------------------------------------------------------------------ flushing

    def flush(self, timeout_s: float = 1.0) -> None:
        """Wait (bounded) until the writer has written everything buffered."""
        deadline = time.monotonic() + timeout_s
        while (self.records or not self._idle.is_set()) and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.005)

    def close(self) -> None:
        self.flush()
        self._closing = True
        self._wake.set()
        self._thread.join(1.0)  # a writer stuck on a stalled reader is a daemon: let it be
        super().close()


_HANDLERS: weakref.WeakSet[QueuedHandler] = weakref.WeakSet()


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
