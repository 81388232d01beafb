"""The supervisor's guard around replacing a dead worker while a stop signal arrives."""

from __future__ import annotations

import os
import shutil
import signal

import pytest
from uvicorn.config import Config
from uvicorn.supervisors.multiprocess import Multiprocess

from service.config import Settings
from service.fleet import FLEET_DIR_ENV
from service.supervisor import Supervisor


@pytest.fixture
def supervisor(monkeypatch):
    monkeypatch.delenv(FLEET_DIR_ENV, raising=False)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    sup = Supervisor(Config(app="service.app:app", workers=2), sockets=[], settings=Settings())
    try:
        yield sup
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        shutil.rmtree(sup.fleet.folder, ignore_errors=True)
        os.environ.pop(FLEET_DIR_ENV, None)


def test_stop_signal_while_a_dead_worker_is_replaced_is_not_a_crash(supervisor, monkeypatch):
    """SIGTERM lands between noticing a dead worker and spawning its replacement: the
    sockets are closed by then and the spawn fails; the parent must go on to stop."""

    def notice_death_then_get_stopped(self: Multiprocess) -> None:
        supervisor._on_stop_signal(signal.SIGTERM, None)  # the signal, mid-loop
        raise ValueError("bad value(s) in fds_to_keep")  # what spawning then raises

    monkeypatch.setattr(Multiprocess, "keep_subprocess_alive", notice_death_then_get_stopped)
    supervisor.keep_subprocess_alive()
    assert supervisor._stopping
    assert signal.SIGTERM in supervisor.signal_queue  # handled next: the parent exits


def test_a_spawn_failure_without_a_stop_signal_still_raises(supervisor, monkeypatch):
    def spawn_fails(self: Multiprocess) -> None:
        raise ValueError("bad value(s) in fds_to_keep")

    monkeypatch.setattr(Multiprocess, "keep_subprocess_alive", spawn_fails)
    with pytest.raises(ValueError, match="fds_to_keep"):
        supervisor.keep_subprocess_alive()
