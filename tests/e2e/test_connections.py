"""Connection-level limits (service/http/protocol.py) against real server processes, raw sockets."""

from __future__ import annotations

import asyncio
import json
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import ServerProcess

HEADER_TIMEOUT_S = 1.5
BODY_TIMEOUT_S = 1.5
KEEP_ALIVE_S = 1.0
#: Slack for a loaded two-core CI box: a timeout must fire after its setting and well before
#: twice it; what matters is that it fires, not the millisecond.
SLACK_S = 1.5

LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n"


def _env(**extra: str) -> dict[str, str]:
    return {
        "MNIST_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "MNIST_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "MNIST_KEEP_ALIVE_TIMEOUT_S": str(KEEP_ALIVE_S),
        **extra,
    }


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(env=_env()).start(tmp_path_factory.mktemp("guarded"))
    yield proc
    assert proc.stop() == 0, proc.log()


def _connect(server: ServerProcess, timeout_s: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout_s)
    sock.settimeout(timeout_s)
    return sock


def _read_to_eof(sock: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def _exchange(server: ServerProcess, payload: bytes) -> tuple[float, bytes]:
    """Send `payload` on a new connection; the seconds until the server closed it, and
    everything it sent."""
    started = time.monotonic()
    with _connect(server) as sock:
        sock.sendall(payload)
        raw = _read_to_eof(sock)
    return time.monotonic() - started, raw


def _parse(raw: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return status, headers, json.loads(body)


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def test_protocol_answers_oversized_headers_with_431(guarded: ServerProcess) -> None:
    elapsed, raw = _exchange(guarded, LIVE + b"X-Big: " + b"a" * 40_000 + b"\r\n\r\n")
    status, headers, body = _parse(raw)
    assert (status, body["code"]) == (431, "headers_too_large"), raw[:300]
    assert "32768 bytes" in body["error"]
    assert headers["connection"] == "close"
    assert elapsed < SLACK_S, "431 must come at once, not after a timeout"


def test_protocol_answers_many_headers_with_431(guarded: ServerProcess) -> None:
    fields = b"".join(b"X-F%d: 1\r\n" % i for i in range(100))  # + Host: 101
    status, _, body = _parse(_exchange(guarded, LIVE + fields + b"\r\n")[1])
    assert (status, body["code"]) == (431, "headers_too_large")
    assert "100 fields" in body["error"]
    # 100 fields (the default cap) are still served.
    fields = b"".join(b"X-F%d: 1\r\n" % i for i in range(98))  # + Host, Connection: 100
    raw = _exchange(guarded, LIVE + fields + b"Connection: close\r\n\r\n")[1]
    assert _parse(raw)[:1] == (200,), raw[:300]


def test_protocol_answers_oversized_url_with_414(guarded: ServerProcess) -> None:
    url = b"/v2/health/live?q=" + b"a" * 40_000
    raw = _exchange(guarded, b"GET " + url + b" HTTP/1.1\r\nHost: t\r\n\r\n")[1]
    status, _, body = _parse(raw)
    assert (status, body["code"]) == (414, "uri_too_long"), raw[:300]


def test_protocol_keeps_memory_bounded_under_50mb_of_headers(guarded: ServerProcess) -> None:
    # Before the cap, 50 MB of headers were buffered (+390 MiB RSS). Eight connections each
    # stream 50 MB of one header value; the server must answer 431 and discard the rest.
    before = _rss_mb(guarded.pid)
    answers: list[bytes] = []

    def flood() -> None:
        with _connect(guarded) as sock:
            try:
                sock.sendall(LIVE + b"X-Flood: ")
                chunk = b"a" * 1024 * 1024
                for _ in range(50):
                    sock.sendall(chunk)
            except OSError:
                pass  # the server closed after its answer: expected
            answers.append(_read_to_eof(sock))

    threads = [threading.Thread(target=flood) for _ in range(8)]
    for t in threads:
        t.start()
    peak = before
    while any(t.is_alive() for t in threads):
        peak = max(peak, _rss_mb(guarded.pid))
        time.sleep(0.01)
    for t in threads:
        t.join()
    assert peak - before < 40, f"RSS {before:.0f} -> peak {peak:.0f} MB"
    statuses = [_parse(a)[0] for a in answers if a]
    assert statuses, "no flooding client read an answer"
    assert set(statuses) == {431}, statuses


def test_protocol_closes_silent_connections_after_header_timeout(guarded: ServerProcess) -> None:
    with _connect(guarded) as sock:
        started = time.monotonic()
        assert _read_to_eof(sock) == b"", "a silent connection gets no answer, only a close"
        elapsed = time.monotonic() - started
    assert HEADER_TIMEOUT_S * 0.9 <= elapsed < HEADER_TIMEOUT_S + SLACK_S, elapsed


def test_protocol_answers_slowloris_headers_with_408(guarded: ServerProcess) -> None:
    # One byte every 0.2 s keeps a connection busy forever without a header deadline.
    with _connect(guarded) as sock:
        started = time.monotonic()
        head = LIVE + b"X-Slow: " + b"a" * 100
        try:
            for byte in head:
                sock.sendall(bytes([byte]))
                answered, _, _ = select.select([sock], [], [], 0.2)
                if answered or time.monotonic() - started > HEADER_TIMEOUT_S + SLACK_S:
                    break
        except OSError:
            pass  # closed by the server
        raw = _read_to_eof(sock)
        elapsed = time.monotonic() - started
    status, headers, body = _parse(raw)
    assert (status, body["code"]) == (408, "request_timeout"), raw[:300]
    assert headers["connection"] == "close"
    assert elapsed < HEADER_TIMEOUT_S + SLACK_S, elapsed


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/predict", "multipart/form-data; boundary=xyz"),
        ("/v1/predict/base64", "application/json"),
        ("/v2/models/mnist-cnn/infer", "application/json"),
    ],
)
def test_protocol_answers_lying_content_length_with_408(
    guarded: ServerProcess, path: str, content_type: str
) -> None:
    # Content-Length promises 10,000 bytes and 100 come: the route used to wait forever.
    head = (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n"
        "Content-Length: 10000\r\n\r\n"
    ).encode()
    elapsed, raw = _exchange(guarded, head + b"{" * 100)
    status, headers, body = _parse(raw)
    assert (status, body) == (
        408,
        {
            "error": f"no request body bytes for {BODY_TIMEOUT_S:g} s "
            "(Content-Length larger than the body?)",
            "code": "request_timeout",
        },
    ), raw[:300]
    assert headers["connection"] == "close"
    assert BODY_TIMEOUT_S * 0.9 <= elapsed < BODY_TIMEOUT_S + SLACK_S, elapsed
    # The route saw a disconnect, not a hang: its access line comes with the 408. It logs
    # 499 (FastAPI's JSON body parsing turns the disconnect into a 400 nobody receives).
    pattern = rf'"POST {re.escape(path)}" (\d+) '
    deadline = time.monotonic() + 5
    while not re.search(pattern, guarded.log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    logged = re.search(pattern, guarded.log())
    assert logged, guarded.log()
    assert int(logged.group(1)) in (400, 499), logged.group(0)


def test_protocol_answers_other_lying_lengths(guarded: ServerProcess) -> None:
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    )
    # A chunk that promises 1 KiB and sends 5 bytes: the body timeout.
    raw = _exchange(guarded, head + b"Transfer-Encoding: chunked\r\n\r\n400\r\n--b\r\n")[1]
    assert _parse(raw)[2]["code"] == "request_timeout", raw[:300]
    # A Content-Length shorter than the body: the rest is a malformed request, said so.
    raw = _exchange(guarded, head + b"Content-Length: 5\r\n\r\n--b\r\nXXXXXXXXXXXX")[1]
    status, _, body = _parse(raw)
    assert (status, body["code"]) == (400, "bad_request"), raw[:300]
    assert "Content-Length shorter than the body?" in body["error"]
    # Both lengths, or two different ones: refused by the parser, never guessed.
    for lengths in (
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Content-Length: 5\r\nContent-Length: 7\r\n",
    ):
        raw = _exchange(guarded, head + lengths + b"\r\n12345")[1]
        assert _parse(raw)[:1] == (400,), raw[:300]


def test_protocol_keeps_serving_keep_alive_then_closes_idle(guarded: ServerProcess) -> None:
    with _connect(guarded) as sock:
        for _ in range(3):
            sock.sendall(LIVE + b"\r\n")
            reply = b""
            while not reply.endswith(b'{"live":true}'):  # head and body may come apart
                chunk = sock.recv(65536)
                assert chunk, reply
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        started = time.monotonic()
        assert _read_to_eof(sock) == b""
        elapsed = time.monotonic() - started
    assert KEEP_ALIVE_S * 0.9 <= elapsed < KEEP_ALIVE_S + SLACK_S, elapsed


def test_protocol_answers_malformed_requests_with_json_400(guarded: ServerProcess) -> None:
    status, headers, body = _parse(_exchange(guarded, b"NOT HTTP AT ALL\r\n\r\n")[1])
    assert (status, body["code"]) == (400, "bad_request")
    assert body["error"].startswith("malformed HTTP request")
    assert headers["content-type"] == "application/json"


def test_protocol_keeps_liveness_fast_under_200_slowloris_connections(
    guarded: ServerProcess,
) -> None:
    stop = threading.Event()

    async def slowloris() -> None:
        # 200 connections trickling header bytes, each reopened when the server closes it.
        async def one() -> None:
            while not stop.is_set():
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", guarded.port)
                    writer.write(LIVE)
                    while not stop.is_set() and not writer.is_closing():
                        writer.write(b"X-a: b\r\n")
                        await writer.drain()
                        await asyncio.sleep(0.5)
                except OSError:
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(one() for _ in range(200)))

    attack = threading.Thread(target=lambda: asyncio.run(slowloris()))
    attack.start()
    try:
        time.sleep(1)
        latencies = []
        with httpx.Client(base_url=guarded.url, timeout=5) as client:
            for _ in range(20):
                started = time.monotonic()
                assert client.get("/v2/health/live").status_code == 200
                latencies.append(time.monotonic() - started)
                time.sleep(0.1)
    finally:
        stop.set()
        attack.join()
    assert max(latencies) < 1.0, f"liveness latencies {sorted(latencies)[-3:]}"


def _fill_with_idle(server: ServerProcess, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        try:
            socks.append(_connect(server))
        except OSError:
            break
    return socks


def _live_until_ok(server: ServerProcess, deadline_s: float) -> tuple[float, list[int]]:
    """Seconds until /v2/health/live answered 200 on a new connection, and the statuses (0
    for a connection error) seen before."""
    started, seen = time.monotonic(), []
    while time.monotonic() - started < deadline_s:
        try:
            with httpx.Client(base_url=server.url, timeout=2) as client:
                status = client.get("/v2/health/live").status_code
        except httpx.TransportError:
            status = 0
        if status == 200:
            return time.monotonic() - started, seen
        seen.append(status)
        time.sleep(0.05)
    raise AssertionError(f"no 200 within {deadline_s} s: {seen[-5:]}")


def test_protocol_refuses_connections_over_the_cap(tmp_path: Path) -> None:
    server = ServerProcess(env=_env(MNIST_MAX_CONNECTIONS="8")).start(tmp_path)
    try:
        idle = _fill_with_idle(server, 8)
        time.sleep(0.2)
        with _connect(server) as extra:
            extra.sendall(LIVE + b"\r\n")
            status, headers, body = _parse(_read_to_eof(extra))
        assert (status, body["code"]) == (503, "too_many_connections")
        assert (headers["retry-after"], headers["connection"]) == ("1", "close")
        waited, seen = _live_until_ok(server, HEADER_TIMEOUT_S + SLACK_S + 2)
        assert waited < HEADER_TIMEOUT_S + SLACK_S, (waited, seen)
        assert set(seen) <= {503}, seen
        for sock in idle:
            assert _read_to_eof(sock) == b"", "idle connections are closed at the header timeout"
            sock.close()
        line = re.search(r"WARNING service.http.protocol: refused (\d+) connection.*", server.log())
        assert line, server.log()
        assert int(line.group(1)) >= 1
        assert "connection cap 8 per worker reached" in line.group(0)
    finally:
        assert server.stop() == 0, server.log()


def test_protocol_keeps_serving_at_a_low_fd_limit(tmp_path: Path) -> None:
    # At `ulimit -n 1024`, 1,008 idle sockets used to fail 196 of 199 normal requests. With
    # 200 descriptors the cap is 136; 400 idle sockets may delay normal requests only until
    # the header timeout closes them.
    server = ServerProcess(env=_env(), fd_limit=200).start(tmp_path)
    try:
        assert "max_connections 2048 lowered to 136: RLIMIT_NOFILE is 200" in server.log()
        idle = _fill_with_idle(server, 400)
        assert len(idle) == 400
        waited, seen = _live_until_ok(server, HEADER_TIMEOUT_S + SLACK_S + 2)
        assert waited < HEADER_TIMEOUT_S + SLACK_S, (waited, seen)
        for sock in idle:
            sock.close()
        # And it still serves a predict afterwards: nothing ran out of descriptors.
        with httpx.Client(base_url=server.url, timeout=10) as client:
            r = client.post("/v1/predict/base64", json={"images": []})
            assert r.status_code < 500, r.text
        assert "out of system resource" not in server.log()
    finally:
        assert server.stop() == 0, server.log()


def test_protocol_limits_reach_every_worker(tmp_path: Path) -> None:
    # uvicorn pickles its config (with our protocol factory) into each spawned worker.
    env = _env(MNIST_MAX_HEADER_COUNT="5", MNIST_MAX_CONNECTIONS="3")
    server = ServerProcess(env=env, args=["--workers", "2"]).start(tmp_path, timeout_s=180)
    try:
        fields = b"".join(b"X-F%d: 1\r\n" % i for i in range(5))  # + Host: 6
        for _ in range(6):  # new connections land on both workers
            status, _, body = _parse(_exchange(server, LIVE + fields + b"\r\n")[1])
            assert (status, body["code"]) == (431, "headers_too_large")
        # Each worker keeps at most 3 of 12 idle connections (however the shared socket
        # splits them) and refuses the rest at once.
        idle = _fill_with_idle(server, 12)
        time.sleep(0.5)
        answered, _, _ = select.select(idle, [], [], 0)
        refused = [sock for sock in answered if _read_to_eof(sock).startswith(b"HTTP/1.1 503")]
        assert len(refused) >= 6, f"{len(refused)} of 12 refused"
        for sock in idle:
            sock.close()
    finally:
        assert server.stop() == 0, server.log()
