"""Watch: blocks the supervisor until a worker exits, answers a health check or owes one, or
a signal arrives, so that a dead worker is handled the moment it dies."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import time
from multiprocessing.connection import wait
from types import FrameType
from typing import Any

from uvicorn.supervisors.multiprocess import Process


def describe_exit(exitcode: int | None) -> str:
    """`signal 9` for a worker killed by a signal, `exit code 1` for one that exited."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def _ignore(sig: int, frame: FrameType | None) -> None:
    pass


class Watch:
    """Health checks without blocking, and one wait for every event the supervisor handles.

    uvicorn's parent slept 0.5 s between rounds and then pinged its workers one by one,
    waiting up to the health-check timeout for each answer. Its pipe to a worker stays open
    in the parent, so a worker killed while a ping was out gave no EOF: the parent waited
    the whole timeout (60 s here) before it noticed, and the dead worker's gauges stayed
    that long. Here a ping is sent and its answer read later; the wait also wakes on each
    worker's process sentinel (closed by the kernel when it exits) and on a byte the signal
    machinery writes for every signal, SIGCHLD included.
    """

    def __init__(self, interval_s: float, timeout_s: float) -> None:
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._sent: dict[Process, float] = {}  # ping sent, answer not read yet
        self._next: dict[Process, float] = {}  # when the next ping is due
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)
        self._saved_fd = signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        # NOTE: SIGCHLD is ignored by default, and an ignored signal writes no wake-up byte:
        # a no-op handler makes a child's exit wake the wait even if a sentinel is held open
        # by a grandchild that inherited it.
        self._saved_chld: Any = signal.signal(signal.SIGCHLD, _ignore)

    def close(self) -> None:
        signal.set_wakeup_fd(self._saved_fd)
        signal.signal(signal.SIGCHLD, self._saved_chld)
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)

    def wait(self, processes: list[Process]) -> None:
        """Send the pings that are due, then block until something happens or the next
        ping or health-check deadline comes."""
        now = time.monotonic()
        running = [p for p in processes if p.exitcode is None and not p.parent_conn.closed]
        for gone in set(self._sent) - set(running):
            del self._sent[gone]
        for gone in set(self._next) - set(running):
            del self._next[gone]
        for process in running:
            if process not in self._sent and now >= self._next.get(process, now):
                with contextlib.suppress(OSError):
                    process.parent_conn.send(b"ping")
                self._sent[process] = now
        # At least once an interval, as uvicorn's loop: whatever else needs the parent, it
        # does not wait longer than before.
        deadlines = [now + self.interval_s]
        deadlines += [sent + self.timeout_s for sent in self._sent.values()]
        deadlines += [self._next[p] for p in running if p not in self._sent and p in self._next]
        timeout = max(0.0, min(deadlines) - now)
        waitables: list[Any] = [self._wakeup_r]
        waitables += [p.process.sentinel for p in running]
        waitables += [p.parent_conn for p in self._sent]
        ready = wait(waitables, timeout)
        if self._wakeup_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wakeup_r, 512):
                    pass
        answered = time.monotonic()
        for process in list(self._sent):
            if process.parent_conn in ready:
                with contextlib.suppress(OSError, EOFError, pickle.UnpicklingError):
                    process.parent_conn.recv()
                del self._sent[process]
                self._next[process] = answered + self.interval_s

    def hung(self, process: Process) -> bool:
        """A ping to this running worker has gone unanswered for the health-check timeout."""
        sent = self._sent.get(process)
        return sent is not None and time.monotonic() - sent > self.timeout_s
