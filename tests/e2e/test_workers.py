"""Several workers behave like one: SIGTERM under load loses nothing, a killed or crashed
worker's gauges go at once. Real `python -m service --workers 2` processes, real HTTP."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import png_bytes
from tests.e2e.test_ops import add_version
from tests.e2e.test_server import _slow_multipart
from tests.support.server import ServerProcess

DRAIN_S = 10


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(c) for c in text.split()]


def _workers(proc: ServerProcess) -> list[int]:
    # The parent's children are the resource tracker of multiprocessing and the workers;
    # the workers are the ones with a listening socket handed down, i.e. serving.
    return [c for c in _children(proc.pid) if "multiprocessing.spawn" in _cmdline(c)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def _client(url: str, digit: bytes, stop: threading.Event, tally: collections.Counter) -> None:
    files = [("files", ("a.png", digit, "image/png"))]
    # A new connection per request: the ones that reach the listener while it closes.
    client = httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))
    while not stop.is_set():
        try:
            r = client.post(url + "/v1/predict", files=files)
            tally[f"status {r.status_code}"] += 1
        except httpx.ConnectError as exc:
            tally["refused" if "Connection refused" in str(exc) else f"lost: {exc!r}"] += 1
            time.sleep(0.005)
        except httpx.TransportError as exc:  # sent, then no answer: reset, closed, timed out
            tally[f"lost: {exc!r}"] += 1
    client.close()


@pytest.mark.parametrize("target", ["parent", "group"])
def test_workers_sigterm_under_load_loses_nothing(tmp_path: Path, mnist_sample, target) -> None:
    proc = ServerProcess(
        args=["--workers", "2"], env={"MNIST_DRAIN_TIMEOUT_S": str(DRAIN_S)}
    ).start(tmp_path)
    digit = png_bytes(mnist_sample[0][0])
    tally: collections.Counter = collections.Counter()
    stop = threading.Event()
    threads = [
        threading.Thread(target=_client, args=(proc.url, digit, stop, tally)) for _ in range(6)
    ]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 20
        while tally["status 200"] < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tally["status 200"] >= 50, tally
        sent_at = time.monotonic()
        if target == "parent":  # what an orchestrator does: PID 1 of the container
            proc.signal(signal.SIGTERM)
        else:  # what a terminal's Ctrl-C or `kill -TERM -pgid` does
            os.killpg(proc.pid, signal.SIGTERM)
        assert proc.proc is not None
        status = proc.proc.wait(DRAIN_S + 10)
        exit_s = time.monotonic() - sent_at
        time.sleep(0.5)  # clients keep trying: they must now be refused
    finally:
        stop.set()
        for t in threads:
            t.join()
        proc.kill()
    lost = {k: v for k, v in tally.items() if k.startswith("lost")}
    assert lost == {}, (tally, proc.log()[-3000:])
    assert set(tally) <= {"status 200", "status 503", "refused"}, tally
    assert tally["refused"] > 0, tally
    assert status == 0, proc.log()[-3000:]
    assert exit_s < DRAIN_S, exit_s


def _gauge(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found, text[:2000]
    return float(found.group(1))


def _open_sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def _gauge_files(folder: Path, pid: int) -> list[str]:
    return sorted(f.name for f in folder.glob(f"gauge_*_{pid}.db"))


@pytest.mark.parametrize(
    "death",
    [signal.SIGKILL, signal.SIGSEGV],  # kill -9 or the OOM killer; a crash in native code
    ids=["sigkill", "crash"],
)
def test_workers_dead_worker_gauges_are_removed(tmp_path: Path, mnist_sample, death) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # The slow uploads are chunked (no declared size): admission counts each one at
    # max_request_bytes against this budget, which must hold all eight.
    proc = ServerProcess(
        args=["--workers", "2"],
        env={"MNIST_MAX_INFLIGHT_BODY_MIB": "1024", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    ).start(tmp_path)
    try:
        files = [("f.png", png_bytes(mnist_sample[0][i])) for i in range(8)]

        def call(_: int) -> int:
            body, headers = _slow_multipart(files, seconds=4.0)
            try:
                r = httpx.post(proc.url + "/v1/predict", content=body, headers=headers, timeout=60)
            except httpx.TransportError:
                return -1  # on the dead worker
            return r.status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(call, i) for i in range(8)]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                # The scrape is itself in flight on one worker.
                if _gauge(proc.url, "mnist_in_flight_requests") >= 9:
                    break
                time.sleep(0.05)
            assert _gauge(proc.url, "mnist_in_flight_requests") >= 9
            # The kernel need not spread connections evenly: kill the busier worker (the one
            # holding more sockets), so the dead one surely had requests in flight.
            victim = max(_workers(proc), key=_open_sockets)
            # Every gauge's file: in flight and queue depth (livesum), model info (livemax).
            assert _gauge_files(metrics_dir, victim) == [
                f"gauge_livemax_{victim}.db",
                f"gauge_livesum_{victim}.db",
            ]
            os.kill(victim, death)
            # The supervisor's own word that it reaped the worker: its gauges are gone by
            # then, whatever the machine is doing meanwhile.
            reaped = f"worker {victim} exited (signal {death.value}); metrics removed; replacement"
            proc.wait_for_log(reaped)
            assert _gauge_files(metrics_dir, victim) == []
            assert list(metrics_dir.glob(f"counter_{victim}.db")), "counters must stay"
            statuses = [f.result() for f in futures]
        assert -1 in statuses, "some requests were in flight on the dead worker"
        assert set(statuses) <= {200, -1}, statuses
        # Only the scrape itself is in flight now. The live workers sample their gauges 10
        # times a second: a bounded wait for their last sample, not for the dead worker.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            values = (
                _gauge(proc.url, "mnist_in_flight_requests"),
                _gauge(proc.url, "mnist_queue_depth"),
            )
            if values == (1.0, 0.0):
                break
            time.sleep(0.05)
        assert values == (1.0, 0.0), (values, proc.log()[-3000:])
        assert victim not in _workers(proc)
    finally:
        assert proc.stop() == 0, proc.log()[-3000:]


ADMIN = "admin-workers-5"


def _served_versions(url: str, times: int = 40) -> collections.Counter:
    """The version `/v1/models` reports, over `times` new connections (any worker answers)."""
    seen: collections.Counter = collections.Counter()
    with httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        for _ in range(times):
            seen[c.get(url + "/v1/models").json()["served"]["version"]] += 1
    return seen


def _reload(proc: ServerProcess, body: dict | None = None) -> httpx.Response:
    return httpx.post(
        proc.url + "/admin/reload",
        json=body,
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=120,
    )


def test_workers_reload_and_sighup_reach_every_worker(tmp_path: Path, mnist_sample) -> None:
    repo = tmp_path / "repo"
    add_version(repo, "1")
    proc = ServerProcess(
        args=["--workers", "2"],
        env={"MNIST_MODEL_REPOSITORY": str(repo), "MNIST_ADMIN_KEY": ADMIN},
    ).start(tmp_path)
    digit = png_bytes(mnist_sample[0][0])
    tally: collections.Counter = collections.Counter()
    stop = threading.Event()
    threads = [
        threading.Thread(target=_client, args=(proc.url, digit, stop, tally)) for _ in range(4)
    ]
    try:
        workers = set(_workers(proc))
        assert len(workers) == 2, workers
        # The server is ready when one worker is; a worker still loading joins the fleet at
        # the published version later (tested below), but is not in a reload's answer yet.
        deadline = time.monotonic() + 90
        while proc.log().count("ready: mnist-cnn") < 2:
            assert time.monotonic() < deadline, proc.log()[-3000:]
            time.sleep(0.1)
        for t in threads:
            t.start()
        # POST /admin/reload on whichever worker answers: both switch before it answers.
        add_version(repo, "2")
        r = _reload(proc)
        assert r.status_code == 200, r.text
        assert {(w["pid"], w["version"], w["error"]) for w in r.json()["workers"]} == {
            (pid, "2", None) for pid in workers
        }, r.json()
        assert _served_versions(proc.url) == {"2": 40}
        # A pinned older version goes everywhere too, not each worker's newest.
        r = _reload(proc, {"version": "1"})
        assert r.status_code == 200, r.text
        assert [w["version"] for w in r.json()["workers"]] == ["1", "1"], r.json()
        assert _served_versions(proc.url) == {"1": 40}
        # SIGHUP to the parent: the newest version, in place (the same worker processes).
        proc.signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while (seen := _served_versions(proc.url, 10)) != {"2": 10}:
            assert time.monotonic() < deadline, (seen, proc.log()[-3000:])
            time.sleep(0.1)
        assert _served_versions(proc.url) == {"2": 40}
        assert set(_workers(proc)) == workers
    finally:
        stop.set()
        for t in threads:
            t.join()
    try:
        # A replacement worker joins at the fleet's version, not at the newest.
        assert _reload(proc, {"version": "1"}).status_code == 200
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while proc.log().count("ready: mnist-cnn") < 3:
            assert time.monotonic() < deadline, proc.log()[-3000:]
            time.sleep(0.1)
        assert victim not in _workers(proc)
        assert _served_versions(proc.url) == {"1": 40}
        r = _reload(proc, {"version": "2"})
        assert r.status_code == 200, r.text
        assert {w["pid"] for w in r.json()["workers"]} == set(_workers(proc))
        assert _served_versions(proc.url) == {"2": 40}
    finally:
        assert proc.stop() == 0, proc.log()[-3000:]
    # In-place reloads close no connection: nothing is lost, unlike a rolling restart.
    assert set(tally) == {"status 200"}, tally
    assert tally["status 200"] > 20, tally
