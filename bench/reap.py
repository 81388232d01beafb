"""How long a dead worker's gauges outlive it, under load.

    python -m bench.reap                 # 10 SIGKILLs of one of 2 workers, 8 clients busy
    python -m bench.reap --kills 20 --clients 16 --signal SEGV

Starts `python -m service --workers 2` with its own PROMETHEUS_MULTIPROC_DIR, keeps
`--clients` threads posting one-image requests, and then, `--kills` times: kills the worker
holding more connections, times until its `live*` gauge files are gone (from then on no
scrape counts it) and until the supervisor logs that it reaped it, and waits for the
replacement to be ready.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.support.server import ServerProcess

logger = logging.getLogger("bench.reap")


def _workers(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(c) for c in children if b"multiprocessing.spawn" in _cmdline(int(c))]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def _sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def _load(url: str, stop: threading.Event, done: list[int]) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(buf, "PNG")
    files = [("files", ("a.png", buf.getvalue(), "image/png"))]
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            with contextlib.suppress(httpx.TransportError):
                client.post(url + "/v1/predict", files=files)
                done[0] += 1


def _wait(condition: object, timeout_s: float, step_s: float = 0.0005) -> float:
    """Seconds until `condition()` holds (polled every `step_s`)."""
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - started > timeout_s:
            raise TimeoutError("condition not met")
        time.sleep(step_s)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reap", description=__doc__)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--signal", default="KILL", help="KILL, SEGV, ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    sig = signal.Signals["SIG" + args.signal]
    with tempfile.TemporaryDirectory(prefix="bench-reap-") as tmp:
        metrics = Path(tmp) / "metrics"
        metrics.mkdir()
        env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics)}
        proc = ServerProcess(env=env, args=["--workers", "2"]).start(Path(tmp), timeout_s=120)
        stop, done = threading.Event(), [0]
        clients = [
            threading.Thread(target=_load, args=(proc.url, stop, done)) for _ in range(args.clients)
        ]
        for t in clients:
            t.start()
        files_s: list[float] = []
        logged_s: list[float] = []
        try:
            _wait(lambda: proc.log().count("ready: ") >= 2, 120, 0.1)
            for i in range(args.kills):
                before = done[0]
                _wait(lambda b=before: done[0] > b + 200, 60, 0.01)  # under load
                victim = max(_workers(proc.pid), key=_sockets)
                gauges = [
                    metrics / f"gauge_livesum_{victim}.db",
                    metrics / f"gauge_livemax_{victim}.db",
                ]
                assert all(g.exists() for g in gauges), gauges
                line = f"worker {victim} exited (signal {sig.value}); metrics removed"
                os.kill(victim, sig)
                killed = time.monotonic()
                _wait(lambda g=gauges: not any(p.exists() for p in g), 60)
                files_s.append(time.monotonic() - killed)
                _wait(lambda t=line: t in proc.log(), 60, 0.002)
                logged_s.append(time.monotonic() - killed)
                logger.info(
                    "kill %d: gauges gone %.1f ms, reaped line %.1f ms",
                    i + 1, files_s[-1] * 1000, logged_s[-1] * 1000,
                )  # fmt: skip
                _wait(lambda n=i: proc.log().count("ready: ") >= 3 + n, 120, 0.1)
        finally:
            stop.set()
            for t in clients:
                t.join()
            proc.stop()
            if os.environ.get("REAP_LOG"):
                Path(os.environ["REAP_LOG"]).write_text(proc.log())
    logger.info(
        "%d kills (SIG%s, %d clients): gauges gone median %.1f ms, max %.1f ms; "
        "reaped line median %.1f ms, max %.1f ms; %d requests answered",
        args.kills, args.signal, args.clients,
        statistics.median(files_s) * 1000, max(files_s) * 1000,
        statistics.median(logged_s) * 1000, max(logged_s) * 1000, done[0],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
