"""Supervisor: uvicorn's multi-process parent, made to stop cleanly, forget dead workers and
keep every worker on one model version."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
from pathlib import Path
from types import FrameType

from prometheus_client import multiprocess as prom_mp
from uvicorn.config import Config
from uvicorn.supervisors.multiprocess import Multiprocess

from service.config import Settings
from service.fleet import FLEET_DIR_ENV, Fleet
from service.metrics import multiprocess_dir
from service.repository import ModelLoadError, ModelRepository

logger = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: Linux's SO_ATTACH_FILTER, and a classic BPF program of one instruction: "return 0", i.e.
#: drop every packet that reaches the socket.
_SO_ATTACH_FILTER = 26
_DROP_ALL = (ctypes.c_uint8 * 8).from_buffer_copy(struct.pack("HBBI", 0x06, 0, 0, 0))


def _stop_new_connections(sock: socket.socket) -> None:
    """Make a listening socket take no new connections while keeping its accept backlog.

    Closing a listener resets the connections still waiting in its backlog (they have sent
    their request and lose it); a drop-all filter stops new handshakes first, so the workers
    can accept what is queued before they close. A client whose SYN is dropped retries it
    after a second and by then finds the socket closed: a clean refusal.
    """
    if not sys.platform.startswith("linux"):
        return
    program = struct.pack("HL", 1, ctypes.addressof(_DROP_ALL))  # struct sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, program)
    except OSError as exc:
        logger.warning("cannot filter the listening socket: %s", exc)


class Supervisor(Multiprocess):
    """Runs `config.workers` processes on the sockets bound by the caller.

    Two changes to uvicorn's parent:

    - on SIGTERM/SIGINT it closes its own copy of the listening sockets at once. uvicorn's
      parent kept it open until every worker had drained, so the kernel went on completing
      handshakes into a backlog that no process would accept: those clients hung, then were
      reset when the parent exited. With it closed, the socket dies with the last worker's
      listener and new connections are refused while accepted ones drain.
    - when a worker is replaced (it died, or SIGTTOU retired it) its `live*` gauge files
      are removed, so `/metrics` stops counting its requests in flight.

    And one replacement: SIGHUP no longer restarts the workers one by one. It publishes the
    pinned or newest version in the fleet folder (service/fleet.py) and relays SIGHUP to
    every worker, which reloads in place; a worker's SIGUSR1 (after POST /admin/reload)
    relays the version that worker published.
    """

    def __init__(self, config: Config, sockets: list[socket.socket], settings: Settings) -> None:
        super().__init__(config, sockets)
        self._stopping = False
        self._known_pids: set[int] = set()
        self._repository = ModelRepository(settings)
        # The workers are spawned later and inherit the environment: they find the folder.
        folder = tempfile.mkdtemp(prefix="mnist-fleet-")
        os.environ[FLEET_DIR_ENV] = folder
        self.fleet = Fleet(Path(folder))
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._on_stop_signal)

    def run(self) -> None:
        try:
            super().run()
        finally:
            shutil.rmtree(self.fleet.folder, ignore_errors=True)

    def _on_stop_signal(self, sig: int, frame: FrameType | None) -> None:
        # NOTE: runs in the main thread between bytecodes: only close file descriptors and
        # queue the signal here (Event.set could deadlock on the lock the loop is waiting on).
        if not self._stopping:
            self._stopping = True
            for sock in self.sockets:
                _stop_new_connections(sock)
                sock.close()
        self.signal_queue.append(sig)

    def init_processes(self) -> None:
        super().init_processes()
        self._forget_replaced()

    def keep_subprocess_alive(self) -> None:
        if self._stopping:
            return  # the sockets are closed: a replacement could not be started anyway
        try:
            super().keep_subprocess_alive()
        except ValueError:
            # A stop signal closed the sockets while a dead worker was being replaced:
            # spawning with a closed socket raises "bad value(s) in fds_to_keep". Nothing
            # needs replacing any more; the parent goes on to stop and exits 0.
            if not self._stopping:
                raise
        self._forget_replaced()

    def handle_signals(self) -> None:
        super().handle_signals()
        self._forget_replaced()

    def handle_hup(self) -> None:
        """Publish the pinned or newest version and have every worker reload to it."""
        if self._stopping:
            return
        try:
            folder = self._repository.resolve()
            version = self._repository.read_card(folder).version
        except ModelLoadError as exc:
            logger.warning("SIGHUP: reload refused, the workers keep serving: %s", exc)
            return
        generation = self.fleet.publish(version)
        logger.info("SIGHUP: every worker reloads to v%s (generation %d)", version, generation)
        self._relay()

    def handle_usr1(self) -> None:
        """A worker published a version (POST /admin/reload): relay it to every worker."""
        if not self._stopping:
            self._relay()

    def _relay(self) -> None:
        # Only workers that have reported have their SIGHUP handler installed (SIGHUP's
        # default action would kill the others); those catch up when they report in.
        reported = self.fleet.reports()
        for process in self.processes:
            if process.pid in reported:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGHUP)

    def handle_ttin(self) -> None:
        if not self._stopping:
            super().handle_ttin()

    def _forget_replaced(self) -> None:
        live = {p.pid for p in self.processes if p.pid is not None}
        gone = self._known_pids - live
        self._known_pids = live
        if not gone:
            return
        for pid in sorted(gone):
            self.fleet.forget(pid)
        if multiprocess_dir() is None:
            return
        for pid in sorted(gone):
            # Removes only the `live*` gauge files: counters and histograms of a dead
            # worker still count, or totals would go backwards.
            prom_mp.mark_process_dead(pid)
            logger.info("worker %d gone: its live gauges are removed", pid)
