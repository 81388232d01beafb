"""mnist_client on its own: inputs, retries and errors (httpx.MockTransport stands in for
the server; the real server is exercised in tests/e2e/test_client_cli.py)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from mnist_client import AsyncClient, Client, ClientError, DigitRead
from mnist_client._inputs import to_files
from tests.conftest import client_env

OK = {
    "model": {"name": "mnist-cnn", "version": "1"},
    "predictions": [
        {"index": 0, "filename": "a.png", "digit": 7, "confidence": 0.9,
         "probabilities": [0.01] * 7 + [0.9] + [0.01] * 2}
    ],
}  # fmt: skip

#: A number, a not_a_digit and a digit, as /v1/predict answers them (service/http/api/rest.py).
MIXED = {
    "model": {"name": "mnist-cnn", "version": "3"},
    "predictions": [
        {"index": 0, "filename": "row.png", "kind": "number", "digit": None, "confidence": 0.97,
         "number": "12\n3",
         "digits": [{"digit": 1, "confidence": 0.99, "box": [20, 28, 90, 112]},
                    {"digit": 2, "confidence": 0.99, "box": [124, 28, 200, 112]},
                    {"digit": 3, "confidence": 0.99, "box": [20, 140, 90, 230]}]},
        {"index": 1, "filename": "blank.png", "kind": "not_a_digit", "digit": None,
         "confidence": None, "reason": "blank: no ink in the image"},
        {"index": 2, "filename": "seven.png", "kind": "digit", "digit": 7, "confidence": 0.9,
         "number": "7", "digits": [{"digit": 7, "confidence": 0.9, "box": [3, 4, 25, 26]}],
         "probabilities": [0.01] * 7 + [0.9] + [0.01] * 2,
         "top_k": [{"digit": 7, "probability": 0.9}]},
    ],
}  # fmt: skip


def _client(handler, **kw) -> Client:
    client = Client("http://test", backoff_s=0, **kw)
    client._http = httpx.Client(base_url="http://test", transport=httpx.MockTransport(handler))
    return client


def test_client_import_does_not_import_torch() -> None:
    code = "import sys, mnist_client; sys.exit('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], env=client_env(), check=False)
    assert run.returncode == 0


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


def test_client_reads_a_number_answer() -> None:
    with _client(lambda request: httpx.Response(200, json=MIXED)) as client:
        number = client.predict(b"png")[0]
    assert (number.kind, number.digit, number.number) == ("number", None, "12\n3")
    assert number.confidence == 0.97
    assert number.digits == (
        DigitRead(1, 0.99, (20, 28, 90, 112)),
        DigitRead(2, 0.99, (124, 28, 200, 112)),
        DigitRead(3, 0.99, (20, 140, 90, 230)),
    )
    assert number.probabilities == ()
    assert number.top_k is None
    assert number.reason is None


def test_client_reads_a_not_a_digit_answer_and_keeps_digit_answers_as_before() -> None:
    with _client(lambda request: httpx.Response(200, json=MIXED)) as client:
        result = client.predict(b"png", b"png", b"png")
    blank, seven = result[1], result[2]
    assert (blank.kind, blank.digit, blank.confidence) == ("not_a_digit", None, None)
    assert blank.reason == "blank: no ink in the image"
    assert (blank.number, blank.digits, blank.probabilities) == (None, (), ())
    assert (seven.kind, seven.digit, seven.confidence, seven.number) == ("digit", 7, 0.9, "7")
    assert seven.digits == (DigitRead(7, 0.9, (3, 4, 25, 26)),)
    assert len(seven.probabilities) == 10
    assert seven.top_k is not None
    assert seven.top_k[0].digit == 7
    assert result.digits == [None, None, 7]


async def test_one_digit_is_sent_as_a_query_parameter_only_when_set() -> None:
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, json=OK)

    with _client(handler) as client:
        client.predict(b"png", one_digit=True)
        client.predict(b"png", top_k=2)
    async with AsyncClient("http://test") as aclient:
        await aclient._http.aclose()
        aclient._http = httpx.AsyncClient(
            base_url="http://test", transport=httpx.MockTransport(handler)
        )
        await aclient.predict(b"png", one_digit=True)
    assert [dict(u.params) for u in seen] == [{"one_digit": "true"}, {"top_k": "2"},
                                              {"one_digit": "true"}]  # fmt: skip


def test_cli_prints_kind_and_answer_and_passes_one_digit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mnist_client import cli
    from mnist_client.cli import predict

    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":  # the limits, from /v1/models
            return httpx.Response(200, json={"limits": {"max_files": 64}})
        seen.append(request.url)
        return httpx.Response(200, json=MIXED)

    class Mocked(Client):
        def __init__(self, url: str | None = None, **kw) -> None:
            super().__init__(url, **kw)
            self._http = httpx.Client(base_url=self.url, transport=httpx.MockTransport(handler))

    monkeypatch.setattr(cli, "Client", Mocked)
    files = []
    for name in ("row.png", "blank.png", "seven.png"):
        (tmp_path / name).write_bytes(b"png")
        files.append(str(tmp_path / name))
    out, err = io.StringIO(), io.StringIO()
    assert predict([*files, "--one-digit"], out, err) == 0, err.getvalue()
    assert seen[0].params["one_digit"] == "true"
    header, row, blank, seven = out.getvalue().splitlines()
    assert header.split() == ["FILE", "KIND", "ANSWER", "CONFIDENCE"]
    assert row.split() == [files[0], "number", "12/3", "0.9700"]
    assert blank.split() == [files[1], "not_a_digit", "not", "a", "digit:", "blank:", "no",
                             "ink", "in", "the", "image", "-"]  # fmt: skip
    assert seven.split() == [files[2], "digit", "7", "0.9000"]
    out = io.StringIO()
    assert predict([*files, "--json"], out, err) == 0, err.getvalue()
    row_json, blank_json, seven_json = json.loads(out.getvalue())["predictions"]
    assert row_json == {
        "file": files[0], "kind": "number", "digit": None, "number": "12\n3",
        "confidence": 0.97, "reason": None, "code": None, "error": None,
        "digits": [{"digit": 1, "confidence": 0.99, "box": [20, 28, 90, 112]},
                   {"digit": 2, "confidence": 0.99, "box": [124, 28, 200, 112]},
                   {"digit": 3, "confidence": 0.99, "box": [20, 140, 90, 230]}],
    }  # fmt: skip
    assert blank_json["kind"] == "not_a_digit"
    assert (blank_json["digit"], blank_json["confidence"]) == (None, None)
    assert blank_json["reason"] == "blank: no ink in the image"
    assert blank_json["digits"] == []
    assert (seven_json["kind"], seven_json["digit"], seven_json["top_k"]) == (
        "digit",
        7,
        [[7, 0.9]],
    )
