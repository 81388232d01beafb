"""Supervisor: uvicorn's multi-process parent, made to stop cleanly, replace a dead worker and
drop its gauges the moment it dies, and keep every worker on one model version."""

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
from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from service.config import Settings
from service.runtime.fleet import FLEET_DIR_ENV, Fleet
from service.runtime.metrics import multiprocess_dir
from service.runtime.watch import Watch, describe_exit
from service.serving.quota import QUOTA_FILE, Quota
from service.serving.repository import ModelLoadError, ModelRepository

logger = logging.getLogger(__name__)

#: How often each worker is pinged (uvicorn's round is 0.5 s too).
_PING_INTERVAL_S = 0.5

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
    - it learns of a worker's exit at once (service/runtime/watch.py: a blocking wait on the
      workers' sentinels, health-check answers and signals, in place of a 0.5 s sleep and
      pings that block), removes the dead worker's `live*` gauge files, so `/metrics` stops
      counting its requests in flight, and starts its replacement; it logs
      "worker <pid> exited (signal 9); metrics removed; replacement <pid>". A worker
      retired by SIGTTOU loses its gauge files too.

    And one replacement: SIGHUP no longer restarts the workers one by one. It publishes the
    pinned or newest version in the fleet folder (service/runtime/fleet.py) and relays SIGHUP to
    every worker, which re-reads its API keys and reloads in place; a worker's SIGUSR1 (after
    POST /admin/reload) relays the version that worker published.
    """

    def __init__(self, config: Config, sockets: list[socket.socket], settings: Settings) -> None:
        super().__init__(config, sockets)
        self._stopping = False
        self._known_pids: set[int] = set()
        self._watch: Watch | None = None  # from `run` on: it takes over the signal wake-up fd
        self._repository = ModelRepository(settings)
        # The workers are spawned later and inherit the environment: they find the folder.
        folder = tempfile.mkdtemp(prefix="mnist-fleet-")
        os.environ[FLEET_DIR_ENV] = folder
        self.fleet = Fleet(Path(folder))
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._on_stop_signal)

    def run(self) -> None:
        """uvicorn's `Multiprocess.run`, with its 0.5 s sleep replaced by `Watch.wait`."""
        logger.info("Started parent process [%d]", os.getpid())
        try:
            self.init_processes()
            watch = self._watch = Watch(_PING_INTERVAL_S, self.config.timeout_worker_healthcheck)
            try:
                while not self.should_exit.is_set():
                    watch.wait(self.processes)
                    self.handle_signals()
                    self.keep_subprocess_alive()
            finally:
                watch.close()
                self._watch = None
            self.terminate_all()
            self.join_all()
            logger.info("Stopping parent process [%d]", os.getpid())
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
        """Replace every worker that has exited or stopped answering health checks."""
        for idx, process in enumerate(self.processes):
            if self._stopping or self.should_exit.is_set():
                return  # the sockets are closed: a replacement could not be started anyway
            if process.exitcode is None:  # waitpid(WNOHANG): still running
                if self._watch is None or not self._watch.hung(process):
                    continue
                logger.error(
                    "worker %s answered no health check in %d s: killing it",
                    process.pid,
                    self.config.timeout_worker_healthcheck,
                )
            process.kill()  # a no-op for one that has exited; closes its pipes
            process.join()
            self._replace(idx, process)

    def _replace(self, idx: int, dead: Process) -> None:
        assert dead.pid is not None
        # First the gauges: the replacement's start-up must not delay them.
        self._forget(dead.pid)
        self._known_pids.discard(dead.pid)
        if dead.exitcode == STARTUP_FAILURE:
            # As uvicorn: the app, or the socket, is broken and every replacement would fail.
            logger.error("worker %d failed to start: stopping the parent", dead.pid)
            self.should_exit.set()
            return
        replacement = self._spawn()
        if replacement is None:
            return
        self.processes[idx] = replacement
        assert replacement.pid is not None
        self._known_pids.add(replacement.pid)
        logger.warning(
            "worker %d exited (%s); metrics removed; replacement %d",
            dead.pid,
            describe_exit(dead.exitcode),
            replacement.pid,
        )

    def _spawn(self) -> Process | None:
        """A started worker, or None when a stop signal closed the sockets meanwhile."""
        process = Process(self.config, self.sockets)
        try:
            process.start()
        except ValueError:
            # A stop signal closed the sockets while a dead worker was being replaced:
            # spawning with a closed socket raises "bad value(s) in fds_to_keep". Nothing
            # needs replacing any more; the parent goes on to stop and exits 0.
            if not self._stopping:
                raise
            return None
        return process

    def handle_signals(self) -> None:
        super().handle_signals()
        self._forget_replaced()

    def handle_hup(self) -> None:
        """Publish the pinned or newest version and have every worker reload to it."""
        if self._stopping:
            return
        try:
            version = self._repository.plan().default
            self._repository.read_card(self._repository.resolve(version))
        except ModelLoadError as exc:
            # Still relayed: the workers re-read their API keys, and keep their version.
            logger.warning("SIGHUP: reload refused, the workers keep serving: %s", exc)
            self._relay()
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
        # Workers that left `self.processes` by another path than `_replace` (SIGTTOU).
        live = {p.pid for p in self.processes if p.pid is not None}
        gone = self._known_pids - live
        self._known_pids = live
        for pid in sorted(gone):
            self._forget(pid)
            logger.info("worker %d retired; metrics removed", pid)

    def _forget(self, pid: int) -> None:
        self.fleet.forget(pid)
        # Its requests in progress no longer count against their keys' concurrency.
        Quota.forget(self.fleet.folder / QUOTA_FILE, pid)
        if multiprocess_dir() is not None:
            # Removes only the `live*` gauge files (every gauge is one: service/runtime/metrics.py):
            # counters and histograms of a dead worker still count, or totals would go
            # backwards and read as a counter reset.
            prom_mp.mark_process_dead(pid)
