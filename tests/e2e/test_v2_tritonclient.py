"""Open Inference Protocol conformance with the real tritonclient[http] against a real server."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.conftest import NEWEST_SHIPPED, png_bytes

MODEL = "mnist-cnn"


@pytest.fixture(scope="module")
def triton(server):
    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def normalised(mnist_sample):
    images, labels = mnist_sample
    # The card's constants, read the way a client would: from the model metadata.
    return images[:16], labels[:16]


def _norm(triton) -> tuple[float, float]:
    meta = triton.get_model_metadata(MODEL)
    n = next(i for i in meta["inputs"] if i["name"] == "input")["parameters"]["normalization"]
    return n["mean"], n["std"]


def test_v2_server_live_ready_and_metadata(triton) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "mnist-serving"
    assert {"binary_tensor_data", "classification"} <= set(meta["extensions"])


def test_v2_model_metadata_and_readiness(triton) -> None:
    meta = triton.get_model_metadata(MODEL)
    assert meta["name"] == MODEL
    assert meta["versions"] == [NEWEST_SHIPPED]  # the newest shipped version is served
    assert {o["name"] for o in meta["outputs"]} == {
        "probabilities",
        "label",
        "kind",
        "number",
        "error",
    }
    assert triton.is_model_ready(MODEL)
    assert triton.is_model_ready(MODEL, NEWEST_SHIPPED)
    assert triton.get_model_metadata(MODEL, NEWEST_SHIPPED)["name"] == MODEL


@pytest.mark.parametrize("binary", [False, True])
def test_v2_infer_fp32_tensor_json_and_binary(triton, normalised, binary: bool) -> None:
    images, labels = normalised
    mean, std = _norm(triton)
    x = ((images.astype(np.float32) / 255 - mean) / std).reshape(-1, 1, 28, 28)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("probabilities", binary_data=binary),
        httpclient.InferRequestedOutput("label", binary_data=binary),
    ]
    result = triton.infer(MODEL, [inp], outputs=outputs, request_id="r1")
    probs = result.as_numpy("probabilities")
    assert probs.shape == (16, 10)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    np.testing.assert_array_equal(result.as_numpy("label"), labels)
    assert result.get_response()["id"] == "r1"
    assert result.get_response()["model_version"] == NEWEST_SHIPPED


@pytest.mark.parametrize(("shape", "dtype"), [((16, 28, 28), "UINT8"), ((16, 784), "UINT8")])
def test_v2_infer_raw_uint8_pixels_in_other_shapes(triton, normalised, shape, dtype) -> None:
    images, labels = normalised
    x = images.reshape(shape).astype(np.uint8)
    inp = httpclient.InferInput("input", list(shape), dtype)
    inp.set_data_from_numpy(x)
    result = triton.infer(MODEL, [inp])  # no outputs named: all of them, binary
    np.testing.assert_array_equal(result.as_numpy("label"), labels)


def test_v2_requested_output_only(triton, normalised) -> None:
    images, labels = normalised
    inp = httpclient.InferInput("input", [16, 28, 28], "UINT8")
    inp.set_data_from_numpy(images.astype(np.uint8))
    result = triton.infer(MODEL, [inp], outputs=[httpclient.InferRequestedOutput("label")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    assert result.as_numpy("probabilities") is None


def test_v2_classification_extension(triton, normalised) -> None:
    images, labels = normalised
    inp = httpclient.InferInput("input", [16, 784], "UINT8")
    inp.set_data_from_numpy(images.reshape(16, 784).astype(np.uint8))
    out = httpclient.InferRequestedOutput("probabilities", class_count=3)
    result = triton.infer(MODEL, [inp], outputs=[out])
    top = result.as_numpy("probabilities")
    assert top.shape == (16, 3)
    for row, label in zip(top, labels, strict=True):
        score, index, name = row[0].decode().split(":")
        assert int(index) == label
        assert name == str(label)
        assert 0 < float(score) <= 1


@pytest.mark.parametrize("binary", [True, False])
def test_v2_bytes_images(triton, mnist_sample, binary: bool) -> None:
    images, labels = mnist_sample
    if binary:
        data = np.array([png_bytes(images[i]) for i in range(6)], dtype=np.object_)
        inp = httpclient.InferInput("image", [6], "BYTES")
        inp.set_data_from_numpy(data, binary_data=True)
    else:
        import base64

        data = np.array(
            [base64.b64encode(png_bytes(images[i])) for i in range(6)], dtype=np.object_
        )
        inp = httpclient.InferInput("image", [6], "BYTES")
        inp.set_data_from_numpy(data, binary_data=False)
    result = triton.infer(MODEL, [inp], outputs=[httpclient.InferRequestedOutput("label")])
    np.testing.assert_array_equal(result.as_numpy("label"), labels[:6])


def _status(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


@pytest.mark.parametrize(
    ("name", "shape", "dtype", "array", "message"),
    [
        ("nope", [1, 784], "FP32", np.zeros((1, 784), np.float32), "unknown input"),
        ("input", [1, 785], "FP32", np.zeros((1, 785), np.float32), "has shape"),
        ("input", [1, 784], "INT32", np.zeros((1, 784), np.int32), "datatype"),
        ("image", [1], "FP32", np.zeros(1, np.float32), "expected BYTES"),
    ],
)
def test_v2_bad_inputs_are_400(triton, name, shape, dtype, array, message) -> None:
    inp = httpclient.InferInput(name, shape, dtype)
    inp.set_data_from_numpy(array)
    with pytest.raises(InferenceServerException, match=message) as exc:
        triton.infer(MODEL, [inp])
    assert _status(exc) == "400"


def test_v2_bad_image_bytes_is_4xx(triton) -> None:
    inp = httpclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="not a supported image") as exc:
        triton.infer(MODEL, [inp])
    assert _status(exc) == "415"


def test_v2_unknown_model_and_version_are_404(triton) -> None:
    inp = httpclient.InferInput("input", [1, 784], "UINT8")
    inp.set_data_from_numpy(np.zeros((1, 784), np.uint8))
    with pytest.raises(InferenceServerException, match="unknown model") as exc:
        triton.infer("resnet", [inp])
    assert _status(exc) == "404"
    with pytest.raises(InferenceServerException, match="version '7'") as exc:
        triton.infer(MODEL, [inp], model_version="7")
    assert _status(exc) == "404"
    with pytest.raises(InferenceServerException) as exc:
        triton.get_model_metadata("resnet")
    assert _status(exc) == "404"
    assert not triton.is_model_ready("resnet")


def test_v2_malformed_binary_and_counts_are_400(server) -> None:
    import httpx

    url = f"{server.url}/v2/models/{MODEL}/infer"
    header = (
        b'{"inputs":[{"name":"input","shape":[1,784],"datatype":"UINT8",'
        b'"parameters":{"binary_data_size":784}}]}'
    )
    r = httpx.post(
        url,
        content=header + b"\0" * 100,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 400
    assert "runs past the end" in r.json()["error"]
    r = httpx.post(url, content=b"{}", headers={"Inference-Header-Content-Length": "99"})
    assert r.status_code == 400
    body = {
        "inputs": [{"name": "input", "shape": [2, 784], "datatype": "UINT8", "data": [0] * 784}]
    }
    r = httpx.post(url, json=body)
    assert r.status_code == 400
    assert r.json()["error"] == "input 'input' has 784 elements but shape [2, 784] needs 1568"
    r = httpx.post(url, content=b"{not json")
    assert r.status_code == 400
    assert set(r.json()) == {"error", "code"}


@pytest.mark.parametrize("binary", [True, False])
def test_v2_image_kind_and_number_outputs(triton, mnist_sample, binary: bool) -> None:
    images, labels = mnist_sample
    row = np.full((120, 260), 255, np.uint8)  # two digits side by side, ink on paper
    for i, x in enumerate((20, 150)):
        row[20:110, x : x + 90] = 255 - np.asarray(
            Image.fromarray(images[10 + i]).resize((90, 90), Image.BICUBIC)
        )
    files = [png_bytes(images[0]), png_bytes(row), png_bytes(np.zeros((28, 28), np.uint8))]
    if not binary:  # JSON carries BYTES elements as base64 strings
        files = [base64.b64encode(f) for f in files]
    inp = httpclient.InferInput("image", [3], "BYTES")
    inp.set_data_from_numpy(np.array(files, dtype=np.object_), binary_data=binary)
    wanted = ["label", "kind", "number"]
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in wanted]
    result = triton.infer(MODEL, [inp], outputs=outputs)
    kinds, numbers = (
        [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy(name)]
        for name in ("kind", "number")
    )
    assert kinds == ["digit", "number", "not_a_digit"]
    number = f"{int(labels[10])}{int(labels[11])}"
    assert numbers == [str(int(labels[0])), number, ""]
    np.testing.assert_array_equal(result.as_numpy("label"), [labels[0], -1, -1])
    meta = triton.get_model_metadata(MODEL)
    assert {"kind", "number"} <= {o["name"] for o in meta["outputs"]}
