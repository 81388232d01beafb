"""Operating it: metrics, logs, API keys, hot reload, workers, against real processes."""

from __future__ import annotations

import json
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.serving.card import ModelCard
from tests.conftest import NEWEST_SHIPPED, SHIPPED_MODELS, png_bytes
from tests.support.server import ServerProcess

KEY, ADMIN = "k-test-123", "admin-secret-9"


def add_version(repo: Path, version: str, *, tamper: bool = False) -> Path:
    """Copy the shipped v1 as another version (same weights, card says `version`)."""
    dst = repo / "mnist-cnn" / version
    shutil.copytree(SHIPPED_MODELS / "mnist-cnn" / "1", dst)
    card = ModelCard.read(dst)
    card.version = version
    card.write(dst)
    if tamper:
        with open(dst / "model.pt", "ab") as fh:
            fh.write(b"broken")
    return dst


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    add_version(repo, "1")
    proc = ServerProcess(
        env={
            "MNIST_MODEL_REPOSITORY": str(repo),
            "MNIST_API_KEYS": f"other,{KEY}",
            "MNIST_ADMIN_KEY": ADMIN,
        }
    ).start(tmp_path_factory.mktemp("logs"))
    proc.repo = repo  # type: ignore[attr-defined]
    yield proc
    assert proc.stop() == 0, proc.log()


def _protected_calls(digit_png: bytes) -> list[tuple[str, str, dict]]:
    infer = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8",
                         "data": [0] * 784}]}  # fmt: skip
    return [
        ("POST", "/v1/predict", {"files": [("files", ("a.png", digit_png, "image/png"))]}),
        ("POST", "/v1/predict/base64", {"json": {"images": [{"data": "aGk="}]}}),
        ("GET", "/v1/models", {}),
        ("GET", "/v2/models/mnist-cnn", {}),
        ("GET", "/v2/models/mnist-cnn/ready", {}),
        ("POST", "/v2/models/mnist-cnn/infer", {"json": infer}),
    ]


def test_ops_api_keys_on_every_protected_route(secured, mnist_sample) -> None:
    digit = png_bytes(mnist_sample[0][0])
    with httpx.Client(base_url=secured.url, timeout=30) as c:
        for method, path, kw in _protected_calls(digit):
            r = c.request(method, path, **kw)
            assert (r.status_code, r.json()["code"]) == (401, "unauthorized"), path
            assert "missing API key" in r.json()["error"]
            r = c.request(method, path, headers={"Authorization": "Bearer nope"}, **kw)
            assert (r.status_code, r.json()) == (
                401,
                {"error": "invalid API key", "code": "unauthorized"},
            ), path
            for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}):
                r = c.request(method, path, headers=headers, **kw)
                assert r.status_code != 401, (path, r.text)
                assert r.status_code < 500, (path, r.text)
        # Probes, metrics, the server metadata and the page stay open.
        for path in ("/v2/health/live", "/v2/health/ready", "/metrics", "/"):
            assert c.get(path, follow_redirects=True).status_code == 200, path
    assert KEY not in secured.log(), "API keys must never reach the logs"


def test_ops_admin_reload_needs_the_admin_key(secured) -> None:
    with httpx.Client(base_url=secured.url, timeout=60) as c:
        assert c.post("/admin/reload").status_code == 401
        r = c.post("/admin/reload", headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 401
    assert ADMIN not in secured.log()


def test_ops_admin_route_absent_without_admin_key(server) -> None:
    r = httpx.post(server.url + "/admin/reload", headers={"Authorization": "Bearer x"})
    assert r.status_code == 404


def test_ops_metrics_move_as_requests_flow(server, mnist_sample) -> None:
    before = httpx.get(server.url + "/metrics").text
    files = [("files", (f"{i}.png", png_bytes(mnist_sample[0][i]), "image/png")) for i in range(5)]
    for _ in range(3):
        assert httpx.post(server.url + "/v1/predict", files=files).status_code == 200
    httpx.post(server.url + "/v1/predict", files=[("files", ("x", b"", "image/png"))])
    after = httpx.get(server.url + "/metrics").text
    ok = '{method="POST",route="/v1/predict",status="200"}'
    bad = '{method="POST",route="/v1/predict",status="400"}'
    assert (
        metric(after, "mnist_requests_total", ok) - metric(before, "mnist_requests_total", ok) == 3
    )
    assert (
        metric(after, "mnist_requests_total", bad) - metric(before, "mnist_requests_total", bad)
        == 1
    )
    img = f'{{model="mnist-cnn",version="{NEWEST_SHIPPED}"}}'
    assert (
        metric(after, "mnist_images_predicted_total", img)
        - metric(before, "mnist_images_predicted_total", img)
        == 15
    )
    for name in ("mnist_inference_seconds_count", "mnist_queue_wait_seconds_count",
                 "mnist_preprocess_seconds_count", "mnist_batch_size_count"):  # fmt: skip
        assert metric(after, name) > metric(before, name), name
    info = f'{{device="cpu",name="mnist-cnn",version="{NEWEST_SHIPPED}"}}'
    assert metric(after, "mnist_model_info", info) == 1
    assert "mnist_queue_depth" in after
    assert "mnist_request_latency_seconds_bucket" in after


def test_ops_request_id_is_honoured_and_logged_without_probes(server) -> None:
    r = httpx.get(server.url + "/v1/models", headers={"X-Request-ID": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42"
    generated = httpx.get(server.url + "/v1/models").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    httpx.get(server.url + "/v2/health/ready")
    log = server.wait_for_log("id=trace-42")
    assert re.search(r'"GET /v1/models" 200 [\d.]+ms images=0 id=trace-42', log)
    assert "/v2/health/ready" not in log
    assert '"GET /metrics"' not in log


def test_ops_json_logs(tmp_path) -> None:
    proc = ServerProcess(env={"MNIST_LOG_JSON": "true"}).start(tmp_path)
    try:
        httpx.get(proc.url + "/v1/models", headers={"X-Request-ID": 'q"uote'})
    finally:
        assert proc.stop() == 0
    lines = [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]
    access = [rec for rec in lines if rec.get("path") == "/v1/models"]
    assert access, proc.log()
    assert access[0]["request_id"] == 'q"uote'
    assert access[0]["status"] == 200
    assert {"ts", "level", "logger", "message", "latency_ms"} <= set(access[0])


def _load(url: str, digit: bytes, stop: threading.Event, out: list) -> None:
    with httpx.Client(base_url=url, timeout=30, headers={"X-API-Key": KEY}) as c:
        while not stop.is_set():
            r = c.post("/v1/predict", files=[("files", ("a.png", digit, "image/png"))])
            out.append(
                (r.status_code, r.json()["model"]["version"] if r.status_code == 200 else r.text)
            )


def test_ops_hot_reload_under_load_with_zero_failures(secured, mnist_sample) -> None:
    digit = png_bytes(mnist_sample[0][0])
    repo: Path = secured.repo
    admin = {"Authorization": f"Bearer {ADMIN}"}
    results: list = []
    stop = threading.Event()
    threads = [threading.Thread(target=_load, args=(secured.url, digit, stop, results))
               for _ in range(6)]  # fmt: skip
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        add_version(repo, "2")
        r = httpx.post(secured.url + "/admin/reload", headers=admin, timeout=60)
        assert r.json().pop("workers") == [{"pid": secured.pid, "version": "2", "error": None}]
        assert {k: v for k, v in r.json().items() if k != "workers"} == {
            "name": "mnist-cnn",
            "version": "2",
            "previous_version": "1",
            "reloaded": True,
            "message": "now serving v2",
            "versions": ["2"],
        }
        time.sleep(0.5)
        # A broken version is refused with its reason; v2 keeps serving.
        add_version(repo, "3", tamper=True)
        r = httpx.post(secured.url + "/admin/reload", headers=admin, timeout=60)
        assert r.status_code == 409
        assert "checksum mismatch" in r.json()["error"]
        time.sleep(0.3)
        shutil.rmtree(repo / "mnist-cnn" / "3")
        # SIGHUP reloads the newest version too.
        add_version(repo, "4")
        secured.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        keys = {"X-API-Key": KEY}
        while time.monotonic() < deadline:
            served = httpx.get(secured.url + "/v1/models", headers=keys).json()["served"]
            if served["version"] == "4":
                break
            time.sleep(0.1)
        assert served["version"] == "4"
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    statuses = [s for s, _ in results]
    assert len(statuses) > 50, "the load threads should have sent many requests"
    assert set(statuses) == {200}, [r for r in results if r[0] != 200][:3]
    versions = [v for _, v in results]
    assert {"1", "2", "4"} <= set(versions)
    assert "3" not in versions
    # Versions only move forward: in-flight requests finished on the model they started on.
    order = [int(v) for v in versions]
    assert order.index(4) > max(i for i, v in enumerate(order) if v == 1)
    models = httpx.get(secured.url + "/v1/models", headers={"X-API-Key": KEY}).json()
    assert models["available_versions"] == ["1", "2", "4"]


def test_ops_workers_share_metrics(tmp_path, mnist_sample) -> None:
    proc = ServerProcess(args=["--workers", "2"]).start(tmp_path)
    try:
        files = [("files", ("a.png", png_bytes(mnist_sample[0][0]), "image/png"))]
        for _ in range(20):
            with httpx.Client() as c:  # new connections spread over the workers
                assert c.post(proc.url + "/v1/predict", files=files).status_code == 200
        text = httpx.get(proc.url + "/metrics").text
        ok = '{method="POST",route="/v1/predict",status="200"}'
        assert metric(text, "mnist_requests_total", ok) == 20, text[:2000]
        served = f'{{model="mnist-cnn",version="{NEWEST_SHIPPED}"}}'
        assert metric(text, "mnist_images_predicted_total", served) == 20
    finally:
        assert proc.stop() == 0, proc.log()
