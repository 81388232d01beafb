"""Several model versions served at once, strict /v1 requests, and per-version statistics,
against real servers: /v1 (the fast lane and FastAPI's full stack), V2 REST and gRPC with
tritonclient, our client and its command line."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from mnist_client import Client, ClientError
from service.serving.card import ModelCard
from tests.conftest import SHIPPED_MODELS, client_env, png_bytes
from tests.support.server import ROOT, ServerProcess, run_to_exit

MODEL = "mnist-cnn"
ADMIN = "admin-versions"


def add_version(repo: Path, version: str, shipped: str) -> Path:
    """The shipped version `shipped` copied as `version` (its card edited to say so)."""
    dst = repo / MODEL / version
    shutil.copytree(SHIPPED_MODELS / MODEL / shipped, dst)
    card = ModelCard.read(dst)
    card.version = version
    card.write(dst)
    return dst


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three versions: 1 and 2 are the shipped v1, 3 the shipped v4 (another model, with a
    "not a digit" class), so an answer's probabilities show which model gave it."""
    root = tmp_path_factory.mktemp("versions")
    add_version(root, "1", "1")
    add_version(root, "2", "1")
    add_version(root, "3", "4")
    return root


def _serve(repo: Path, tmp: Path, **env: str) -> ServerProcess:
    return ServerProcess(
        env={"MNIST_MODEL_REPOSITORY": str(repo), "MNIST_VERSION_POLICY": "latest:2",
             "MNIST_ADMIN_KEY": ADMIN, **env}
    ).start(tmp)  # fmt: skip


@pytest.fixture(scope="module")
def lane(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The default set-up: POST /v1/predict takes the fast lane."""
    proc = _serve(repo, tmp_path_factory.mktemp("lane"))
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def stack(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """With CORS on, every request takes FastAPI's full stack (no lane)."""
    proc = _serve(repo, tmp_path_factory.mktemp("stack"), MNIST_CORS_ORIGINS="http://a.test",
                  MNIST_GRPC_PORT="0")  # fmt: skip
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(params=["lane", "stack"])
def either(request: pytest.FixtureRequest) -> ServerProcess:
    server: ServerProcess = request.getfixturevalue(request.param)
    return server


@pytest.fixture(scope="module")
def digit(mnist_sample) -> tuple[bytes, int]:
    images, labels = mnist_sample
    return png_bytes(images[0]), int(labels[0])


def _predict(server: ServerProcess, data: bytes, query: str = "") -> httpx.Response:
    files = [("files", ("d.png", data, "image/png"))]
    return httpx.post(f"{server.url}/v1/predict{query}", files=files, timeout=30)


def test_models_lists_every_version_with_its_state(lane) -> None:
    body = httpx.get(lane.url + "/v1/models").json()
    assert body["version_policy"] == "latest:2"
    assert body["versions"] == [
        {"version": "1", "state": "available", "default": False},
        {"version": "2", "state": "ready", "default": False},
        {"version": "3", "state": "ready", "default": True},
    ]
    assert body["served"]["version"] == "3"  # the default stays the newest
    assert body["available_versions"] == ["1", "2", "3"]


def test_v1_selects_a_version_on_both_paths(either, digit) -> None:
    data, label = digit
    default = _predict(either, data).json()
    assert default["model"]["version"] == "3"
    r = _predict(either, data, "?version=2&top_k=2")
    assert r.status_code == 200, r.text
    old = r.json()
    assert old["model"]["version"] == "2"
    assert old["predictions"][0]["digit"] == default["predictions"][0]["digit"] == label
    # Another model: the same digit, other probabilities.
    new_p, old_p = (a["predictions"][0]["probabilities"] for a in (default, old))
    assert not np.allclose(new_p, old_p, atol=1e-6)
    assert len(old["predictions"][0]["top_k"]) == 2
    b64 = {"images": [{"data": base64.b64encode(data).decode()}], "version": "2"}
    r = httpx.post(either.url + "/v1/predict/base64", json=b64, timeout=30)
    assert r.json()["model"]["version"] == "2", r.text


@pytest.mark.parametrize(
    ("query", "status", "code", "message"),
    [
        ("?versoin=2", 400, "invalid_input", "unknown query parameter: versoin"),
        ("?top_k=2&b=1&a=2&b=3", 400, "invalid_input", "unknown query parameters: b, a"),
        ("?version=1", 404, "version_not_served",
         "model 'mnist-cnn' version '1' is on disk but not served by the version policy "
         "latest:2; served versions: 2, 3"),
        ("?version=9", 404, "version_not_served",
         "model 'mnist-cnn' version '9' is not found; served versions: 2, 3"),
        ("?version=x", 400, "invalid_input", "version: String should match pattern"),
    ],
)  # fmt: skip
def test_v1_refuses_unknown_parameters_and_versions_alike_on_both_paths(
    either, digit, query: str, status: int, code: str, message: str
) -> None:
    r = _predict(either, digit[0], query)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert message in r.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "message"),
    [
        ("GET", "/v1/models?verbose=1", {}, "unknown query parameter: verbose"),
        ("POST", "/v1/predict/base64?top_k=2", {"json": {"images": [{"data": "AA=="}]}},
         "unknown query parameter: top_k"),
        ("POST", "/v1/predict/base64",
         {"json": {"images": [{"data": "AA==", "name": "x.png"}], "topk": 2}},
         "unknown body fields: images.0.name, topk"),
        ("POST", "/v1/predict", {"files": [("file", ("d.png", b"x"))]},
         "unknown form field: file; send each file as a part named 'files'"),
    ],
)  # fmt: skip
def test_v1_refuses_unknown_fields_by_name(
    either, method: str, path: str, kwargs: dict, message: str
) -> None:
    r = httpx.request(method, either.url + path, timeout=30, **kwargs)
    assert (r.status_code, r.json()) == (400, {"error": message, "code": "invalid_input"})


def test_concurrent_requests_for_two_versions_are_never_mixed(lane, digit) -> None:
    data = digit[0]
    reference = {v: _predict(lane, data, f"?version={v}").json() for v in ("2", "3")}
    versions = ["2", "3"] * 24

    def send(version: str) -> dict:
        return _predict(lane, data, f"?version={version}").json()

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, versions))
    for version, answer in zip(versions, answers, strict=True):
        assert answer["model"]["version"] == version
        np.testing.assert_allclose(
            answer["predictions"][0]["probabilities"],
            reference[version]["predictions"][0]["probabilities"],
            atol=1e-4,
        )


def _tensor(digit_png: bytes, client: type) -> object:
    inp = client.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([digit_png], dtype=np.object_))
    return inp


def test_v2_rest_selects_versions_with_tritonclient(lane, digit) -> None:
    triton = httpclient.InferenceServerClient(url=lane.url.removeprefix("http://"))
    try:
        assert triton.get_model_metadata(MODEL)["versions"] == ["2", "3"]
        assert triton.is_model_ready(MODEL, "2")
        for version in ("2", "3"):
            result = triton.infer(MODEL, [_tensor(digit[0], httpclient)], model_version=version)
            assert result.get_response()["model_version"] == version
            assert int(result.as_numpy("label")[0]) == digit[1]
        assert triton.infer(MODEL, [_tensor(digit[0], httpclient)]).get_response()[
            "model_version"
        ] == "3"  # fmt: skip
        with pytest.raises(InferenceServerException, match="not served by the version policy"):
            triton.infer(MODEL, [_tensor(digit[0], httpclient)], model_version="1")
    finally:
        triton.close()
    r = httpx.post(lane.url + f"/v2/models/{MODEL}/versions/1/infer", json={"inputs": []})
    assert (r.status_code, r.json()["code"]) == (404, "version_not_served")


def test_v2_grpc_selects_versions_with_tritonclient(lane, digit) -> None:
    triton = grpcclient.InferenceServerClient(url=lane.grpc_url)
    try:
        for version in ("2", "3"):
            result = triton.infer(MODEL, [_tensor(digit[0], grpcclient)], model_version=version)
            assert result.get_response().model_version == version
            assert int(result.as_numpy("label")[0]) == digit[1]
        with pytest.raises(InferenceServerException) as refused:
            triton.infer(MODEL, [_tensor(digit[0], grpcclient)], model_version="1")
        assert refused.value.status() == "StatusCode.NOT_FOUND"
        assert "not served by the version policy latest:2" in refused.value.message()
    finally:
        triton.close()


def test_v2_statistics_add_up_per_version(lane, digit) -> None:
    triton = httpclient.InferenceServerClient(url=lane.url.removeprefix("http://"))

    def stats(version: str) -> dict:
        return triton.get_inference_statistics(MODEL, version)["model_stats"][0]

    try:
        before = stats("2")
        for _ in range(3):
            triton.infer(MODEL, [_tensor(digit[0], httpclient)], model_version="2")
        _predict(lane, digit[0], "?version=2")
        after = stats("2")
        every = triton.get_inference_statistics(MODEL)["model_stats"]
    finally:
        triton.close()
    assert after["version"] == "2"
    assert [s["version"] for s in every] == ["2", "3"]
    assert after["inference_count"] - before["inference_count"] == 4
    assert after["execution_count"] - before["execution_count"] >= 1
    s = after["inference_stats"]
    assert int(s["success"]["count"]) - int(before["inference_stats"]["success"]["count"]) == 4
    for stage in ("queue", "compute_input", "compute_infer"):
        assert s[stage]["count"] == s["success"]["count"], stage
    parts = sum(int(s[stage]["ns"]) for stage in ("queue", "compute_input", "compute_infer"))
    assert 0 < int(s["compute_input"]["ns"]) <= parts <= int(s["success"]["ns"])


def test_metric_route_labels_are_the_urls(lane, digit) -> None:
    _predict(lane, digit[0])
    httpx.post(lane.url + f"/v2/models/{MODEL}/versions/2/infer", json={"inputs": []})
    httpx.get(lane.url + f"/v2/models/{MODEL}/stats")
    text = httpx.get(lane.url + "/metrics").text
    routes = set(re.findall(r'^mnist_requests_total\{[^}]*route="([^"]+)"', text, re.M))
    assert {"/v1/predict", "/v2/models/{name}/versions/{version}/infer",
            "/v2/models/{name}/stats"} <= routes  # fmt: skip
    http = {r for r in routes if not r.startswith("/inference.")}  # gRPC methods
    assert all(r.startswith(("/v1/", "/v2", "/metrics", "/health")) for r in http), http


def test_client_and_cli_select_a_version(lane, digit, tmp_path: Path) -> None:
    path = tmp_path / "d.png"
    path.write_bytes(digit[0])
    with Client(lane.url) as client:
        assert client.predict(path).model.version == "3"
        assert client.predict(path, version=2).model.version == "2"
        with pytest.raises(ClientError) as refused:
            client.predict(path, version="1")
        assert (refused.value.status, refused.value.code) == (404, "version_not_served")
        with pytest.raises(ClientError, match="version_not_served|not served"):
            list(client.predict_many([path, path], version="1"))
    run = subprocess.run(
        [sys.executable, "-m", "service.cli", "predict", str(path), "--url", lane.url,
         "--model-version", "2", "--format", "jsonl"],
        cwd=ROOT, env=client_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    line = json.loads(run.stdout.splitlines()[0])
    assert (line["digit"], line["kind"]) == (digit[1], "digit")
    run = subprocess.run(
        [sys.executable, "-m", "service.cli", "predict", str(path), "--url", lane.url,
         "--model-version", "1"],
        cwd=ROOT, env=client_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 2, run.stdout
    assert "(version_not_served)" in run.stderr


def test_startup_refuses_a_policy_over_the_memory_bound(repo: Path) -> None:
    done = run_to_exit({"MNIST_MODEL_REPOSITORY": str(repo), "MNIST_VERSION_POLICY": "all",
                        "MNIST_MAX_MODEL_MEMORY_MIB": "10"})  # fmt: skip
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"error: version policy all serves versions 1, 2, 3, an estimated \d+ MiB, over "
        r"max_model_memory_mib \(10\): serve fewer versions or raise MNIST_MAX_MODEL_MEMORY_MIB",
        last,
    ), last


def test_reload_applies_the_policy_to_a_new_version(lane, repo: Path, digit) -> None:
    """Last in this module: it changes the served versions."""
    add_version(repo, "4", "1")
    r = httpx.post(lane.url + "/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"},
                   timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    assert (r.json()["version"], r.json()["versions"]) == ("4", ["3", "4"])
    assert _predict(lane, digit[0]).json()["model"]["version"] == "4"
    assert _predict(lane, digit[0], "?version=3").json()["model"]["version"] == "3"
    assert _predict(lane, digit[0], "?version=2").json()["code"] == "version_not_served"
    versions = httpx.get(lane.url + "/v1/models").json()["versions"]
    assert [(v["version"], v["state"]) for v in versions] == [
        ("1", "available"), ("2", "available"), ("3", "ready"), ("4", "ready"),
    ]  # fmt: skip
