"""Logging never blocks serving: a server whose output pipe nobody reads keeps answering."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx

from tests.support.server import ROOT, free_port


def test_logging_stalled_reader_never_blocks_serving() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MNIST_PORT": str(port), "MNIST_LOG_QUEUE_RECORDS": "200"}
    # stdout and stderr are one pipe that nobody reads until the end: once its buffer (64 KiB
    # on Linux, a few hundred lines) is full, every write to it blocks.
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with httpx.Client(base_url=url, timeout=5) as c:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if c.get("/v2/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            slowest_live_s = 0.0
            for i in range(3000):
                # Every request writes an access line (the padded id makes it long).
                r = c.get("/v1/models", headers={"X-Request-ID": f"{i:0>100}"})
                assert r.status_code == 200, (i, r.text)
                if i % 50 == 0:
                    started = time.monotonic()
                    assert c.get("/v2/health/live").status_code == 200
                    slowest_live_s = max(slowest_live_s, time.monotonic() - started)
            assert slowest_live_s < 1.0, slowest_live_s
            metrics = c.get("/metrics").text
            dropped = re.search(r"^mnist_log_records_dropped_total (\S+)$", metrics, re.M)
            assert dropped, metrics[:2000]
            assert float(dropped.group(1)) > 1000, "the stalled reader should have cost records"

            # The reader comes back: writing resumes with one line saying what was lost.
            output: list[bytes] = []
            assert proc.stdout is not None
            reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
            reader.start()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                c.get("/v1/models", headers={"X-Request-ID": "after-the-stall"})
                text = b"".join(output).decode(errors="replace")
                if "id=after-the-stall" in text and "log records dropped" in text:
                    break
                time.sleep(0.2)
        assert re.search(r"WARNING service.logging: \d+ log records dropped", text), text[-2000:]
        assert "id=after-the-stall" in text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
