"""/v1 routes in-process: exact status codes and JSON bodies, errors included."""

from __future__ import annotations

import base64
import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from PIL import Image

from service.http.app import create_app
from tests.api.conftest import make_settings
from tests.conftest import NEWEST_SHIPPED, SHIPPED_VERSIONS, png_bytes


def files_of(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def test_predict_single_mnist_png(client: TestClient, mnist_sample) -> None:
    images, labels = mnist_sample
    r = client.post("/v1/predict", files=files_of(("seven.png", png_bytes(images[0]))))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": "mnist-cnn", "version": NEWEST_SHIPPED}
    (p,) = body["predictions"]
    assert p["index"] == 0
    assert p["filename"] == "seven.png"
    assert p["digit"] == int(labels[0])
    assert sum(p["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert p["confidence"] == max(p["probabilities"])
    assert "top_k" not in p
    assert "processed_image" not in p
    assert r.headers["x-request-id"]


def test_predict_many_files_keep_upload_order(client: TestClient, mnist_sample) -> None:
    images, labels = mnist_sample
    uploads = files_of(*[(f"d{i}.png", png_bytes(images[i])) for i in range(40)])
    r = client.post("/v1/predict", files=uploads)
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert [p["index"] for p in preds] == list(range(40))
    assert [p["filename"] for p in preds] == [f"d{i}.png" for i in range(40)]
    correct = sum(p["digit"] == labels[i] for i, p in enumerate(preds))
    assert correct >= 39


def test_predict_top_k_and_processed_image(client: TestClient, mnist_sample) -> None:
    images, _ = mnist_sample
    r = client.post(
        "/v1/predict?top_k=3&return_image=true", files=files_of(("a.png", png_bytes(images[1])))
    )
    p = r.json()["predictions"][0]
    assert [t["digit"] for t in p["top_k"]][0] == p["digit"]
    probs = [t["probability"] for t in p["top_k"]]
    assert probs == sorted(probs, reverse=True)
    assert len(probs) == 3
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(p["processed_image"]))))
    np.testing.assert_array_equal(seen, images[1])


def test_predict_base64_json(client: TestClient, mnist_sample) -> None:
    images, labels = mnist_sample
    payload = {
        "images": [
            {"data": base64.b64encode(png_bytes(images[i])).decode(), "filename": f"x{i}.png"}
            for i in range(3)
        ],
        "top_k": 2,
    }
    r = client.post("/v1/predict/base64", json=payload)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["digit"] for p in preds] == [int(v) for v in labels[:3]]
    assert preds[2]["filename"] == "x2.png"


@pytest.mark.parametrize(
    ("files", "status", "body"),
    [
        (
            [("e.png", b"")],
            400,
            {"error": "empty file", "code": "invalid_image"},
        ),
        (
            [("t.txt", b"just some text")],
            415,
            {
                "error": "not a supported image file (PNG, JPEG, BMP, GIF, WebP or TIFF)",
                "code": "unsupported_media_type",
            },
        ),
        (
            [("t.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00")],
            400,
            {"error": "corrupt image: the header cannot be read", "code": "invalid_image"},
        ),
    ],
)
def test_predict_bad_single_file(
    client: TestClient, files: list[tuple[str, bytes]], status: int, body: dict
) -> None:
    r = client.post("/v1/predict", files=files_of(*files))
    assert r.status_code == status
    assert r.json() == body


def test_predict_bad_files_among_good_ones_answer_in_their_place(
    client: TestClient, mnist_sample
) -> None:
    images, labels = mnist_sample
    good = png_bytes(images[0])
    r = client.post(
        "/v1/predict",
        files=files_of(("ok.png", good), ("bad.txt", b"nope"), ("ok2.png", good), ("z.png", b"")),
    )
    assert r.status_code == 200
    ok, bad, ok2, empty = r.json()["predictions"]
    assert (ok["kind"], ok["digit"], ok2["digit"]) == ("digit", int(labels[0]), int(labels[0]))
    assert bad == {
        "index": 1, "filename": "bad.txt", "kind": "error", "digit": None, "confidence": None,
        "code": "unsupported_media_type",
        "error": "not a supported image file (PNG, JPEG, BMP, GIF, WebP or TIFF)",
    }  # fmt: skip
    assert (empty["index"], empty["kind"], empty["code"]) == (3, "error", "invalid_image")
    encoded = [base64.b64encode(d).decode() for d in (good, b"nope")]
    r = client.post("/v1/predict/base64", json={"images": [{"data": e} for e in encoded]})
    assert [p["kind"] for p in r.json()["predictions"]] == ["digit", "error"]
    # ... and the server keeps serving.
    assert client.post("/v1/predict", files=files_of(("ok.png", good))).status_code == 200


def test_predict_no_files_and_wrong_content_type(client: TestClient) -> None:
    r = client.post(
        "/v1/predict", data={"other": "x"}, files=[("other", ("a", b"1", "text/plain"))]
    )
    assert (r.status_code, r.json()) == (
        400,
        {
            "error": "unknown form field: other; send each file as a part named 'files'",
            "code": "invalid_input",
        },
    )
    r = client.post("/v1/predict", json={"files": []})
    assert r.status_code == 415
    assert r.json()["code"] == "unsupported_media_type"


def test_predict_limits_files_and_bytes(shipped_models: Path, mnist_sample) -> None:
    settings = make_settings(
        shipped_models, max_files=3, max_file_bytes=2000, max_request_bytes=5000
    )
    good = png_bytes(mnist_sample[0][0])
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/predict", files=files_of(*[("a.png", good)] * 4))
        assert (r.status_code, r.json()) == (
            413,
            {"error": "too many files: at most 3 per request", "code": "payload_too_large"},
        )
        r = c.post("/v1/predict", files=files_of(("big.png", b"\x89PNG" + b"0" * 3000)))
        assert r.status_code == 413
        assert r.json()["error"] == "file 0 (big.png) exceeds 2000 bytes"
        r = c.post("/v1/predict", files=files_of(*[("a.png", b"0" * 1900)] * 3))
        assert r.status_code == 413
        assert r.json()["error"] == "request body exceeds 5000 bytes"
        assert c.post("/v1/predict", files=files_of(("a.png", good))).status_code == 200


def test_predict_bad_query_and_json_are_400(client: TestClient) -> None:
    r = client.post("/v1/predict?top_k=11", files=files_of(("a.png", b"x")))
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_input"
    assert "top_k" in r.json()["error"]
    r = client.post(
        "/v1/predict/base64", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_input"
    r = client.post("/v1/predict/base64", json={"images": [{"data": "***"}]})
    assert r.json() == {"error": "images[0].data is not valid base64", "code": "invalid_input"}
    r = client.post("/v1/predict/base64", json={"images": []})
    assert r.status_code == 400


def test_models_lists_served_model_and_limits(client: TestClient) -> None:
    r = client.get("/v1/models")
    body = r.json()
    assert r.status_code == 200
    assert body["served"]["name"] == "mnist-cnn"
    assert body["served"]["device"] == "cpu"
    # The served version (11 classes, real handwriting) reads MNIST a little below v1:
    # docs/accuracy.md.
    assert body["served"]["accuracy"] >= 0.994
    assert body["available_versions"] == SHIPPED_VERSIONS
    assert body["limits"]["max_files"] == 64
    assert body["batching"]["enabled"] is True


def test_health_live_ready_before_and_after_load(shipped_models: Path) -> None:
    app = create_app(make_settings(shipped_models))
    plain = TestClient(app)  # no lifespan: the model is not loaded
    assert plain.get("/v2/health/live").json() == {"live": True}
    r = plain.get("/v2/health/ready")
    assert (r.status_code, r.json()) == (503, {"ready": False, "reason": "model not loaded"})
    r = plain.post("/v1/predict", files=files_of(("a.png", b"x")))
    assert (r.status_code, r.json()["code"]) == (503, "model_not_ready")
    with TestClient(app) as c:
        assert c.get("/v2/health/ready").json() == {"ready": True}
    assert plain.get("/v2/health/ready").status_code == 503  # after shutdown


def test_unknown_route_is_json_404(client: TestClient) -> None:
    r = client.get("/v1/nope")
    assert (r.status_code, r.json()) == (404, {"error": "Not Found", "code": "not_found"})


def test_openapi_documents_routes_and_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    predict = spec["paths"]["/v1/predict"]["post"]
    assert {"400", "413", "415", "503"} <= set(predict["responses"])
    assert "multipart/form-data" in predict["requestBody"]["content"]
    assert "/v2/models/{name}/infer" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_readiness_turns_503_when_the_batch_loop_dies(client: TestClient, mnist_sample) -> None:
    plane = client.app.state.dataplane  # type: ignore[attr-defined]
    assert client.get("/v2/health/ready").status_code == 200
    task = plane.batcher._task
    task.get_loop().call_soon_threadsafe(task.cancel)
    for _ in range(100):
        if task.done():
            break
        time.sleep(0.01)
    r = client.get("/v2/health/ready")
    assert (r.status_code, r.json()) == (503, {"ready": False, "reason": "inference loop stopped"})
    r = client.post("/v1/predict", files=files_of(("a.png", png_bytes(mnist_sample[0][0]))))
    assert (r.status_code, r.json()["code"]) == (503, "model_not_ready")


def test_predict_wrong_method_falls_through_to_a_json_405(client: TestClient) -> None:
    r = client.get("/v1/predict")
    assert (r.status_code, r.json()["code"]) == (405, "method_not_allowed")
    assert r.headers["allow"] == "POST"


def test_predict_bug_is_a_json_500_and_the_next_request_is_served(
    shipped_models: Path, mnist_sample, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.http.api import rest

    image = files_of(("a.png", png_bytes(mnist_sample[0][0])))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internal detail")

    with TestClient(create_app(make_settings(shipped_models))) as client:
        monkeypatch.setattr(rest, "render_predictions", broken)
        r = client.post("/v1/predict", files=image)
        assert (r.status_code, r.json()) == (
            500,
            {"error": "internal server error", "code": "internal"},
        )
        assert r.headers["x-request-id"]
        monkeypatch.undo()
        assert client.post("/v1/predict", files=image).status_code == 200


def test_cors_applies_to_predict_when_configured(shipped_models: Path, mnist_sample) -> None:
    origin = "https://app.example"
    settings = make_settings(shipped_models, cors_origins=origin)
    with TestClient(create_app(settings)) as c:
        pre = c.options(
            "/v1/predict",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        )
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == origin
        r = c.post(
            "/v1/predict",
            files=files_of(("a.png", png_bytes(mnist_sample[0][0]))),
            headers={"Origin": origin},
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == origin
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        other = c.post(
            "/v1/predict",
            files=files_of(("a.png", b"x")),
            headers={"Origin": "https://evil.example"},
        )
        assert "access-control-allow-origin" not in other.headers


class ThreadSpy:
    """Wraps the real classifier and records which thread ran each forward pass."""

    def __init__(self, model: object) -> None:
        self.model = model
        self.threads: list[str] = []

    def predict_batch(self, pixels: object) -> object:
        self.threads.append(threading.current_thread().name)
        return self.model.predict_batch(pixels)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:  # name, version, ... of the real model
        return getattr(self.model, name)


@pytest.mark.parametrize("inline", [True, False])
def test_lone_request_forward_runs_inline_only_when_enabled(
    shipped_models: Path, mnist_sample, inline: bool
) -> None:
    images, labels = mnist_sample
    settings = make_settings(shipped_models, inline_when_idle=inline)
    with TestClient(create_app(settings)) as client:
        batcher = client.app.state.dataplane.batcher  # type: ignore[attr-defined]
        spy = ThreadSpy(batcher.current_model())
        batcher.current_model = lambda: spy
        for i in range(3):
            r = client.post("/v1/predict", files=files_of(("a.png", png_bytes(images[i]))))
            assert r.json()["predictions"][0]["digit"] == int(labels[i])
        r = client.post("/v1/predict", files=files_of(*[("a.png", png_bytes(images[0]))] * 2))
        assert r.status_code == 200
    on_inference_thread = [name.startswith("inference") for name in spy.threads]
    # The first request has no predecessor on its connection, so it takes the batch path.
    assert on_inference_thread == [True] + [not inline] * 2 + [True], spy.threads


class _RecordingTracerProvider(trace.TracerProvider):
    """A configured OpenTelemetry provider that records which tracers were asked for."""

    def __init__(self) -> None:
        self.tracers: list[str] = []

    def get_tracer(self, instrumenting_module_name: str, *args: Any, **kw: Any) -> trace.Tracer:
        self.tracers.append(instrumenting_module_name)
        return trace.NoOpTracer()


@pytest.mark.parametrize("enabled", [False, True])
def test_fastapi_opentelemetry_only_when_enabled(
    shipped_models: Path, mnist_sample, monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    provider = _RecordingTracerProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    settings = make_settings(shipped_models, opentelemetry=enabled)
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/predict", files=files_of(("a.png", png_bytes(mnist_sample[0][0]))))
    assert r.status_code == 200
    assert bool(provider.tracers) is enabled


def _row_of(images: np.ndarray, gap: int = 20) -> np.ndarray:
    """MNIST digits side by side, dark ink on white paper, each 84 px tall."""
    cells = [255 - np.asarray(Image.fromarray(d).resize((84, 84), Image.BICUBIC)) for d in images]
    paper = np.full((140, 40 + len(cells) * (84 + gap)), 255, np.uint8)
    for i, c in enumerate(cells):
        x = 20 + i * (84 + gap)
        paper[28:112, x : x + 84] = np.minimum(paper[28:112, x : x + 84], c)
    return paper


def test_predict_blank_files_are_200_not_a_digit_at_every_size(client: TestClient) -> None:
    blanks = [("white28.png", png_bytes(np.full((28, 28), 255, np.uint8))),
              ("black28.png", png_bytes(np.zeros((28, 28), np.uint8))),
              ("grey300.png", png_bytes(np.full((300, 200), 128, np.uint8)))]  # fmt: skip
    r = client.post("/v1/predict", files=files_of(*blanks))
    assert r.status_code == 200, r.text
    for p in r.json()["predictions"]:
        assert p["kind"] == "not_a_digit", p
        assert p["digit"] is None
        assert p["confidence"] is None
        assert p["reason"].startswith("blank"), p


def test_predict_row_of_digits_is_a_number_with_boxes(client: TestClient, mnist_sample) -> None:
    images, labels = mnist_sample
    picks = [0, 1, 2, 3]  # the sample's first four digits, written as one number
    paper = _row_of(images[picks])
    r = client.post("/v1/predict", files=files_of(("row.png", png_bytes(paper))))
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    assert p["kind"] == "number", p
    assert p["digit"] is None
    assert p["number"] == "".join(str(int(labels[i])) for i in picks)
    boxes = [d["box"] for d in p["digits"]]
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        left = 20 + i * 104
        assert left - 2 <= x0 < x1 <= left + 86, boxes  # inside its own 84-px cell
        assert 26 <= y0 < y1 <= 114, boxes
    assert 0 < p["confidence"] <= min(d["confidence"] for d in p["digits"])


def test_predict_one_digit_query_reads_a_row_as_one_digit(client: TestClient, mnist_sample) -> None:
    images, _ = mnist_sample
    data = png_bytes(_row_of(images[[0, 1]]))
    r = client.post("/v1/predict?one_digit=true", files=files_of(("cell.png", data)))
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    assert p["kind"] == "digit"
    assert len(p["digits"]) == 1


def test_predict_base64_takes_a_canvas_data_url(client: TestClient, mnist_sample) -> None:
    images, labels = mnist_sample
    url = "data:image/png;base64," + base64.b64encode(png_bytes(images[0])).decode()
    r = client.post("/v1/predict/base64", json={"images": [{"data": url}]})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["digit"] == int(labels[0])
    r = client.post("/v1/predict/base64", json={"images": [{"data": "data:image/png,abc"}]})
    assert (r.status_code, r.json()["code"]) == (400, "invalid_input")
    assert "without ';base64'" in r.json()["error"]


def test_predict_base64_says_the_same_as_multipart(client: TestClient, mnist_sample) -> None:
    images, _ = mnist_sample
    items = [png_bytes(_row_of(images[[4, 5, 6]])), png_bytes(np.zeros((28, 28), np.uint8)),
             png_bytes(images[7])]  # fmt: skip
    multi = client.post("/v1/predict", files=files_of(*[(f"f{i}", d) for i, d in enumerate(items)]))
    b64 = client.post(
        "/v1/predict/base64",
        json={"images": [{"data": base64.b64encode(d).decode(), "filename": f"f{i}"}
                         for i, d in enumerate(items)]},
    )  # fmt: skip
    assert multi.status_code == b64.status_code == 200
    # Each answer has its own request id (the header's); the rest is the same.
    for r in (multi, b64):
        assert r.json().pop("request_id") == r.headers["x-request-id"]
    assert {**multi.json(), "request_id": ""} == {**b64.json(), "request_id": ""}
    assert [p["kind"] for p in b64.json()["predictions"]] == ["number", "not_a_digit", "digit"]


def test_digit_answers_carry_ten_probabilities_whatever_the_model(
    client: TestClient, mnist_sample
) -> None:
    """The shipped model has an 11th class, "not a digit": a digit's answer still lists the
    ten digit probabilities (renormalised), and its confidence is one of them."""
    images, labels = mnist_sample
    r = client.post("/v1/predict", files={"files": ("d.png", png_bytes(images[0]))})
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    assert p["kind"] == "digit"
    assert len(p["probabilities"]) == 10
    assert abs(sum(p["probabilities"]) - 1.0) < 1e-4
    assert p["confidence"] == max(p["probabilities"])


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("top_k=0", "query.top_k: Input should be greater than or equal to 1"),
        ("top_k=11", "query.top_k: Input should be less than or equal to 10"),
        ("top_k=two", "query.top_k: Input should be a valid integer, unable to parse string"),
        ("one_digit=maybe", "query.one_digit: Input should be a valid boolean"),
        ("return_image=2", "query.return_image: Input should be a valid boolean"),
    ],
)
def test_predict_query_errors_are_400_naming_the_parameter(
    client: TestClient, query: str, message: str
) -> None:
    r = client.post(f"/v1/predict?{query}", files=files_of(("a.png", b"x")))
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_input"
    assert r.json()["error"].startswith(f"invalid request: {message}"), r.json()


def test_predict_query_accepts_the_usual_boolean_spellings(
    client: TestClient, mnist_sample
) -> None:
    image = files_of(("a.png", png_bytes(mnist_sample[0][0])))
    for flag in ("true", "1", "yes", "on"):
        r = client.post(f"/v1/predict?return_image={flag}&top_k=2", files=image)
        prediction = r.json()["predictions"][0]
        assert "processed_image" in prediction, flag
        assert len(prediction["top_k"]) == 2
    r = client.post("/v1/predict?return_image=off", files=image)
    assert "processed_image" not in r.json()["predictions"][0]


def test_predict_goes_through_dependency_overrides(shipped_models: Path, mnist_sample) -> None:
    from service.errors import ModelNotReady, Unauthorized
    from service.http.api.deps import get_dataplane, require_api_key

    app = create_app(make_settings(shipped_models))
    image = files_of(("a.png", png_bytes(mnist_sample[0][0])))

    async def refuse_key() -> None:
        raise Unauthorized("overridden key check")

    async def no_plane() -> None:
        raise ModelNotReady("overridden data plane")

    with TestClient(app) as c:
        assert c.post("/v1/predict", files=image).status_code == 200
        app.dependency_overrides[require_api_key] = refuse_key  # the router's dependency
        r = c.post("/v1/predict", files=image)
        assert (r.status_code, r.json()["error"]) == (401, "overridden key check")
        app.dependency_overrides = {get_dataplane: no_plane}
        r = c.post("/v1/predict", files=image)
        assert (r.status_code, r.json()["error"]) == (503, "overridden data plane")
