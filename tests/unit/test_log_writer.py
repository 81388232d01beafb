"""The log writer: lines in order through one thread, batched writes, drops counted and told."""

from __future__ import annotations

import logging
import os

import pytest

from service.runtime import logging_config
from service.runtime.logging_config import QueuedHandler


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def _read_all(fd: int) -> str:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_lines_arrive_in_order_and_batched(monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes | memoryview) -> int:
        writes.append(fd)
        return real_write(fd, data)

    monkeypatch.setattr(logging_config.os, "write", counting_write)
    monkeypatch.setattr(logging_config, "GATHER_S", 0.2)
    with os.fdopen(write_end, "w") as stream:
        handler = QueuedHandler(stream)
        log = _logger(handler, "test.writer.order")
        for i in range(100):
            log.info("line %d", i)
        handler.flush(5.0)
        text = _read_all(read_end)
        handler.close()
    os.close(read_end)
    assert text.splitlines() == [f"line {i}" for i in range(100)]
    assert len(writes) < 10, "100 lines gathered into a few writes, not one each"


def test_a_full_buffer_drops_and_says_how_many(monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    monkeypatch.setattr(logging_config, "GATHER_S", 0.5)
    with os.fdopen(write_end, "w") as stream:
        handler = QueuedHandler(stream, capacity=3)
        log = _logger(handler, "test.writer.drops")
        for i in range(10):
            log.info("line %d", i)  # the writer sleeps out its gathering time meanwhile
        assert handler.dropped == 7
        handler.flush(5.0)
        text = _read_all(read_end)
        handler.close()
    os.close(read_end)
    lines = text.splitlines()
    assert lines[:3] == ["line 0", "line 1", "line 2"]
    assert lines[3] == "7 log records dropped: the log reader was not keeping up"


def test_a_traceback_is_rendered_when_buffered() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stream:
        handler = QueuedHandler(stream)
        log = _logger(handler, "test.writer.exc")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
        record = handler.records[0] if handler.records else None
        if record is not None:
            assert record.exc_info is None  # no frames kept alive in the buffer
        handler.flush(5.0)
        text = _read_all(read_end)
        handler.close()
    os.close(read_end)
    assert "failed" in text
    assert "ValueError: boom" in text
