"""The supervisor's wait: it wakes when a worker exits, even with a ping unanswered, reads
health-check answers without blocking, and calls a worker hung only after the timeout."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest

from service.runtime.watch import Watch, describe_exit

_fork = multiprocessing.get_context("fork")


def _answer_pings(conn: Connection) -> None:
    while True:
        conn.recv()
        conn.send(True)


def _never_answer(conn: Connection) -> None:
    time.sleep(60)


class Worker:
    """The parts of uvicorn's `Process` the watch uses: `process`, `parent_conn`, `exitcode`.
    The parent keeps the child's end of the pipe open, as uvicorn does: a dead worker gives
    the parent no EOF."""

    def __init__(self, target: Any) -> None:
        self.parent_conn, self.child_conn = _fork.Pipe()
        self.process = _fork.Process(target=target, args=(self.child_conn,), daemon=True)
        self.process.start()

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def stop(self) -> None:
        if self.process.exitcode is None:
            self.process.kill()
        self.process.join()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


@pytest.fixture
def watch() -> Iterator[Watch]:
    w = Watch(interval_s=0.05, timeout_s=60)
    yield w
    w.close()


def _timed_wait(watch: Watch, processes: list[Any]) -> float:
    started = time.monotonic()
    watch.wait(processes)
    return time.monotonic() - started


def test_watch_wakes_when_a_worker_dies_with_a_ping_unanswered(watch, workers) -> None:
    worker = Worker(_never_answer)
    workers.append(worker)
    watch.wait([worker])  # sends the first ping; its answer never comes
    watch.interval_s = 30  # nothing else is due for a long time: only the death can wake it
    os.kill(worker.process.pid, signal.SIGKILL)
    # uvicorn's parent waited the whole health-check timeout (60 s) here. Another signal
    # may wake the wait first (pytest's children): wait again until the death is seen.
    started = time.monotonic()
    while worker.exitcode is None:
        watch.wait([worker])
    assert time.monotonic() - started < 10
    assert worker.exitcode == -signal.SIGKILL


def test_watch_reads_answers_so_a_worker_that_answers_is_never_hung(workers) -> None:
    worker = Worker(_answer_pings)
    workers.append(worker)
    watch = Watch(interval_s=0.05, timeout_s=0.2)
    try:
        end = time.monotonic() + 1  # five timeouts, twenty pings
        while time.monotonic() < end:
            watch.wait([worker])
            assert not watch.hung(worker)
    finally:
        watch.close()


def test_watch_calls_a_silent_worker_hung_after_the_timeout(workers) -> None:
    worker = Worker(_never_answer)
    workers.append(worker)
    watch = Watch(interval_s=0.05, timeout_s=0.2)
    try:
        watch.wait([worker])
        assert not watch.hung(worker)
        deadline = time.monotonic() + 10
        while not watch.hung(worker):
            assert time.monotonic() < deadline
            watch.wait([worker])
    finally:
        watch.close()


def test_watch_wakes_on_any_child_exit_through_sigchld(watch) -> None:
    watch.interval_s = 30
    child = subprocess.Popen([sys.executable, "-c", "pass"])  # not a worker: only SIGCHLD
    try:
        assert _timed_wait(watch, []) < 10
    finally:
        child.wait()


@pytest.mark.parametrize(
    ("exitcode", "text"), [(-9, "signal 9"), (1, "exit code 1"), (0, "exit code 0")]
)
def test_describe_exit(exitcode: int, text: str) -> None:
    assert describe_exit(exitcode) == text
