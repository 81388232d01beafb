"""The OpenAPI document is valid and useful; /docs and /redoc need no network."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from service.http.app import create_app
from tests.api.conftest import make_settings


def test_openapi_is_valid_complete_and_never_mentions_422(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    validate(spec)
    text = json.dumps(spec)
    assert '"422"' not in text
    refs = set(re.findall(r"#/components/schemas/([\w.-]+)", text))
    assert refs <= set(spec["components"]["schemas"]), refs - set(spec["components"]["schemas"])
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_openapi_security_schemes_and_readable_operation_ids(shipped_models: Path) -> None:
    settings = make_settings(shipped_models, api_keys="k", admin_key="a")
    spec = create_app(settings).openapi()
    assert spec["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "Authorization: Bearer <key>"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }  # fmt: skip
    operations = {
        (path, method): op for path, ops in spec["paths"].items() for method, op in ops.items()
    }
    ids = [op["operationId"] for op in operations.values()]
    assert len(ids) == len(set(ids)), ids
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", i) and "_v1_" not in i for i in ids), ids
    assert operations[("/v1/predict", "post")]["operationId"] == "predict_digits"
    assert operations[("/v2/models/{name}/infer", "post")]["operationId"] == "infer"
    assert operations[("/v1/predict", "post")]["security"] == [{"bearer": []}, {"apiKey": []}]
    assert "security" not in operations[("/v2/health/ready", "get")]
    body = operations[("/v2/models/{name}/infer", "post")]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/InferenceRequest"
    }
    assert "Inference-Header-Content-Length" in body["description"]


def test_docs_and_redoc_load_their_assets_from_this_server(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
        urls += re.findall(r"""url: ?['"]([^'"]+)['"]""", html)
        assert urls, html
        for url in urls:
            assert url.startswith("/"), f"{page} loads {url} from elsewhere"
            if url != "/openapi.json":
                assert client.get(url).status_code == 200, url
