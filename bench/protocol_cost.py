"""What service/http/protocol.py adds per request, without the model or the network.

    python -m bench.protocol_cost [--requests 20000] [--rounds 5]

One keep-alive connection per protocol (uvicorn's plain HttpToolsProtocol and our
GuardedHttpProtocol) on uvloop, a transport that only records, and an ASGI app that reads
the body and answers 200. Each request is a single-image upload (headers like curl's, a
~400-byte body), sent either in one read or as head and body in two reads (the second arms
the body timer). Rounds take turns between the protocols; it prints the median CPU microseconds
per request of each, the difference and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service.config import Settings
from service.http.protocol import ConnectionLimits, protocol_factory

BODY = b"x" * 400
HEAD = (
    b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: curl/8.5.0\r\n"
    b"Accept: */*\r\nAuthorization: Bearer k-0123456789\r\n"
    b"Content-Type: multipart/form-data; boundary=------------------------abcdef0123456789\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY)
)


class NullTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.responses = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data[:9]) == b"HTTP/1.1 ":
            self.responses += 1

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 8000)}.get(name)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(scope: dict, receive: Any, send: Any) -> None:
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


async def _per_request_us(factory: Any, requests: int, split: bool) -> float:
    config = Config(app=_app, lifespan="off", log_config=None, access_log=False)
    config.load()
    proto = factory(config=config, server_state=ServerState(), app_state={})
    transport = NullTransport()
    proto.connection_made(transport)
    reads = [HEAD, BODY] if split else [HEAD + BODY]
    started = time.process_time()
    for i in range(1, requests + 1):
        for data in reads:
            proto.data_received(data)
        while transport.responses < i:
            await asyncio.sleep(0)
    elapsed = time.process_time() - started
    proto.connection_lost(None)
    return elapsed / requests * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.protocol_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    ours = protocol_factory(ConnectionLimits.from_settings(Settings()))
    protocols = {"plain": HttpToolsProtocol, "guarded": ours}
    for split in (False, True):
        times: dict[str, list[float]] = {name: [] for name in protocols}
        for _ in range(args.rounds):
            for name, factory in protocols.items():
                us = uvloop.run(_per_request_us(factory, args.requests, split))
                times[name].append(us)
        plain, guarded = (statistics.median(times[n]) for n in ("plain", "guarded"))
        label = "head and body in two reads" if split else "one read"
        sys.stdout.write(
            f"{label:27}: plain {plain:6.2f} us, guarded {guarded:6.2f} us per request "
            f"(+{guarded - plain:.2f} us, x{guarded / plain:.3f}; rounds: "
            f"{', '.join(f'{a:.1f}/{b:.1f}' for a, b in zip(*times.values(), strict=True))})\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
