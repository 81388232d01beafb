"""Named API keys with limits against a real `python -m service` of two workers: the limits
hold across the workers (one bucket, not one per process) and across HTTP and gRPC, the
429 carries a Retry-After from the refill, the key's name (never the key) reaches the access
log and /metrics, and SIGHUP reloads the key file without dropping a request."""

from __future__ import annotations

import http.client
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import png_bytes
from tests.e2e.test_workers import _workers
from tests.support.server import ServerProcess

MODEL = "mnist-cnn"
KEYS = {"app-a": "secret-a-2b8f0c", "app-b": "secret-b-91d3e7", "app-c": "secret-c-5a40f2",
        "app-g": "secret-g-c7e219", "app-d": "secret-d-0e66ab"}  # fmt: skip
# app-a: 3 requests, then one every 100 s: what a test sees is the burst, nothing refills.
KEY_FILE = f"""
[[keys]]
name = "app-a"
key = "{KEYS["app-a"]}"
requests_per_second = 0.01
burst = 3

[[keys]]
name = "app-b"
key = "{KEYS["app-b"]}"

[[keys]]
name = "app-c"
key = "{KEYS["app-c"]}"
images_per_minute = 2

[[keys]]
name = "app-g"
key = "{KEYS["app-g"]}"
requests_per_second = 0.01
burst = 1
"""


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("keys")
    key_file = folder / "keys.toml"
    key_file.write_text(KEY_FILE)
    proc = ServerProcess(env={"MNIST_WORKERS": "2", "MNIST_API_KEYS_FILE": str(key_file)})
    proc.key_file = key_file  # type: ignore[attr-defined]
    proc.start(folder)
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def digit(mnist_sample: tuple[np.ndarray, np.ndarray]) -> bytes:
    return png_bytes(mnist_sample[0][0])


def _auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def _multipart(digit: bytes, count: int = 1) -> tuple[bytes, dict[str, str]]:
    files = [("files", (f"{i}.png", digit, "image/png")) for i in range(count)]
    request = httpx.Request("POST", "http://x/v1/predict", files=files)
    return request.read(), {"Content-Type": request.headers["content-type"]}


def _serving_pid(proc: ServerProcess, conn: http.client.HTTPConnection) -> int:
    """The worker holding the server side of `conn` (/proc: its socket's inode)."""
    client_port = conn.sock.getsockname()[1]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        inode = None
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if int(local.split(":")[1], 16) == proc.port and int(remote.split(":")[1], 16) == (
                client_port
            ):
                inode = fields[9]
        for pid in _workers(proc):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if inode and fd.readlink().name == f"socket:[{inode}]":
                        return pid
                except OSError:
                    continue
        time.sleep(0.05)  # accepted a moment after connect() returned
    raise AssertionError("no worker holds the connection")


def _connections_on_each_worker(proc: ServerProcess, per_worker: int) -> dict[int, list]:
    """Keep-alive connections, `per_worker` on each of the two workers.

    Which worker accepts a connection is the kernel's and the workers' race: connections
    are opened in bursts, each with a request in flight, until both have enough."""
    by_pid: dict[int, list[http.client.HTTPConnection]] = {}
    spare = []
    for _ in range(20):
        burst = [http.client.HTTPConnection("127.0.0.1", proc.port, timeout=30) for _ in range(8)]
        for conn in burst:
            conn.connect()
        for conn in burst:
            conn.request("GET", "/v2/health/live")  # accepted once it is answered
        for conn in burst:
            conn.getresponse().read()
            pid = _serving_pid(proc, conn)
            if len(by_pid.setdefault(pid, [])) < per_worker:
                by_pid[pid].append(conn)
            else:
                spare.append(conn)
        if len(by_pid) == 2 and all(len(c) == per_worker for c in by_pid.values()):
            break
    for conn in spare:
        conn.close()
    assert len(by_pid) == 2, by_pid
    assert all(len(c) == per_worker for c in by_pid.values()), by_pid
    return by_pid


def _post(conn: http.client.HTTPConnection, body: bytes, headers: dict[str, str]) -> tuple:
    conn.request("POST", "/v1/predict", body=body, headers=headers)
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def test_request_rate_holds_across_two_workers_with_retry_after(keyed, digit) -> None:
    body, headers = _multipart(digit)
    by_pid = _connections_on_each_worker(keyed, per_worker=1)
    statuses: Counter[tuple[int, int]] = Counter()
    refused = []
    # Four requests on each worker: one bucket of 3 lets 3 through in all, where a bucket
    # per process would let 3 through on each.
    for _ in range(4):
        for pid, (conn,) in by_pid.items():
            status, answer_headers, content = _post(conn, body, {**headers, **_auth("app-a")})
            statuses[(pid, status)] += 1
            if status == 429:
                refused.append((answer_headers, content))
    assert sum(n for (_, s), n in statuses.items() if s == 200) == 3, statuses
    assert sum(n for (_, s), n in statuses.items() if s == 429) == 5, statuses
    assert {pid for (pid, s) in statuses if s == 429} == set(by_pid)  # both workers refuse
    for answer_headers, content in refused:
        error = httpx.Response(429, content=content).json()
        assert error["code"] == "rate_limited"
        assert "'app-a'" in error["error"]
        assert "0.01 requests per second" in error["error"]
        # One token at 0.01 per second: about 100 s, less what refilled meanwhile.
        assert 90 <= int(answer_headers["retry-after"]) <= 100
    # Another key has buckets of its own (none here): it is served on both workers.
    for (conn,) in by_pid.values():
        assert _post(conn, body, {**headers, **_auth("app-b")})[0] == 200
        conn.close()


def test_images_per_minute_counts_images_not_requests(keyed, digit) -> None:
    two, two_headers = _multipart(digit, 2)
    one, one_headers = _multipart(digit, 1)
    url = keyed.url + "/v1/predict"
    r = httpx.post(url, content=two, headers={**two_headers, **_auth("app-c")})
    assert r.status_code == 200
    assert len(r.json()["predictions"]) == 2
    r = httpx.post(url, content=one, headers={**one_headers, **_auth("app-c")})
    assert r.status_code == 429
    assert r.json()["code"] == "rate_limited"
    assert "2 images per minute" in r.json()["error"]
    # One image at 2 a minute: 30 s.
    assert 25 <= int(r.headers["retry-after"]) <= 30
    three, three_headers = _multipart(digit, 3)
    r = httpx.post(url, content=three, headers={**three_headers, **_auth("app-c")})
    assert r.status_code == 413
    assert "limit of 2 per minute" in r.json()["error"]


def test_grpc_shares_the_bucket_and_answers_resource_exhausted(keyed, mnist_sample) -> None:
    images, _ = mnist_sample
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="UINT8", shape=[1, 784])
    request.raw_input_contents.append(images[0].astype(np.uint8).tobytes())
    metadata = (("authorization", f"Bearer {KEYS['app-g']}"),)
    with grpc.insecure_channel(keyed.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(request, metadata=metadata, timeout=10)  # the burst of 1
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, metadata=metadata, timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(refused.value.trailing_metadata() or ())
    assert 90 <= int(trailing["retry-after"]) <= 100
    # The same key over HTTP finds the bucket gRPC emptied, with the same message.
    body, headers = _multipart(png_bytes(images[0]))
    r = httpx.post(keyed.url + "/v1/predict", content=body, headers={**headers, **_auth("app-g")})
    assert r.status_code == 429
    assert r.json()["error"] == refused.value.details()


def test_key_names_in_access_log_and_metrics_never_the_keys(keyed, digit) -> None:
    body, headers = _multipart(digit)
    r = httpx.post(keyed.url + "/v1/predict", content=body,
                   headers={**headers, "X-API-Key": "not-a-key"})  # fmt: skip
    assert r.status_code == 401
    r = httpx.post(keyed.url + "/v1/predict", content=body,
                   headers={**headers, **_auth("app-b"), "X-Request-ID": "names-1"})  # fmt: skip
    assert r.status_code == 200
    log = keyed.wait_for_log("id=names-1")
    assert re.search(r'"POST /v1/predict" 200 [\d.]+ms images=1 id=names-1 key=app-b ', log)
    assert re.search(r'"POST /v1/predict" 429 .* key=app-a ', log)
    assert re.search(r'"POST /v1/predict" 401 .* key=anonymous ', log)
    assert re.search(r'"GRPC ModelInfer" 429 .* key=app-g ', log)
    text = httpx.get(keyed.url + "/metrics").text
    counts = {
        (m[1], m[2]): float(m[3])
        for m in re.finditer(
            r'mnist_key_requests_total\{key="([^"]+)",status="(\d+)"\} (\S+)', text
        )  # fmt: skip
    }
    assert counts[("app-a", "200")] == 3
    assert counts[("app-a", "429")] == 5
    assert counts[("anonymous", "401")] >= 1
    assert counts[("app-b", "200")] >= 3
    assert counts[("app-g", "429")] == 2  # one over gRPC, one over HTTP
    assert {k for k, _ in counts} <= {"app-a", "app-b", "app-c", "app-g", "anonymous"}
    for secret in KEYS.values():
        assert secret not in log
        assert secret not in text


def test_sighup_reloads_the_key_file_without_dropping_requests(keyed, digit) -> None:
    body, headers = _multipart(digit)
    url = keyed.url + "/v1/predict"
    stop = threading.Event()
    tally: Counter[str] = Counter()

    def steady() -> None:
        # A new connection per request, so both workers are asked while they reload.
        with httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while not stop.is_set():
                try:
                    tally[str(c.post(url, content=body, headers={**headers, **_auth("app-b")})
                              .status_code)] += 1  # fmt: skip
                except httpx.TransportError as exc:
                    tally[f"lost: {exc!r}"] += 1

    worker = threading.Thread(target=steady)
    worker.start()
    try:
        time.sleep(0.5)
        # app-c leaves, app-d arrives; app-b stays.
        kept = KEY_FILE.split("[[keys]]")
        keyed.key_file.write_text(
            "[[keys]]".join(p for p in kept if "app-c" not in p)
            + f'\n[[keys]]\nname = "app-d"\nkey = "{KEYS["app-d"]}"\n'
        )
        keyed.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while keyed.log().count("SIGHUP: 4 API keys: app-a, app-b, app-d, app-g") < 2:
            assert time.monotonic() < deadline, keyed.log()[-3000:]
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        stop.set()
        worker.join()
    assert set(tally) == {"200"}, tally
    assert tally["200"] > 0
    # Every worker has the new ring: fresh connections spread over both.
    for _ in range(6):
        with httpx.Client(timeout=30) as c:
            assert (
                c.post(url, content=body, headers={**headers, **_auth("app-d")}).status_code == 200
            )
            assert (
                c.post(url, content=body, headers={**headers, **_auth("app-c")}).status_code == 401
            )
