"""A client generated from /openapi.json by openapi-python-client calls /v1/predict and V2
infer on a real server."""

from __future__ import annotations

import base64
import importlib
import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import png_bytes

MODEL = "mnist-cnn"


def test_generated_client_predicts_over_v1_and_v2(server, mnist_sample, tmp_path: Path) -> None:
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(httpx.get(f"{server.url}/openapi.json").json()))
    run = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(spec),
         "--output-path", str(tmp_path / "mnist_generated"), "--meta", "none"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        package = importlib.import_module("mnist_generated")
        predict = importlib.import_module("mnist_generated.api.v1.predict_digits")
        infer = importlib.import_module("mnist_generated.api.v2.infer")
        models = importlib.import_module("mnist_generated.models")
        types = importlib.import_module("mnist_generated.types")
    finally:
        sys.path.remove(str(tmp_path))
    images, labels = mnist_sample
    client = package.Client(base_url=server.url)

    files = [types.File(payload=png_bytes(images[i]), file_name=f"d{i}.png") for i in range(3)]
    result = predict.sync(client=client, body=models.PredictDigitsBody(files=files))
    assert isinstance(result, models.PredictResponse), result
    assert [p.digit for p in result.predictions] == [int(v) for v in labels[:3]]

    request = models.InferenceRequest.from_dict(
        {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                     "data": [base64.b64encode(png_bytes(images[i])).decode() for i in (3, 4)]}],
         "outputs": [{"name": "label"}]}
    )  # fmt: skip
    reply = infer.sync(MODEL, client=client, body=request)
    assert isinstance(reply, models.InferenceResponse), reply
    assert reply.outputs[0].data == [int(labels[3]), int(labels[4])]

    bad = models.InferenceRequest.from_dict(
        {"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32", "data": [0] * 5}]}
    )
    error = infer.sync(MODEL, client=client, body=bad)
    assert isinstance(error, models.InferenceErrorResponse), error
    assert error.code == "invalid_input"
