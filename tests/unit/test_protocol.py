"""GuardedHttpProtocol's bookkeeping, driven in-process with a recording transport."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import resource
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from service.__main__ import uvicorn_options
from service.config import Settings
from service.http import protocol
from service.http.protocol import ConnectionLimits, GuardedHttpProtocol, protocol_factory


class RecordingTransport(asyncio.Transport):
    """What the protocol writes, and whether it closed or paused reading."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = self.eof = self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 8000)}.get(name)

    def status(self) -> int:
        return int(self.written.split(b" ", 2)[1]) if self.written else 0

    def body(self) -> dict[str, str]:
        return json.loads(self.written.partition(b"\r\n\r\n")[2])


def make_app(read_after_s: float = 0.0) -> Any:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        await asyncio.sleep(read_after_s)
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                app.disconnected = True  # type: ignore[attr-defined]
                return
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app.disconnected = False  # type: ignore[attr-defined]
    return app


def limits(**overrides: Any) -> ConnectionLimits:
    """The defaults of Settings, with `overrides` (Settings' validation does not apply)."""
    return ConnectionLimits.from_settings(Settings(), **overrides)


def connect(
    limits: ConnectionLimits, app: Any = None, state: ServerState | None = None
) -> tuple[GuardedHttpProtocol, RecordingTransport]:
    config = Config(app=app or make_app(), lifespan="off", log_config=None, access_log=False)
    config.load()
    proto = GuardedHttpProtocol(
        config=config, server_state=state or ServerState(), app_state={}, limits=limits
    )
    transport = RecordingTransport()
    proto.connection_made(transport)
    return proto, transport


POST = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"


async def test_protocol_counts_head_bytes_across_chunks() -> None:
    proto, transport = connect(limits(max_header_bytes=4096))
    proto.data_received(b"GET / HTTP/1.1\r\nX-Long: ")
    for _ in range(3):
        proto.data_received(b"a" * 1000)
    assert transport.written == b"", "under the cap: still waiting"
    proto.data_received(b"a" * 1200)
    assert transport.status() == 431
    assert transport.body()["code"] == "headers_too_large"
    assert transport.eof, "the error is followed by a half-close, then lingering"
    proto.data_received(b"a" * 100_000)  # discarded
    assert transport.status() == 431


async def test_protocol_answers_a_url_over_the_cap_with_414_in_any_number_of_reads() -> None:
    for reads in ([b"GET /?q=" + b"a" * 5000], [b"GET /?q="] + [b"a" * 1000] * 5):
        proto, transport = connect(limits(max_header_bytes=4096))
        for data in reads:
            proto.data_received(data)
        proto.data_received(b" HTTP/1.1\r\n\r\n")
        assert (transport.status(), transport.body()["code"]) == (414, "uri_too_long"), reads


async def test_protocol_drops_headers_over_the_count_at_once() -> None:
    proto, transport = connect(limits(max_header_count=10))
    proto.data_received(b"GET / HTTP/1.1\r\n" + b"a: b\r\n" * 5000 + b"\r\n")
    assert transport.status() == 431
    assert proto.headers == [], "the parsed headers are not kept while lingering"


async def test_protocol_does_not_count_a_body_that_shares_a_read_with_its_head() -> None:
    proto, transport = connect(limits(max_header_bytes=1024))
    proto.data_received(POST % 5000 + b"a" * 5000)
    await asyncio.sleep(0.01)
    assert transport.status() == 200, transport.written


async def test_protocol_body_deadline_moves_with_progress_then_fires() -> None:
    app = make_app()
    proto, transport = connect(limits(body_timeout_s=0.15), app)
    proto.data_received(POST % 100)
    for _ in range(5):  # 0.5 s of slow but steady progress
        await asyncio.sleep(0.08)
        proto.data_received(b"a")
    assert transport.written == b""
    await asyncio.sleep(0.3)
    assert transport.status() == 408
    assert transport.body()["code"] == "request_timeout"
    assert app.disconnected, "the app's receive() returns http.disconnect"


async def test_protocol_body_clock_waits_while_the_app_does_not_read() -> None:
    # Past uvicorn's 64 KiB buffer reading pauses: a client blocked by us is not timed out.
    app = make_app(read_after_s=0.4)
    proto, transport = connect(limits(body_timeout_s=0.1), app)
    proto.data_received(POST % 200_000 + b"a" * 100_000)
    assert transport.paused
    await asyncio.sleep(0.3)
    assert transport.written == b"", "no 408 while the app has not read"
    proto.data_received(b"a" * 100_000)
    await asyncio.sleep(0.3)
    assert transport.status() == 200, transport.written


async def test_protocol_waits_for_100_continue_before_timing_the_body() -> None:
    app = make_app(read_after_s=0.3)
    proto, transport = connect(limits(body_timeout_s=0.1), app)
    proto.data_received(b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    await asyncio.sleep(0.35)
    assert transport.written.startswith(b"HTTP/1.1 100 Continue"), transport.written
    proto.data_received(b"abc")
    await asyncio.sleep(0.01)
    assert b"HTTP/1.1 200" in transport.written


async def test_protocol_closes_a_silent_connection_without_an_answer() -> None:
    proto, transport = connect(limits(header_timeout_s=0.05))
    await asyncio.sleep(0.1)
    assert (transport.closed, transport.written) == (True, b"")


async def test_protocol_times_out_a_trickle_of_empty_lines() -> None:
    # llhttp skips CRLFs before a request: they must not keep the connection open forever.
    proto, transport = connect(limits(header_timeout_s=0.15))
    for _ in range(5):
        await asyncio.sleep(0.05)
        proto.data_received(b"\r\n")
    await asyncio.sleep(0.05)
    assert transport.status() == 408


async def test_protocol_refuses_over_the_cap_and_tallies_one_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocol, "_tally", protocol._Tally())
    state = ServerState()
    capped = limits(max_connections=2)
    kept = [connect(capped, state=state) for _ in range(2)]
    with caplog.at_level(logging.INFO, logger="service.http.protocol"):
        refused = [connect(capped, state=state)[1] for _ in range(3)]
    assert len(state.connections) == 2
    assert all(t.closed and t.status() == 503 for t in refused)
    assert refused[0].body()["code"] == "too_many_connections"
    assert b"retry-after: 1\r\n" in refused[0].written
    lines = [r for r in caplog.records if r.name == "service.http.protocol"]
    assert [r.levelno for r in lines] == [logging.WARNING], "the first refusal logs at once"
    assert "refused 1 connection(s)" in lines[0].getMessage()
    assert "connection cap 2 per worker reached" in lines[0].getMessage()
    caplog.clear()
    protocol._tally.flush()  # the window's end: the other two in one line
    assert "refused 2 connection(s)" in caplog.records[0].getMessage()
    for proto, _ in kept:
        proto.connection_lost(None)
    assert len(state.connections) == 0


def test_limits_lower_the_cap_below_the_fd_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    lowered = limits(max_connections=2048, header_timeout_s=3.0)
    assert (lowered.max_connections, lowered.fd_limit) == (1024 - protocol.FD_RESERVE, 1024)
    assert lowered.header_timeout_s == 3.0
    assert "RLIMIT_NOFILE 1024" in lowered.describe_cap()
    monkeypatch.setattr(resource, "getrlimit", lambda _: (resource.RLIM_INFINITY,) * 2)
    assert limits(max_connections=50).max_connections == 50


def test_protocol_factory_pickles_for_worker_processes() -> None:
    wanted = limits(max_header_bytes=2048, max_connections=7)
    factory = pickle.loads(pickle.dumps(protocol_factory(wanted)))
    assert factory.func is GuardedHttpProtocol
    assert factory.keywords == {"limits": wanted}


def test_uvicorn_options_carry_the_limits_of_the_settings() -> None:
    settings = Settings(max_header_bytes=4096, header_timeout_s=2.5, keep_alive_timeout_s=7)
    options = uvicorn_options(settings, log_config={})
    assert options["timeout_keep_alive"] == 7
    got = options["http"].keywords["limits"]
    assert (got.max_header_bytes, got.header_timeout_s) == (4096, 2.5)
    plain = uvicorn_options(Settings(connection_limits=False), log_config={})
    assert plain["http"] == "httptools"
