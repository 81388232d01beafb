"""The V2 `input` tensor in process: what reaches the model for FP32 and for UINT8 rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi.testclient import TestClient

from service.http.app import create_app
from tests.api.conftest import make_settings


def _infer(client: TestClient, datatype: str, values: np.ndarray) -> np.ndarray:
    body = {
        "inputs": [{"name": "input", "shape": [len(values), 28, 28], "datatype": datatype,
                    "data": values.ravel().tolist()}],  # float32 values are exact as JSON
        "outputs": [{"name": "probabilities"}],
    }  # fmt: skip
    r = client.post("/v2/models/mnist-cnn/infer", json=body)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32)


def test_v2_fp32_rows_reach_the_model_as_sent_and_answer_as_the_uint8_rows(
    shipped_models: Path, mnist_sample
) -> None:
    pixels = mnist_sample[0][:3]  # uint8
    with TestClient(create_app(make_settings(shipped_models))) as client:
        meta = client.get("/v2/models/mnist-cnn").json()
        norm = next(i for i in meta["inputs"] if i["name"] == "input")["parameters"]
        mean, std = (np.float32(v) for v in norm["normalization"].values())
        # What a client computes from the metadata: the model's inputs, in float32.
        inputs = (pixels.astype(np.float32) / np.float32(255) - mean) / std
        clf = client.app.state.dataplane.classifier  # type: ignore[attr-defined]
        seen: list[torch.Tensor] = []
        forward = clf.predict_batch

        def spy(x: Any) -> torch.Tensor:
            seen.append(torch.as_tensor(x).clone())
            return forward(x)

        clf.predict_batch = spy
        from_fp32 = _infer(client, "FP32", inputs)
        from_uint8 = _infer(client, "UINT8", pixels)
    assert len(seen) == 2, "one forward per request"
    # FP32 rows are not mapped back to pixels and normalised again: the model gets them as sent.
    assert torch.equal(seen[0], torch.from_numpy(inputs)), "FP32 rows changed on the way"
    # UINT8 rows are normalised once, to the same inputs, so the answers are the same.
    assert torch.equal(seen[1], seen[0])
    np.testing.assert_array_equal(from_fp32, from_uint8)


def test_v2_image_batch_answers_a_bad_element_in_its_place(
    shipped_models: Path, mnist_sample
) -> None:
    import base64

    from tests.conftest import png_bytes

    images, labels = mnist_sample
    good = base64.b64encode(png_bytes(images[0])).decode()
    bad = base64.b64encode(b"not an image").decode()
    body = {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [good, bad]}]}
    with TestClient(create_app(make_settings(shipped_models))) as client:
        r = client.post("/v2/models/mnist-cnn/infer", json=body)
        assert r.status_code == 200, r.text
        out = {o["name"]: o["data"] for o in r.json()["outputs"]}
        assert out["kind"] == ["digit", "error"]
        assert out["label"] == [int(labels[0]), -1]
        assert out["error"][0] == ""
        assert out["error"][1].startswith("unsupported_media_type: ")
        assert out["probabilities"][10:] == [0.0] * 10
        # One element alone is the whole request: its error is the answer, as before.
        body["inputs"][0].update(shape=[1], data=[bad])
        assert client.post("/v2/models/mnist-cnn/infer", json=body).status_code == 415
