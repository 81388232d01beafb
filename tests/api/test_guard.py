"""Keys and body limits are checked before a body is read, on every route that takes one."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from PIL import Image

from service.http.app import create_app
from tests.api.conftest import make_settings

KEY = "k-123"


@pytest.fixture
async def app(shipped_models: Path) -> AsyncIterator[FastAPI]:
    application = create_app(
        make_settings(
            shipped_models,
            api_keys=KEY,
            admin_key="admin",
            max_request_bytes=1 << 20,
            max_file_bytes=1 << 20,
        )
    )
    async with LifespanManager(application):
        yield application


async def call(
    app: FastAPI,
    method: str,
    path: str,
    headers: dict[str, str],
    chunks: list[bytes | None],
) -> tuple[int, dict[str, str], dict[str, Any], int]:
    """Send one request straight into the ASGI app; count how many body chunks it read."""
    pending = list(chunks)
    reads = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal reads
        if not pending:  # the client waits for its answer, as a real one does
            await asyncio.Event().wait()
        chunk = pending.pop(0)
        if chunk is None:  # a stalled upload: the rest never comes
            await asyncio.Event().wait()
        reads += 1
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], response_headers, orjson.loads(body), reads


HUGE = str(300 * 1024 * 1024)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/predict/base64", "application/json"),
        ("/v1/predict", "multipart/form-data; boundary=x"),
        ("/v2/models/mnist-cnn/infer", "application/json"),
        ("/admin/reload", "application/json"),
    ],
)
async def test_a_missing_key_is_refused_before_any_body_is_read(
    app: FastAPI, path: str, content_type: str
) -> None:
    headers = {"content-type": content_type, "content-length": HUGE}
    status, _, body, reads = await call(app, "POST", path, headers, [b"{" * 1000] * 5)
    assert status == 401
    assert body["code"] == "unauthorized"
    assert reads == 0


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/v1/predict/base64", KEY),
        ("/v1/predict", KEY),
        ("/v2/models/mnist-cnn/infer", KEY),
        ("/admin/reload", "admin"),
    ],
)
async def test_a_declared_length_over_the_limit_is_413_at_once(
    app: FastAPI, path: str, key: str
) -> None:
    headers = {
        "content-type": "multipart/form-data; boundary=x"
        if path == "/v1/predict"
        else "application/json",
        "content-length": HUGE,
        "authorization": f"Bearer {key}",
    }
    status, response_headers, body, reads = await call(app, "POST", path, headers, [b"{"] * 5)
    assert status == 413
    assert body["code"] == "payload_too_large"
    assert reads == 0
    assert response_headers.get("connection") == "close" or path != "/v1/predict/base64"


async def test_a_streamed_body_is_cut_off_once_it_passes_the_limit(app: FastAPI) -> None:
    headers = {"content-type": "application/json", "x-api-key": KEY}  # no length: chunked
    chunks = [b" " * (256 * 1024)] * 40  # 10 MiB against a 1.4 MiB limit
    status, _, body, reads = await call(app, "POST", "/v1/predict/base64", headers, chunks)
    assert status == 413
    assert reads < 10


async def test_admin_bodies_are_tiny(app: FastAPI) -> None:
    headers = {"content-type": "application/json", "x-api-key": "admin"}
    status, _, _, _ = await call(app, "POST", "/admin/reload", headers, [b" " * 5000])
    assert status == 413


async def test_base64_image_count_is_refused_before_objects_are_built(app: FastAPI) -> None:
    payload = orjson.dumps({"images": [{"data": ""}] * 100_000})
    headers = {"content-type": "application/json", "x-api-key": KEY}
    status, _, body, _ = await call(app, "POST", "/v1/predict/base64", headers, [payload])
    assert status == 413
    assert "values" in body["error"]  # counted before parsing


async def test_base64_still_predicts_and_documents_its_body(app: FastAPI) -> None:
    canvas = Image.new("L", (64, 64), 255)
    canvas.paste(0, (30, 8, 34, 56))  # a vertical bar: a one
    canvas.save(buf := io.BytesIO(), format="PNG")
    payload = orjson.dumps({"images": [{"data": base64.b64encode(buf.getvalue()).decode()}]})
    headers = {"content-type": "application/json", "x-api-key": KEY}
    status, _, body, _ = await call(app, "POST", "/v1/predict/base64", headers, [payload])
    assert status == 200, body
    assert body["predictions"][0]["digit"] == 1
    schema = app.openapi()
    operation = schema["paths"]["/v1/predict/base64"]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.rsplit("/", 1)[1] in schema["components"]["schemas"]
    assert "Base64Image" in schema["components"]["schemas"]


@pytest.mark.parametrize("value", ["²", "1e3", "-1", "0x10", "11"])
async def test_bad_top_k_is_400_never_500(app: FastAPI, value: str) -> None:
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://t") as client:
        response = await client.post(
            "/v1/predict",
            params={"top_k": value},
            files={"files": ("a.png", b"\x89PNG")},
            headers={"x-api-key": KEY},
        )
    assert response.status_code == 400, response.text
    assert "top_k" in response.json()["error"]


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/predict", "multipart/form-data; boundary=x"),
        ("/v1/predict/base64", "application/json"),
        ("/v2/models/mnist-cnn/infer", "application/json"),
    ],
)
async def test_uploads_in_flight_are_bounded_per_worker(
    shipped_models: Path, path: str, content_type: str
) -> None:
    application = create_app(make_settings(shipped_models, api_keys=KEY, max_inflight_body_mib=1))
    headers = {
        "content-type": content_type,
        "content-length": str(700 * 1024),
        "x-api-key": KEY,
    }
    async with LifespanManager(application):
        # A slow upload: its first chunk arrives, the rest never does.
        slow = asyncio.create_task(call(application, "POST", path, headers, [b"-", None]))
        await asyncio.sleep(0.1)
        status, response_headers, body, reads = await call(
            application, "POST", path, headers, [b"-"]
        )
        assert status == 503
        assert body["code"] == "overloaded"
        assert response_headers["retry-after"] == "1"
        assert reads == 0
        slow.cancel()


async def test_json_bodies_of_millions_of_tiny_values_are_refused_before_parsing(
    app: FastAPI,
) -> None:
    headers = {"content-type": "application/json", "x-api-key": KEY}
    junk = b'{"images": [{"data": "aaaa"}], "junk": [' + b"[]," * 200_000 + b"[]]}"
    status, _, body, _ = await call(app, "POST", "/v1/predict/base64", headers, [junk])
    assert status == 413, body
    assert "values" in body["error"]
    v2 = (
        b'{"inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": ['
        + b"[]," * 400_000
        + b"[]]}]}"
    )
    status, _, body, _ = await call(app, "POST", "/v2/models/mnist-cnn/infer", headers, [v2])
    assert status == 413, body


async def test_one_v2_request_may_hold_at_most_half_the_queue(shipped_models: Path) -> None:
    application = create_app(make_settings(shipped_models, max_queue_size=64, max_batch_size=8))
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [33, 784], "datatype": "UINT8", "data": [0] * (33 * 784)}
            ]
        }  # fmt: skip
    )
    async with LifespanManager(application):
        status, _, answer, _ = await call(
            application,
            "POST",
            "/v2/models/mnist-cnn/infer",
            {"content-type": "application/json"},
            [body],
        )
    assert status == 413, answer
    assert str(32 * 784) in answer["error"]  # 32 rows of 784 pixels: half of 64


async def test_made_up_keys_do_not_make_new_clients_when_keys_are_off(
    shipped_models: Path,
) -> None:
    from starlette.requests import Request

    from service.http.api.deps import client_key

    application = create_app(make_settings(shipped_models))
    scope = {"type": "http", "app": application, "client": ("10.0.0.7", 1), "headers": []}
    plain = client_key(Request(scope))
    keyed = client_key(Request({**scope, "headers": [(b"x-api-key", b"made-up-1")]}))
    assert plain == keyed == "addr:10.0.0.7"


async def test_multipart_with_thousands_of_other_fields_is_refused_at_the_first(
    app: FastAPI,
) -> None:
    parts = b"".join(
        b'--x\r\nContent-Disposition: form-data; name="f"\r\n\r\n\r\n' for _ in range(500)
    )
    body = parts + b"--x--\r\n"
    headers = {"content-type": "multipart/form-data; boundary=x", "x-api-key": KEY}
    status, _, answer, _ = await call(app, "POST", "/v1/predict", headers, [body])
    assert status == 400, answer
    assert answer["error"] == "unknown form field: f; send each file as a part named 'files'"


async def test_the_predict_lane_and_the_fastapi_route_answer_alike(app: FastAPI) -> None:
    # /v1/predict goes through its lane (no router, no dependency solving) unless a
    # dependency is overridden; both must give the same statuses and bodies.
    from service.http.api import deps

    answers = []
    for override in (False, True):
        if override:
            app.dependency_overrides[deps.get_settings] = deps.get_settings
        try:
            bad_key = await call(app, "POST", "/v1/predict", {"x-api-key": "wrong"}, [b""])
            no_files = await call(
                app, "POST", "/v1/predict",
                {"content-type": "multipart/form-data; boundary=x", "x-api-key": KEY},
                [b"--x--\r\n"],
            )  # fmt: skip
            not_multipart = await call(
                app, "POST", "/v1/predict", {"content-type": "text/plain", "x-api-key": KEY},
                [b"7"],
            )  # fmt: skip
        finally:
            app.dependency_overrides.clear()
        answers.append([(a[0], a[2]) for a in (bad_key, no_files, not_multipart)])
    assert answers[0] == answers[1]
    assert [status for status, _ in answers[0]] == [401, 400, 415], answers[0]
