"""End to end against a real `python -m service` process over real HTTP."""

from __future__ import annotations

import base64
import contextlib
import re
import select
import shutil
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from evaluation.uploads import KINDS, make_upload
from tests.conftest import NEWEST_SHIPPED, SHIPPED_MODELS, png_bytes
from tests.support.server import ServerProcess, run_to_exit


def test_e2e_realistic_uploads_of_every_kind_are_recognised(server, mnist_sample) -> None:
    images, labels = mnist_sample
    total = correct = 0
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for kind in KINDS:
            files = []
            for i in range(10):
                data, name = make_upload(kind, images[i], seed=i)
                files.append(("files", (name, data, "application/octet-stream")))
            r = c.post("/v1/predict", files=files)
            assert r.status_code == 200, (kind, r.text)
            digits = [p["digit"] for p in r.json()["predictions"]]
            correct += sum(int(d == labels[i]) for i, d in enumerate(digits))
            total += len(digits)
    assert correct >= total - 2, f"{correct}/{total} realistic uploads right"


def test_e2e_base64_json_predictions(server, mnist_sample) -> None:
    images, labels = mnist_sample
    payload = {
        "images": [{"data": base64.b64encode(png_bytes(images[i])).decode()} for i in range(5)]
    }
    r = httpx.post(server.url + "/v1/predict/base64", json=payload, timeout=30)
    assert r.status_code == 200
    assert [p["digit"] for p in r.json()["predictions"]] == [int(x) for x in labels[:5]]


@pytest.mark.parametrize(
    ("files", "status", "code"),
    [
        ([("e.png", b"")], 400, "invalid_image"),
        ([("a.txt", b"plain text")], 415, "unsupported_media_type"),
        ([("a.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)], 400, "invalid_image"),
        ([("a.png", b"x")] * 65, 413, "payload_too_large"),
    ],
)
def test_e2e_client_mistakes_get_json_4xx(server, files, status: int, code: str) -> None:
    multipart = [("files", (n, d, "application/octet-stream")) for n, d in files]
    r = httpx.post(server.url + "/v1/predict", files=multipart, timeout=30)
    assert r.status_code == status
    assert r.json()["code"] == code
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200


def test_e2e_oversized_body_is_refused_while_streaming(server) -> None:
    """A chunked upload with no Content-Length gets its 413 long before it ends."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
        )
        head = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
        sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        chunk = b"\0" * (1 << 20)
        sent_mb = 0
        for mb in range(1, 201):  # up to 200 MB, far past the 10 MB file limit
            sent_mb = mb
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                break  # the server answered and closed: stop sending
            if select.select([sock], [], [], 0)[0]:
                break
        # The head and the body are written separately: read until the server closes.
        response = b""
        with contextlib.suppress(ConnectionResetError):
            while part := sock.recv(65536):
                response += part
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b'"code":"payload_too_large"' in response
    assert sent_mb < 40, f"the server read {sent_mb} MB before refusing"
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200


def test_e2e_bad_requests_do_not_disturb_good_ones_and_batches_form(server, mnist_sample) -> None:
    images, labels = mnist_sample
    good = [png_bytes(images[i]) for i in range(64)]

    def call(i: int) -> tuple[int, int | None, int]:
        if i % 4 == 3:
            r = httpx.post(server.url + "/v1/predict", files=[("files", ("x", b"junk", "a/b"))])
            return r.status_code, None, i
        r = httpx.post(
            server.url + "/v1/predict", files=[("files", ("d.png", good[i], "image/png"))]
        )
        return r.status_code, r.json()["predictions"][0]["digit"], i

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(call, range(64)))
    for status, digit, i in results:
        if i % 4 == 3:
            assert status == 415
        else:
            assert status == 200
            assert digit == labels[i] or i in (), (i, digit, labels[i])
    metrics = httpx.get(server.url + "/metrics").text
    count = float(re.search(r"^mnist_batch_size_count (\S+)$", metrics, re.M).group(1))
    ones = float(re.search(r'^mnist_batch_size_bucket\{le="1.0"\} (\S+)$', metrics, re.M).group(1))
    assert count > ones, "concurrent requests should have formed at least one batch > 1"


def _metric(text: str, pattern: str) -> float:
    found = re.findall(pattern, text, re.M)
    return sum(float(v) for v in found)


@pytest.mark.parametrize("route", ["/v1/predict", "/v1/predict/base64"])
def test_e2e_clients_that_hang_up_free_the_queue_and_are_counted_499(
    server, mnist_sample, route: str
) -> None:
    images, labels = mnist_sample
    many = [("files", (f"{i}.png", png_bytes(images[i]), "image/png")) for i in range(64)]
    as_json = {"images": [{"data": base64.b64encode(f[1][1]).decode()} for f in many]}
    predicted = r"^mnist_images_predicted_total\{[^}]*\} (\S+)$"
    hung_up = rf'^mnist_requests_total\{{[^}}]*route="{route}"[^}}]*status="499"[^}}]*\}} (\S+)$'
    server_errors = r'^mnist_requests_total\{[^}]*status="5\d\d"[^}]*\} (\S+)$'
    before = httpx.get(server.url + "/metrics").text

    # The body is encoded once and one client is shared, so the 16 threads send at once: a
    # client per call (each building its TLS context) spaced the requests out so much that
    # none of them waited long enough to be watched (seen once in CI).
    prepared = (
        httpx.Request("POST", server.url + route, json=as_json)
        if route.endswith("base64")
        else httpx.Request("POST", server.url + route, files=many)
    )
    body, content_type = prepared.read(), prepared.headers["content-type"]
    # The whole upload is sent; the client gives up 20 ms into waiting for the answer.
    timeout = httpx.Timeout(5, read=0.02)
    with httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=32)) as client:
        refusals: list[str] = []

        def impatient(_: int) -> None:
            with contextlib.suppress(httpx.TimeoutException):
                answer = client.post(server.url + route, content=body,
                                     headers={"content-type": content_type})  # fmt: skip
                if answer.status_code >= 500:
                    refusals.append(answer.text)

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(impatient, range(32)))
    deadline = time.monotonic() + 10
    while True:
        after = httpx.get(server.url + "/metrics").text
        if _metric(after, r"^mnist_queue_depth (\S+)$") == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert _metric(after, r"^mnist_queue_depth (\S+)$") == 0
    assert _metric(after, hung_up) > _metric(before, hung_up), "no hang-up was noticed"
    done = _metric(after, predicted) - _metric(before, predicted)
    assert done < 32 * 64, "abandoned requests were still run through the model"
    errors = [line for line in after.splitlines() if re.match(server_errors, line)]
    said = [line for line in server.log().splitlines() if " 503 " in line or "rror" in line]
    assert _metric(after, server_errors) == _metric(before, server_errors), (
        errors, refusals[:3], said[-5:]
    )  # fmt: skip
    r = httpx.post(server.url + "/v1/predict", files=many[:1])
    assert r.json()["predictions"][0]["digit"] == labels[0]


def test_e2e_models_and_v2_metadata(server) -> None:
    models = httpx.get(server.url + "/v1/models").json()
    assert models["served"]["version"] == NEWEST_SHIPPED
    meta = httpx.get(server.url + "/v2/models/mnist-cnn").json()
    assert meta["name"] == "mnist-cnn"
    assert {i["name"] for i in meta["inputs"]} == {"input", "image"}


def _copy_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(SHIPPED_MODELS / "mnist-cnn" / "1", repo / "mnist-cnn" / "1")
    return repo


def test_e2e_startup_fails_fast_on_missing_model(tmp_path: Path) -> None:
    done = run_to_exit({"MNIST_MODEL_REPOSITORY": str(tmp_path / "empty")})
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no versions of model 'mnist-cnn' found")
    assert "Traceback" not in done.stderr


def test_e2e_startup_fails_fast_on_checksum_mismatch(tmp_path: Path) -> None:
    repo = _copy_repo(tmp_path)
    with open(repo / "mnist-cnn" / "1" / "model.pt", "ab") as fh:
        fh.write(b"tampered")
    done = run_to_exit({"MNIST_MODEL_REPOSITORY": str(repo)})
    assert done.returncode != 0
    assert "checksum mismatch" in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr


def test_e2e_startup_fails_fast_on_cuda_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = run_to_exit({}, ["--device", "cuda"])
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "error: device 'cuda' requested but CUDA is not available"
    )


def test_e2e_invalid_setting_is_one_line(tmp_path: Path) -> None:
    done = run_to_exit({"MNIST_MAX_BATCH_SIZE": "0"})
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: invalid setting max_batch_size")


def test_e2e_workers_refuse_a_grpc_port_another_server_listens_on() -> None:
    # The other server's workers listen with SO_REUSEPORT, as ours do: without the check the
    # kernel would quietly spread gRPC connections over both servers.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        done = run_to_exit({"MNIST_WORKERS": "2", "MNIST_GRPC_PORT": str(port)})
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: cannot use the gRPC port 127.0.0.1:{port} (Address already in use)")
    )


def _slow_multipart(files: list[tuple[str, bytes]], seconds: float):
    """A multipart body streamed in small chunks over about `seconds` (a slow uploader)."""
    boundary = "slowupload42"
    body = (
        b"".join(
            b'--%s\r\nContent-Disposition: form-data; name="files"; filename="%s"\r\n\r\n%s\r\n'
            % (boundary.encode(), name.encode(), data)
            for name, data in files
        )
        + b"--%s--\r\n" % boundary.encode()
    )
    chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)]

    def stream():
        for chunk in chunks:
            time.sleep(seconds / len(chunks))
            yield chunk

    return stream(), {"content-type": f"multipart/form-data; boundary={boundary}"}


def test_e2e_sigterm_drains_in_flight_requests_and_exits_zero(tmp_path: Path, mnist_sample) -> None:
    images, labels = mnist_sample
    # 24 requests of 12 photos: about 10 s of preprocessing on two cores, as long as the
    # default per-request deadline and drain bound; this test is about the drain finishing
    # what is in flight, not about those bounds (a loaded machine takes several times longer).
    env = {
        "MNIST_MAX_BATCH_SIZE": "4",
        "MNIST_REQUEST_TIMEOUT_S": "60",
        "MNIST_DRAIN_TIMEOUT_S": "60",
    }
    proc = ServerProcess(env=env).start(tmp_path)
    files = [make_upload("photo", images[i], seed=i)[::-1] for i in range(12)]

    def call(_: int) -> httpx.Response:
        # Slow uploads keep every request in flight for a couple of seconds.
        body, headers = _slow_multipart(files, seconds=2.0)
        return httpx.post(proc.url + "/v1/predict", content=body, headers=headers, timeout=60)

    with ThreadPoolExecutor(max_workers=24) as pool:
        futures = [pool.submit(call, i) for i in range(24)]
        # Wait until every request is in the server's hands (the scrape itself counts as one),
        # then ask it to stop.
        inflight, deadline = 0.0, time.monotonic() + 20
        while time.monotonic() < deadline:
            m = httpx.get(proc.url + "/metrics").text
            inflight = float(re.search(r"^mnist_in_flight_requests (\S+)$", m, re.M).group(1))
            if inflight >= 25:
                break
            time.sleep(0.02)
        assert inflight >= 25, "the requests should all be in flight before SIGTERM"
        proc.signal(signal.SIGTERM)
        # Readiness turns 503 (or the listener is already closed) straight away.
        with contextlib.suppress(httpx.TransportError):
            assert httpx.get(proc.url + "/v2/health/ready", timeout=5).status_code == 503
        responses = [f.result() for f in futures]
    refused = [r.text for r in responses if r.status_code != 200]
    assert [r.status_code for r in responses] == [200] * 24, refused
    for r in responses:
        digits = [p["digit"] for p in r.json()["predictions"]]
        assert sum(d == y for d, y in zip(digits, labels[:12], strict=True)) >= 11
    assert proc.proc is not None
    assert proc.proc.wait(30) == 0, proc.log()
    assert proc.stop() == 0


def test_e2e_readme_example_files_are_answered_correctly(server) -> None:
    """The README's first curl command, as a new user runs it."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    expected = {"seven.png": 7, "two.jpg": 2, "three-marker.png": 3, "four-mnist.png": 4}
    files = [("files", (n, (examples / n).read_bytes(), "image/*")) for n in expected]
    r = httpx.post(server.url + "/v1/predict", files=files, timeout=30)
    assert r.status_code == 200
    got = {p["filename"]: p["digit"] for p in r.json()["predictions"]}
    assert got == expected
