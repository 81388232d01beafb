"""Hypothesis-generated image bytes never produce a 5xx from the real server."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]


def _real_files() -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for fmt in FORMATS:
        arr = (rng.random((40, 30)) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).convert("RGB" if fmt == "JPEG" else "L").save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


REAL = _real_files()


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "truncated", "mutated", "spliced"]))
    if kind == "random":
        return draw(st.binary(min_size=0, max_size=2048))
    data = bytearray(draw(st.sampled_from(REAL)))
    if kind == "truncated":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "mutated":
        for _ in range(draw(st.integers(1, 12))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] = draw(st.integers(0, 255))
        return bytes(data)
    other = draw(st.sampled_from(REAL))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + other[draw(st.integers(0, len(other))) :]


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@given(payload=hostile_bytes())
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_uploaded_bytes_never_5xx(http, payload: bytes) -> None:
    r = http.post("/v1/predict", files=[("files", ("f.bin", payload, "image/png"))])
    assert r.status_code < 500, r.text
    body = r.json()
    if r.status_code == 200:
        assert len(body["predictions"]) == 1
    else:
        assert set(body) >= {"error", "code"}
        assert r.status_code in (400, 413, 415)


@given(payload=hostile_bytes())
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_v2_bytes_input_never_5xx(http, payload: bytes) -> None:
    header = (
        b'{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES",'
        b'"parameters":{"binary_data_size":%d}}]}' % (len(payload) + 4)
    )
    body = header + len(payload).to_bytes(4, "little") + payload
    r = http.post(
        "/v2/models/mnist-cnn/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code < 500, r.text
    assert r.status_code in (200, 400, 413, 415)
