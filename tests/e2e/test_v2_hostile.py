"""Hostile V2 requests over real HTTP get a precise 4xx, never a 5xx."""

from __future__ import annotations

import struct

import httpx
import pytest

MODEL = "mnist-cnn"


@pytest.fixture(scope="module")
def infer_url(server) -> str:
    return f"{server.url}/v2/models/{MODEL}/infer"


def test_v2_superscript_header_length_is_400(infer_url: str) -> None:
    r = httpx.post(
        infer_url, content=b"{}", headers={"Inference-Header-Content-Length": "²".encode("latin-1")}
    )
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_input"


@pytest.mark.parametrize("value", [300, -1, 2**64])
def test_v2_uint8_out_of_range_is_400(infer_url: str, value: int) -> None:
    data = [0] * 783 + [value]
    body = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": data}]}
    r = httpx.post(infer_url, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_input"


def test_v2_millions_of_bytes_elements_are_413(infer_url: str) -> None:
    raw = struct.pack("<I", 0) * 2_000_000
    header = (
        b'{"inputs":[{"name":"image","shape":[2000000],"datatype":"BYTES",'
        b'"parameters":{"binary_data_size":%d}}]}' % len(raw)
    )
    r = httpx.post(
        infer_url,
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=30,
    )
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "payload_too_large"


def test_v2_unknown_request_fields_are_ignored(infer_url: str) -> None:
    body = {
        "model_name": MODEL,  # what the KServe SDK sends
        "inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}],
        "outputs": [{"name": "label"}],
    }
    r = httpx.post(infer_url, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["name"] == "label"


def test_v2_json_data_list_with_millions_of_elements_is_413(infer_url: str) -> None:
    header = b'{"inputs":[{"name":"input","shape":[1,784],"datatype":"UINT8","data":['
    body = header + b",".join([b"0"] * 4_000_000) + b"]}]}"
    r = httpx.post(infer_url, content=body, timeout=60)
    assert r.status_code == 413, r.text
    assert "values" in r.json()["error"]  # counted before the JSON is parsed
