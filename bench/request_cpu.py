"""In-process CPU per request: 28x28 PNGs through `POST /v1/predict`, no sockets.

    python -m bench.request_cpu                  # this checkout, one image per request
    python -m bench.request_cpu --tree DIR       # another checkout's `service` package
    python -m bench.request_cpu --files 64 --concurrency 1   # 64 images per request

The app is built by `create_app` with its defaults (one worker's app, access log on, to a
pipe nobody reads quickly: the writer thread still formats and writes every line) and
called through ASGI, request after request, with the multipart body wrk sends. The figure
is process CPU time (every thread: event loop, inference, log writer) over the requests:
it moves much less with other load on the machine than a rate does (a busy machine still
adds cache misses and slower requests), so run it a few times and compare medians. The
bench's own thread that drains the log pipe is not counted, and the figure is also given
per thread (event loop, inference, decode pool, log writer; Linux). HTTP parsing by
uvicorn is not included; `python -m bench --baseline` measures the whole server.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "mnist_test_sample.npz"
BOUNDARY = "mnistbench0b7e3c9a"


def bodies(files: int = 1) -> list[bytes]:
    """64 multipart bodies of `files` PNG parts each, taking turns over the sample digits."""
    data = np.load(SAMPLE)
    parts = []
    for i, img in enumerate(data["images"][:64]):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        parts.append(
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; '
                f'filename="d{i:03d}.png"\r\nContent-Type: image/png\r\n\r\n'
            ).encode()
            + buf.getvalue()
            + b"\r\n"
        )
    end = f"--{BOUNDARY}--\r\n".encode()
    return [
        b"".join(parts[(k + j) % len(parts)] for j in range(files)) + end for k in range(len(parts))
    ]


def _thread_cpu() -> dict[int, float]:
    """CPU seconds of each thread of this process by native id (Linux; else empty)."""
    out: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _by_thread(before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
    """CPU seconds spent between two snapshots, by role: the thread name without its number."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    main_id = threading.main_thread().native_id
    out: dict[str, float] = {}
    for tid, cpu in after.items():
        name = "event-loop" if tid == main_id else names.get(tid, "other")
        role = name.rstrip("0123456789").rstrip("_-") or name
        out[role] = out.get(role, 0.0) + cpu - before.get(tid, 0.0)
    return out


async def one(app: Any, body: bytes) -> int:
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/predict", "raw_path": b"/v1/predict",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
            (b"content-length", str(len(body)).encode()),
        ],
    }  # fmt: skip
    await app(scope, receive, send)
    return status


def _create_app() -> Any:
    from service.config import Settings

    try:
        from service.http.app import create_app
    except ImportError:  # a checkout from before `service/` was grouped by layer
        from service.app import create_app  # type: ignore[no-redef]

    # One worker's app with one torch thread, as each of `make serve`'s workers on 2 CPUs.
    return create_app(Settings(workers=1, torch_threads=1))


async def measure(requests: int, warmup: int, concurrency: int, files: int = 1) -> dict[str, Any]:
    from asgi_lifespan import LifespanManager

    app = _create_app()
    payloads = bodies(files)
    async with LifespanManager(app):
        for i in range(warmup):
            assert await one(app, payloads[i % len(payloads)]) == 200
        each = max(1, requests // concurrency)
        threads0 = _thread_cpu()
        cpu0, wall0 = time.process_time(), time.perf_counter()

        async def client(k: int) -> None:
            for i in range(each):
                status = await one(app, payloads[(k + i) % len(payloads)])
                assert status == 200, status

        await asyncio.gather(*(client(k) for k in range(concurrency)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        threads = _by_thread(threads0, _thread_cpu())
    done = each * concurrency
    # The bench's own pipe reader is the log shipper's cost, not the server's.
    cpu -= threads.pop(_DRAIN, 0.0)
    return {"requests": done, "concurrency": concurrency, "files": files,
            "cpu_us_per_request": 1e6 * cpu / done,
            "wall_us_per_request": 1e6 * wall / done,
            "thread_cpu_us_per_request": {
                k: round(1e6 * v / done, 1)
                for k, v in sorted(threads.items(), key=lambda kv: -kv[1]) if v > 0
            }}  # fmt: skip


_DRAIN = "bench-log-drain"


def _drain(fd: int) -> None:
    while os.read(fd, 1 << 16):
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.request_cpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--tree", type=Path, help="a checkout whose `service` package to measure")
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="requests in flight at once (1: one after another, inline forwards)",
    )
    p.add_argument("--files", type=int, default=1, help="28x28 PNGs per request")
    args = p.parse_args(argv)
    if args.tree:
        sys.path.insert(0, str(args.tree.resolve()))
        os.chdir(args.tree)
    # Access lines go to a pipe that is drained by a thread of its own, as a log shipper
    # would read the server's stderr.
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    threading.Thread(target=_drain, args=(read_end,), daemon=True, name=_DRAIN).start()
    import logging.config

    try:
        from service.runtime.logging_config import build_log_config
    except ImportError:  # a checkout from before `service/` was grouped by layer
        from service.logging_config import build_log_config  # type: ignore[no-redef]

    logging.config.dictConfig(build_log_config("info"))
    result = asyncio.run(measure(args.requests, args.warmup, args.concurrency, args.files))
    print(json.dumps(result), file=sys.stdout, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
