"""A key's concurrent-requests limit against a real `python -m service` of two workers, over
HTTP and gRPC, and across a SIGHUP reload of the key file.

A request is held in flight without timing: it is sent with `Expect: 100-continue` and its
body is withheld. uvicorn answers `100 Continue` when the app first asks for the body, which
is after the key's slot was taken (service/http/api/guard.py: `run_guarded`), so once the
client has read it the slot is known to be held, on a known worker, for as long as the client
keeps the body back. Sending the body finishes the request; closing the socket instead is a
client that hangs up mid-request. Whether a slot came back is read from the next request's
answer, never from a clock.
"""

from __future__ import annotations

import http.client
import signal
import socket
import time
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import png_bytes
from tests.e2e.test_keys import _connections_on_each_worker, _multipart, _post
from tests.support.server import ServerProcess

MODEL = "mnist-cnn"
KEYS = {"app-n": "secret-n-4c1d9a", "app-g": "secret-g-0b5e38", "app-r": "secret-r-d29a47",
        "app-m": "secret-m-e8b270", "app-d": "secret-d-73f5c1"}  # fmt: skip
#: The concurrent-requests limit of app-n, app-g and app-r: one key per test, so that a
#: test that fails with requests held leaves no slot taken for the next.
LIMIT = 2
KEY_FILE = (
    "".join(
        f'[[keys]]\nname = "{name}"\nkey = "{KEYS[name]}"\nconcurrent = {LIMIT}\n\n'
        for name in ("app-n", "app-g", "app-r")
    )
    + f'[[keys]]\nname = "app-m"\nkey = "{KEYS["app-m"]}"\nconcurrent = 1\n'
)
#: Held requests wait on the test, not on a clock: the server's body and keep-alive
#: timeouts are set far beyond anything a slow machine takes between two steps.
PATIENT_S = "300"
#: Keep-alive connections opened on each worker, for held requests and probes.
PER_WORKER = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("key-concurrency")
    key_file = folder / "keys.toml"
    key_file.write_text(KEY_FILE)
    proc = ServerProcess(
        env={
            "MNIST_WORKERS": "2",
            "MNIST_API_KEYS_FILE": str(key_file),
            "MNIST_BODY_TIMEOUT_S": PATIENT_S,
            "MNIST_KEEP_ALIVE_TIMEOUT_S": PATIENT_S,
        }
    )
    proc.key_file = key_file  # type: ignore[attr-defined]
    proc.start(folder)
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture
def pinned(server: ServerProcess) -> Iterator[list[list[http.client.HTTPConnection]]]:
    """Keep-alive connections, PER_WORKER on each of the two workers; closed afterwards."""
    by_pid = _connections_on_each_worker(server, per_worker=PER_WORKER)
    yield list(by_pid.values())
    for conn in (c for conns in by_pid.values() for c in conns):
        conn.close()


@pytest.fixture(scope="module")
def upload(mnist_sample: tuple[np.ndarray, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    return _multipart(png_bytes(mnist_sample[0][0]))


def _auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


class Held:
    """A request of `key` on `conn` whose body is withheld: its slot is taken once built."""

    def __init__(
        self,
        conn: http.client.HTTPConnection,
        upload: tuple[bytes, dict[str, str]],
        key: str,
        request_id: str,
    ) -> None:
        self.conn = conn
        self.body, headers = upload
        self.request_id = request_id
        sock = conn.sock
        assert isinstance(sock, socket.socket)
        self.sock = sock
        fields = {
            "Host": f"127.0.0.1:{conn.port}",
            **headers,
            **_auth(key),
            "Content-Length": str(len(self.body)),
            "Expect": "100-continue",
            "X-Request-ID": request_id,
        }
        head = "POST /v1/predict HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        sock.sendall(head.encode("latin-1") + b"\r\n")
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            chunk = sock.recv(1)
            assert chunk, f"connection closed before 100 Continue: {interim!r}"
            interim += chunk
        # Anything else (a 429) means the slot was not taken.
        assert interim.startswith(b"HTTP/1.1 100 "), interim

    def finish(self) -> int:
        """Send the body and read the answer: its status."""
        self.sock.sendall(self.body)
        response = http.client.HTTPResponse(self.sock, method="POST")
        response.begin()
        response.read()
        return response.status

    def hang_up(self) -> None:
        """Close the connection halfway through the body."""
        self.sock.sendall(self.body[: len(self.body) // 2])
        self.conn.close()


def _refused(conn: http.client.HTTPConnection, upload: tuple[bytes, dict[str, str]], key: str):
    """One request of `key` on `conn`, which must be the concurrency 429."""
    body, headers = upload
    status, answer_headers, content = _post(conn, body, {**headers, **_auth(key)})
    assert status == 429, (status, content)
    error = httpx.Response(429, content=content).json()
    assert error["code"] == "rate_limited"
    assert f"key {key!r} has {LIMIT} requests in progress" in error["error"]
    assert answer_headers["retry-after"] == "1"


def _served(conn: http.client.HTTPConnection, upload: tuple[bytes, dict[str, str]], key: str):
    body, headers = upload
    status, _, content = _post(conn, body, {**headers, **_auth(key)})
    assert status == 200, (status, content)


def test_concurrent_limit_holds_across_two_workers_and_slots_come_back(
    server, pinned, upload
) -> None:
    a, b = pinned
    # One slot held on each worker: the limit is reached only when both count as one.
    first, second = Held(a[0], upload, "app-n", "held-1"), Held(b[0], upload, "app-n", "held-2")
    _refused(a[1], upload, "app-n")
    _refused(b[1], upload, "app-n")
    # Another key keeps its own count, on either worker.
    _served(a[1], upload, "app-m")
    _served(b[1], upload, "app-m")
    # A finished request gives its slot back to every worker: the other one serves next.
    assert first.finish() == 200
    _served(b[1], upload, "app-n")
    _served(b[1], upload, "app-n")  # and that request's slot came back too
    third = Held(a[0], upload, "app-n", "held-3")
    _refused(b[1], upload, "app-n")
    # A client that hangs up mid-body gives its slot back: its access line (499) is written
    # after the slot was released, so once it is in the log the next request must pass.
    second.hang_up()
    log = server.wait_for_log("id=held-2")
    (line,) = [x for x in log.splitlines() if "id=held-2 " in x]
    assert '"POST /v1/predict" 499 ' in line, line
    _served(a[1], upload, "app-n")
    fourth = Held(b[2], upload, "app-n", "held-4")
    _refused(a[1], upload, "app-n")
    assert third.finish() == 200
    assert fourth.finish() == 200
    # All slots free: the limit's worth can be held again, one on each worker.
    again = [Held(a[2], upload, "app-n", "held-5"), Held(b[1], upload, "app-n", "held-6")]
    _refused(a[1], upload, "app-n")
    assert [h.finish() for h in again] == [200, 200]


def _infer_request(mnist_sample: tuple[np.ndarray, np.ndarray]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="UINT8", shape=[1, 784])
    request.raw_input_contents.append(mnist_sample[0][0].astype(np.uint8).tobytes())
    return request


def test_grpc_counts_in_the_same_slots_and_answers_resource_exhausted(
    server, pinned, upload, mnist_sample
) -> None:
    a, b = pinned
    request = _infer_request(mnist_sample)
    metadata = (("authorization", f"Bearer {KEYS['app-g']}"),)
    # Both slots held over HTTP, one on each worker: whichever worker takes the RPC refuses.
    held = [Held(a[0], upload, "app-g", "grpc-held-1"), Held(b[0], upload, "app-g", "grpc-held-2")]
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(request, metadata=metadata, timeout=30)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"key 'app-g' has {LIMIT} requests in progress" in refused.value.details()
            assert dict(refused.value.trailing_metadata() or ())["retry-after"] == "1"
        other = (("authorization", f"Bearer {KEYS['app-m']}"),)
        assert stub.ModelInfer(request, metadata=other, timeout=30).outputs
        # One slot back: RPCs pass, and each gives the slot back when it ends.
        assert held[0].finish() == 200
        for _ in range(3):
            assert stub.ModelInfer(request, metadata=metadata, timeout=30).outputs
    assert held[1].finish() == 200


def test_sighup_keeps_held_requests_and_their_slots(server, pinned, upload) -> None:
    a, b = pinned
    held = [Held(a[0], upload, "app-r", "reload-1"), Held(b[0], upload, "app-r", "reload-2")]
    server.key_file.write_text(KEY_FILE + f'\n[[keys]]\nname = "app-d"\nkey = "{KEYS["app-d"]}"\n')
    server.signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while server.log().count("SIGHUP: 5 API keys: app-d, app-g, app-m, app-n, app-r") < 2:
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.1)
    # Both workers run the new ring; the requests checked with the old one still count.
    _served(a[1], upload, "app-d")
    _served(b[1], upload, "app-d")
    _refused(a[1], upload, "app-r")
    _refused(b[1], upload, "app-r")
    assert [h.finish() for h in held] == [200, 200]
    # Their slots came back under the new ring: the limit's worth is held again, not more.
    again = [Held(a[0], upload, "app-r", "reload-3"), Held(b[0], upload, "app-r", "reload-4")]
    _refused(a[1], upload, "app-r")
    assert [h.finish() for h in again] == [200, 200]
