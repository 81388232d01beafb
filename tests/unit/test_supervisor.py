"""The supervisor's handling of a dead worker: its gauges go, a replacement starts, a stop
signal meanwhile is no crash; a startup failure stops the parent."""

from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path

import pytest
from uvicorn.config import STARTUP_FAILURE, Config

from service.config import Settings
from service.runtime import supervisor as supervisor_module
from service.runtime.fleet import FLEET_DIR_ENV
from service.runtime.supervisor import Supervisor


class FakeProcess:
    """Stands in for uvicorn's `Process`: a pid, an exit code, start/kill/join."""

    next_pid = 7000

    def __init__(self, config: Config | None = None, sockets: list | None = None) -> None:
        FakeProcess.next_pid += 1
        self.pid = FakeProcess.next_pid
        self.exitcode: int | None = None
        self.started = False

    def start(self) -> None:
        self.started = True

    def kill(self) -> None:
        if self.exitcode is None:
            self.exitcode = -signal.SIGKILL

    def join(self) -> None:
        pass


@pytest.fixture
def supervisor(monkeypatch, tmp_path: Path):
    monkeypatch.delenv(FLEET_DIR_ENV, raising=False)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(supervisor_module, "Process", FakeProcess)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    sup = Supervisor(Config(app="service.http.app:app", workers=2), sockets=[], settings=Settings())
    try:
        yield sup
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        shutil.rmtree(sup.fleet.folder, ignore_errors=True)
        os.environ.pop(FLEET_DIR_ENV, None)


def _write_metric_files(folder: Path, pid: int) -> set[str]:
    """The files prometheus-client writes for one worker (every gauge mode is `live*`)."""
    names = {
        f"{kind}_{pid}.db" for kind in ("gauge_livesum", "gauge_livemax", "counter", "histogram")
    }
    for name in names:
        (folder / name).write_bytes(b"")
    return names


@pytest.mark.parametrize(
    ("exitcode", "described"),
    [(-signal.SIGKILL, "signal 9"), (-signal.SIGSEGV, "signal 11"), (1, "exit code 1")],
)
def test_dead_worker_loses_its_gauges_and_is_replaced(
    supervisor, tmp_path: Path, caplog, exitcode: int, described: str
) -> None:
    live, dead = FakeProcess(), FakeProcess()
    supervisor.processes = [live, dead]
    supervisor._known_pids = {live.pid, dead.pid}
    live_files = _write_metric_files(tmp_path, live.pid)
    _write_metric_files(tmp_path, dead.pid)
    dead.exitcode = exitcode
    # Straight on the logger: a test that ran the server's dictConfig stops propagation.
    log = logging.getLogger("service.runtime.supervisor")
    log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="service.runtime.supervisor"):
            supervisor.keep_subprocess_alive()
    finally:
        log.removeHandler(caplog.handler)
    replacement = supervisor.processes[1]
    assert supervisor.processes[0] is live
    assert replacement is not dead
    assert replacement.started
    left = {p.name for p in tmp_path.iterdir()}
    # Its gauges go; its counters and histograms stay, or totals would go backwards.
    assert left == live_files | {f"counter_{dead.pid}.db", f"histogram_{dead.pid}.db"}
    line = f"worker {dead.pid} exited ({described}); metrics removed; replacement {replacement.pid}"
    assert line in caplog.text, caplog.text


def test_startup_failure_stops_the_parent_instead_of_replacing(supervisor, tmp_path) -> None:
    failed = FakeProcess()
    failed.exitcode = STARTUP_FAILURE
    supervisor.processes = [failed]
    supervisor.keep_subprocess_alive()
    assert supervisor.should_exit.is_set()
    assert supervisor.processes == [failed]


def test_running_workers_are_left_alone(supervisor) -> None:
    running = [FakeProcess(), FakeProcess()]
    supervisor.processes = list(running)
    supervisor.keep_subprocess_alive()
    assert supervisor.processes == running
    assert not supervisor.should_exit.is_set()


def test_stop_signal_while_a_dead_worker_is_replaced_is_not_a_crash(supervisor, monkeypatch):
    """SIGTERM lands between noticing a dead worker and spawning its replacement: the
    sockets are closed by then and the spawn fails; the parent must go on to stop."""

    def get_stopped_then_fail(self: FakeProcess) -> None:
        supervisor._on_stop_signal(signal.SIGTERM, None)  # the signal, mid-loop
        raise ValueError("bad value(s) in fds_to_keep")  # what spawning then raises

    dead = FakeProcess()
    dead.exitcode = -signal.SIGKILL
    supervisor.processes = [dead]
    monkeypatch.setattr(FakeProcess, "start", get_stopped_then_fail)
    supervisor.keep_subprocess_alive()
    assert supervisor._stopping
    assert signal.SIGTERM in supervisor.signal_queue  # handled next: the parent exits


def test_a_spawn_failure_without_a_stop_signal_still_raises(supervisor, monkeypatch):
    def spawn_fails(self: FakeProcess) -> None:
        raise ValueError("bad value(s) in fds_to_keep")

    dead = FakeProcess()
    dead.exitcode = -signal.SIGKILL
    supervisor.processes = [dead]
    monkeypatch.setattr(FakeProcess, "start", spawn_fails)
    with pytest.raises(ValueError, match="fds_to_keep"):
        supervisor.keep_subprocess_alive()
