"""The Open Inference Protocol over gRPC, with the real tritonclient[grpc] and grpc.health.v1
against a real server process (API keys on, so every call also proves the metadata auth)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import NEWEST_SHIPPED, png_bytes
from tests.support.server import ServerProcess

MODEL = "mnist-cnn"
KEY = "grpc-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(env={"MNIST_API_KEYS": KEY, "MNIST_MAX_FILES": "8"})
    proc.start(tmp_path_factory.mktemp("grpc"))
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def client(keyed: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(keyed.grpc_url)
    yield c
    c.close()


def _code(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


def test_grpc_live_ready_and_server_metadata_need_no_key(client) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "mnist-serving"
    assert {"binary_tensor_data", "classification"} <= set(meta.extensions)


def test_grpc_model_calls_without_a_key_are_unauthenticated(client) -> None:
    with pytest.raises(InferenceServerException, match="missing API key") as exc:
        client.is_model_ready(MODEL)  # an error, not a quiet False
    assert _code(exc) == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException, match="invalid API key") as exc:
        client.get_model_metadata(MODEL, headers={"x-api-key": "wrong"})
    assert _code(exc) == "StatusCode.UNAUTHENTICATED"
    assert client.is_model_ready(MODEL, headers={"x-api-key": KEY})


def test_grpc_model_metadata_config_and_readiness(client) -> None:
    meta = client.get_model_metadata(MODEL, headers=AUTH, as_json=True)
    assert meta["name"] == MODEL
    assert meta["versions"] == [NEWEST_SHIPPED]  # the newest shipped version is served
    assert [o["name"] for o in meta["outputs"]] == [
        "probabilities",
        "label",
        "kind",
        "number",
        "error",
    ]
    config = client.get_model_config(MODEL, headers=AUTH, as_json=True)["config"]
    assert config["name"] == MODEL
    assert config["max_batch_size"] == 64
    assert config["input"][0] == {"name": "input", "data_type": "TYPE_FP32",
                                  "dims": ["1", "28", "28"]}  # fmt: skip
    assert client.is_model_ready(MODEL, NEWEST_SHIPPED, headers=AUTH)


def test_grpc_infer_uint8_raw_and_fp32_contents(client, mnist_sample) -> None:
    images, labels = mnist_sample
    x = images[:16].astype(np.uint8).reshape(16, 784)
    inp = grpcclient.InferInput("input", [16, 784], "UINT8")
    inp.set_data_from_numpy(x)  # raw_input_contents
    result = client.infer(MODEL, [inp], headers=AUTH, request_id="g1")
    np.testing.assert_array_equal(result.as_numpy("label"), labels[:16])
    probs = result.as_numpy("probabilities")
    assert probs.shape == (16, 10)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert result.get_response().id == "g1"
    assert result.get_response().model_version == NEWEST_SHIPPED


def test_grpc_infer_fp32_typed_contents(keyed, client, mnist_sample) -> None:
    """FP32 in fp32_contents rather than raw bytes, through tritonclient's generated stub."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    images, labels = mnist_sample
    norm = httpx.get(f"{keyed.url}/v2/models/{MODEL}", headers=AUTH).json()["inputs"][0]
    mean, std = norm["parameters"]["normalization"].values()
    x = ((images[:4].astype(np.float32) / 255 - mean) / std).reshape(-1)
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[4, 1, 28, 28])
    tensor.contents.fp32_contents.extend(x.tolist())
    request.outputs.add(name="label")
    with grpc.insecure_channel(keyed.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(request, metadata=tuple(AUTH.items()), timeout=10)
    assert [o.name for o in reply.outputs] == ["label"]
    np.testing.assert_array_equal(np.frombuffer(reply.raw_output_contents[0], "<i8"), labels[:4])


def test_grpc_infer_image_bytes_and_classification(client, mnist_sample) -> None:
    images, labels = mnist_sample
    data = np.array([png_bytes(images[i]) for i in range(6)], dtype=np.object_)
    inp = grpcclient.InferInput("image", [6], "BYTES")
    inp.set_data_from_numpy(data)
    outputs = [
        grpcclient.InferRequestedOutput("label"),
        grpcclient.InferRequestedOutput("probabilities", class_count=2),
    ]
    result = client.infer(MODEL, [inp], outputs=outputs, headers=AUTH)
    np.testing.assert_array_equal(result.as_numpy("label"), labels[:6])
    top = result.as_numpy("probabilities")
    assert top.shape == (6, 2)
    assert [int(row[0].decode().split(":")[1]) for row in top] == list(labels[:6])


def test_grpc_honours_one_digit_as_rest_does(client, mnist_sample) -> None:
    # REST and gRPC share DataPlane.infer_v2: the `one_digit` request parameter reads a
    # row of two digits as one digit over gRPC too (it was ignored there).
    images, _ = mnist_sample
    cells = [255 - np.kron(d, np.ones((3, 3), np.uint8)) for d in images[[0, 1]]]
    paper = np.full((140, 40 + 2 * (84 + 20)), 255, np.uint8)
    for i, c in enumerate(cells):
        paper[28:112, 20 + i * 104 : 104 + i * 104] = c
    row = np.array([png_bytes(paper)], dtype=np.object_)
    kinds = []
    for one_digit in (False, True):
        inp = grpcclient.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(row)
        result = client.infer(
            MODEL, [inp], outputs=[grpcclient.InferRequestedOutput("kind")], headers=AUTH,
            parameters={"one_digit": one_digit},
        )  # fmt: skip
        kinds.append(result.as_numpy("kind")[0].decode())
    assert kinds == ["number", "digit"]


def test_grpc_statistics_count_images_and_forward_passes(client) -> None:
    stats = client.get_inference_statistics(MODEL, headers=AUTH, as_json=True)
    (model,) = stats["model_stats"]
    assert model["name"] == MODEL
    assert int(model["inference_count"]) >= 16 + 4 + 6
    assert int(model["execution_count"]) >= 1


@pytest.mark.parametrize(
    ("name", "shape", "dtype", "array", "code", "message"),
    [
        ("nope", [1, 784], "UINT8", np.zeros((1, 784), np.uint8), "INVALID_ARGUMENT",
         "unknown input"),
        ("input", [1, 785], "UINT8", np.zeros((1, 785), np.uint8), "INVALID_ARGUMENT",
         "has shape"),
        ("input", [5000, 784], "UINT8", np.zeros((5000, 784), np.uint8), "RESOURCE_EXHAUSTED",
         "5000 rows"),
        ("image", [1], "BYTES", np.array([b"not an image"], dtype=np.object_),
         "INVALID_ARGUMENT", "not a supported image"),
        ("image", [9], "BYTES", np.array([b"x"] * 9, dtype=np.object_), "RESOURCE_EXHAUSTED",
         "too many images"),
    ],
)  # fmt: skip
def test_grpc_bad_inputs_map_to_grpc_codes(client, name, shape, dtype, array, code, message):
    inp = grpcclient.InferInput(name, shape, dtype)
    inp.set_data_from_numpy(array)
    with pytest.raises(InferenceServerException, match=message) as exc:
        client.infer(MODEL, [inp], headers=AUTH)
    assert _code(exc) == f"StatusCode.{code}"


def test_grpc_unknown_model_and_version_are_not_found(client) -> None:
    inp = grpcclient.InferInput("input", [1, 784], "UINT8")
    inp.set_data_from_numpy(np.zeros((1, 784), np.uint8))
    with pytest.raises(InferenceServerException, match="unknown model") as exc:
        client.infer("resnet", [inp], headers=AUTH)
    assert _code(exc) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="version '7'") as exc:
        client.infer(MODEL, [inp], model_version="7", headers=AUTH)
    assert _code(exc) == "StatusCode.NOT_FOUND"


def test_grpc_message_over_the_request_limit_is_refused(keyed) -> None:
    # max_request_bytes (50 MiB by default) is also the gRPC receive limit.
    client = grpcclient.InferenceServerClient(keyed.grpc_url)
    try:
        inp = grpcclient.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([b"\0" * (51 * 1024 * 1024)], dtype=np.object_))
        with pytest.raises(InferenceServerException) as exc:
            client.infer(MODEL, [inp], headers=AUTH)
        assert _code(exc) == "StatusCode.RESOURCE_EXHAUSTED"
    finally:
        client.close()


def test_grpc_health_v1_serves_for_kubernetes_probes(keyed) -> None:
    with grpc.insecure_channel(keyed.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


def test_http_401_names_its_scheme_and_triton_http_extensions_work(keyed) -> None:
    r = httpx.get(f"{keyed.url}/v2/models/{MODEL}/ready")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="mnist-serving"'
    triton = httpclient.InferenceServerClient(keyed.url.removeprefix("http://"))
    try:
        config = triton.get_model_config(MODEL, headers=AUTH)
        assert config["max_batch_size"] == 64
        stats = triton.get_inference_statistics(MODEL, headers=AUTH)
        assert stats["model_stats"][0]["inference_count"] >= 1
        assert triton.get_inference_statistics(headers=AUTH)["model_stats"][0]["name"] == MODEL
    finally:
        triton.close()


def test_grpc_grpc_metrics_are_counted_with_http(keyed) -> None:
    text = httpx.get(f"{keyed.url}/metrics").text
    line = next(
        ln for ln in text.splitlines()
        if ln.startswith("mnist_requests_total{")
        and 'route="/inference.GRPCInferenceService/ModelInfer"' in ln and 'status="200"' in ln
    )  # fmt: skip
    assert float(line.rsplit(" ", 1)[1]) >= 3


def test_grpc_serves_from_every_worker_on_one_port(tmp_path: Path, mnist_sample) -> None:
    proc = ServerProcess(args=["--workers", "2"]).start(tmp_path, timeout_s=120)
    try:
        # Ready means one worker is; the other may still be loading. Both must bind the port.
        deadline = time.monotonic() + 60
        while proc.log().count("gRPC listening on") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.log().count("gRPC listening on") == 2, proc.log()
        images, labels = mnist_sample
        x = images[:4].astype(np.uint8).reshape(4, 784)
        for _ in range(6):  # a new connection each time: the kernel spreads them
            client = grpcclient.InferenceServerClient(proc.grpc_url)
            inp = grpcclient.InferInput("input", [4, 784], "UINT8")
            inp.set_data_from_numpy(x)
            np.testing.assert_array_equal(client.infer(MODEL, [inp]).as_numpy("label"), labels[:4])
            client.close()
    finally:
        assert proc.stop() == 0, proc.log()


def test_grpc_health_turns_not_serving_on_sigterm_while_http_drains(
    tmp_path: Path, mnist_sample
) -> None:
    import signal
    import threading

    proc = ServerProcess().start(tmp_path)
    png = png_bytes(mnist_sample[0][0])
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n").encode()  # fmt: skip
    parts = [head, png, f"\r\n--{boundary}--\r\n".encode()]

    def slow_body() -> Iterator[bytes]:
        for part in parts:
            yield part
            time.sleep(1.5)  # keeps the request in flight across the SIGTERM

    result: dict[str, int] = {}

    def upload() -> None:
        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
        r = httpx.post(f"{proc.url}/v1/predict", content=slow_body(), headers=headers, timeout=30)
        result["status"] = r.status_code

    with grpc.insecure_channel(proc.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        assert stub.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        thread = threading.Thread(target=upload)
        thread.start()
        time.sleep(0.5)
        proc.signal(signal.SIGTERM)
        deadline, status = time.monotonic() + 3, None
        while time.monotonic() < deadline:
            status = stub.Check(request, timeout=5).status
            if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            time.sleep(0.05)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        thread.join(30)
    assert result == {"status": 200}, "the in-flight HTTP request drains"
    assert proc.stop() == 0, proc.log()
