"""Reload does not leak: 500 reloads through POST /admin/reload and SIGHUP against a real
server, a sixth of them real loads of another version, keep its RSS within 5 %."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from tests.e2e.test_ops import add_version
from tests.support.server import ServerProcess

ADMIN = "admin-reload-3"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_reload_500_times_keeps_rss_within_5_percent(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_version(repo, "1")
    add_version(repo, "2")  # the same weights under another version: a real load each time
    proc = ServerProcess(env={"MNIST_MODEL_REPOSITORY": str(repo), "MNIST_ADMIN_KEY": ADMIN}).start(
        tmp_path
    )
    admin = httpx.Client(
        base_url=proc.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60
    )
    served = "2"
    real = 0

    def reload(version: str) -> None:
        nonlocal served, real
        r = admin.post("/admin/reload", json={"version": version})
        assert r.status_code == 200, r.text
        assert r.json()["reloaded"] == (version != served), r.json()
        real += version != served
        served = version

    def hangup() -> None:
        nonlocal served, real
        done = proc.log().count("reload finished: serving")
        proc.signal(signal.SIGHUP)  # reloads the newest version, "2"
        deadline = time.monotonic() + 60
        while proc.log().count("reload finished: serving") == done:
            assert time.monotonic() < deadline, proc.log()[-2000:]
            time.sleep(0.01)
        real += served != "2"
        served = "2"

    try:
        for i in range(10):  # allocator and torch caches settle over the first loads
            reload("1" if i % 2 == 0 else "2")
        start_mb = _rss_mb(proc.pid)
        for i in range(500):
            if i % 10 == 0:
                reload("1" if served == "2" else "2")
            elif i % 10 == 5:
                hangup()
            else:
                reload(served)
        end_mb = _rss_mb(proc.pid)
        models = httpx.get(proc.url + "/v1/models").json()
        assert models["served"]["version"] == served
    finally:
        admin.close()
        assert proc.stop() == 0, proc.log()[-2000:]
    assert real >= 75, real
    assert end_mb <= start_mb * 1.05, f"RSS {start_mb:.1f} -> {end_mb:.1f} MB over 500 reloads"
    assert "Traceback" not in proc.log()
