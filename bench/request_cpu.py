"""In-process CPU per request: one 28x28 PNG through `POST /v1/predict`, no sockets.

    python -m bench.request_cpu                  # this checkout
    python -m bench.request_cpu --tree DIR       # another checkout's `service` package

The app is built by `create_app` with its defaults (one worker's app, access log on, to a
pipe nobody reads quickly: the writer thread still formats and writes every line) and
called through ASGI, request after request, with the multipart body wrk sends. The figure
is process CPU time (every thread: event loop, inference, log writer) over the requests:
it does not move with other load on the machine the way a rate does, so it can be compared
across runs. HTTP parsing by uvicorn is not included; `python -m bench --baseline` measures
the whole server.
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


def bodies() -> list[bytes]:
    data = np.load(SAMPLE)
    out = []
    for i, img in enumerate(data["images"][:64]):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        out.append(
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; '
                f'filename="d{i:03d}.png"\r\nContent-Type: image/png\r\n\r\n'
            ).encode()
            + buf.getvalue()
            + f"\r\n--{BOUNDARY}--\r\n".encode()
        )
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


async def measure(requests: int, warmup: int, concurrency: int) -> dict[str, float]:
    from asgi_lifespan import LifespanManager

    from service.config import Settings
    from service.http.app import create_app

    # One worker's app with one torch thread, as each of `make serve`'s workers on 2 CPUs.
    settings = Settings(workers=1, torch_threads=1)
    app = create_app(settings)
    payloads = bodies()
    async with LifespanManager(app):
        for i in range(warmup):
            assert await one(app, payloads[i % len(payloads)]) == 200
        cpu0, wall0 = time.process_time(), time.perf_counter()
        each = requests // concurrency

        async def client(k: int) -> None:
            for i in range(each):
                status = await one(app, payloads[(k + i) % len(payloads)])
                assert status == 200, status

        await asyncio.gather(*(client(k) for k in range(concurrency)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    done = each * concurrency
    return {"requests": done, "concurrency": concurrency,
            "cpu_us_per_request": 1e6 * cpu / done,
            "wall_us_per_request": 1e6 * wall / done}  # fmt: skip


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
    args = p.parse_args(argv)
    if args.tree:
        sys.path.insert(0, str(args.tree.resolve()))
        os.chdir(args.tree)
    # Access lines go to a pipe that is drained by a thread of its own, as a log shipper
    # would read the server's stderr.
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    threading.Thread(target=_drain, args=(read_end,), daemon=True).start()
    import logging.config

    from service.runtime.logging_config import build_log_config

    logging.config.dictConfig(build_log_config("info"))
    result = asyncio.run(measure(args.requests, args.warmup, args.concurrency))
    print(json.dumps(result), file=sys.stdout, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
