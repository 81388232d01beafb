"""Fuzzed headers and query strings never make the server answer 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.http.app import create_app
from tests.api.conftest import make_settings
from tests.conftest import png_bytes

_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_HEADER_VALUE = st.one_of(
    _TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")).filter(
        lambda b: b"\r" not in b and b"\n" not in b and b"\0" not in b
    ),
    st.sampled_from([b"\xc2\xb2", b"-1", b"99999999999999999999999999", b"1e3", b"0x10", b""]),
)
_HEADERS = st.dictionaries(
    st.sampled_from(
        [
            "authorization",
            "x-api-key",
            "x-request-id",
            "inference-header-content-length",
            "accept",
            "content-type",
            "origin",
        ]  # fmt: skip
    ),
    _HEADER_VALUE,
    max_size=4,
)
_QUERY = st.dictionaries(
    st.sampled_from(["top_k", "return_image", "x"]),
    st.one_of(_TEXT, st.sampled_from(["²", "٣", "10", "0", "true", "TRUE", "1.5"])),
    max_size=3,
)


@pytest.fixture(scope="module")
def client(shipped_models: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(shipped_models)), raise_server_exceptions=False) as c:
        yield c


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(headers=_HEADERS, query=_QUERY, route=st.sampled_from(["multipart", "base64", "v2"]))
def test_fuzzed_headers_and_queries_are_never_5xx(
    client: TestClient, headers: dict[str, bytes], query: dict[str, str], route: str
) -> None:
    image = png_bytes(np.full((28, 28), 255, dtype=np.uint8))
    sent = {k: v for k, v in headers.items() if k != "content-type"}  # bytes, sent as they are
    if route == "multipart":
        r = client.post("/v1/predict", params=query, files={"files": ("a.png", image)},
                        headers=sent)  # fmt: skip
    elif route == "base64":
        r = client.post("/v1/predict/base64", params=query, json={"images": [{"data": "AAAA"}]},
                        headers=sent)  # fmt: skip
    else:
        body = {"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 784],
                            "data": [0] * 784}]}  # fmt: skip
        r = client.post("/v2/models/mnist-cnn/infer", params=query, json=body, headers=sent)
    assert r.status_code < 500, (route, headers, query, r.status_code, r.text)
