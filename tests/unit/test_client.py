"""mnist_client on its own: inputs, retries and errors (httpx.MockTransport stands in for
the server; the real server is exercised in tests/e2e/test_client_cli.py)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from mnist_client import Client, ClientError
from mnist_client._inputs import to_files

OK = {
    "model": {"name": "mnist-cnn", "version": "1"},
    "predictions": [
        {"index": 0, "filename": "a.png", "digit": 7, "confidence": 0.9,
         "probabilities": [0.01] * 7 + [0.9] + [0.01] * 2}
    ],
}  # fmt: skip


def _client(handler, **kw) -> Client:
    client = Client("http://test", backoff_s=0, **kw)
    client._http = httpx.Client(base_url="http://test", transport=httpx.MockTransport(handler))
    return client


def test_client_import_does_not_import_torch() -> None:
    code = "import sys, mnist_client; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_inputs_paths_bytes_files_pil_and_arrays(tmp_path: Path) -> None:
    png = tmp_path / "seven.png"
    Image.new("L", (28, 28)).save(png)
    data = png.read_bytes()
    with open(png, "rb") as fh:
        files = to_files((png, str(png), data, fh, Image.new("L", (8, 8)), np.zeros((2, 28, 28))))
    assert [name for name, _ in files][:4] == ["seven.png", "seven.png", "image2", "seven.png"]
    assert len(files) == 7  # the [2,28,28] array is two images
    assert all(body[:4] == b"\x89PNG" for _, body in files)
    decoded = Image.open(io.BytesIO(files[-1][1]))
    assert decoded.size == (28, 28)
    with pytest.raises(ClientError, match="cannot send a dict"):
        to_files(({},))
    with pytest.raises(ClientError, match="cannot read"):
        to_files((tmp_path / "missing.png",))


def test_client_retries_503_honouring_retry_after_then_succeeds() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(503, headers={"Retry-After": "0"},
                                  json={"error": "busy", "code": "overloaded"})  # fmt: skip
        return httpx.Response(200, json=OK)

    with _client(handler, api_key="k") as client:
        result = client.predict(b"png", top_k=2)
    assert len(calls) == 2
    assert calls[0].headers["authorization"] == "Bearer k"
    assert calls[0].url.params["top_k"] == "2"
    assert result.digits == [7]
    assert result.model.version == "1"


def test_client_gives_up_after_retries_with_the_servers_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(504, json={"error": "too slow", "code": "timeout"})

    with _client(handler, retries=1) as client, pytest.raises(ClientError) as exc:
        client.predict(b"png")
    assert (exc.value.status, exc.value.code, exc.value.message) == (504, "timeout", "too slow")


def test_client_does_not_retry_4xx_and_keeps_per_file_details() -> None:
    calls = 0
    details = [{"index": 1, "filename": "b.png", "error": "empty file"}]

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(
            400, json={"error": "1 of 2 files were rejected", "code": "invalid_image",
                       "details": details})  # fmt: skip

    with _client(handler) as client, pytest.raises(ClientError) as exc:
        client.predict(b"a", b"")
    assert calls == 1
    assert exc.value.code == "invalid_image"
    assert exc.value.details == details


def test_client_retries_connection_errors_then_raises_connection_error() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("refused", request=request)

    with _client(handler, retries=2) as client, pytest.raises(ClientError) as exc:
        client.predict(b"png")
    assert calls == 3
    assert exc.value.code == "connection_error"
    assert exc.value.status is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), (None, 0.5), ("soon", 0.5), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)
def test_retry_after_seconds_or_http_date(value: str | None, expected: float) -> None:
    from mnist_client._client import _retry_after

    assert _retry_after(value, 0.5) == expected
