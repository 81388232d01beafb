"""The KServe Python SDK's REST and gRPC clients against a real server (in a subprocess:
the SDK and tritonclient cannot share a process)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import png_bytes
from tests.support.server import ROOT, ServerProcess

KEY = "kserve-key"
#: The SDK lives in a virtualenv of its own (`make install` builds it): it depends on
#: python-multipart, whose `multipart` package shadows the parser the server imports.
KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(env={"MNIST_API_KEYS": KEY})
    proc.start(tmp_path_factory.mktemp("kserve"))
    yield proc
    assert proc.stop() == 0, proc.log()


def test_kserve_sdk_rest_and_grpc_predict_the_examples(keyed, mnist_sample, tmp_path: Path):
    images, labels = mnist_sample
    files = []
    for i in range(4):
        path = tmp_path / f"d{i}.png"
        path.write_bytes(png_bytes(images[i]))
        files.append(str(path))
    pixels = tmp_path / "pixels.npy"
    np.save(pixels, images[4:12].reshape(8, 784).astype(np.uint8))
    cfg = {"http": keyed.url, "grpc": keyed.grpc_url, "key": KEY, "files": files,
           "pixels": str(pixels)}  # fmt: skip
    assert KSERVE_PYTHON.exists(), "the KServe SDK's virtualenv is missing: run `make install`"
    run = subprocess.run(
        [str(KSERVE_PYTHON), "-m", "tests.e2e.kserve_driver", json.dumps(cfg)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    expected_images = [int(v) for v in labels[:4]]
    expected_pixels = [int(v) for v in labels[4:12]]
    assert out["rest_live"] is True
    assert out["rest_model_ready"] is True
    assert out["rest_model_ready_without_key"] is False  # SDK: any non-2xx is False
    assert out["rest_image_labels"] == expected_images
    assert out["rest_image_id"] == "k1"
    assert out["rest_pixel_labels"] == expected_pixels
    status, body = out["rest_error"]
    assert status == 400
    assert body["code"] == "invalid_input"
    assert "has shape [8, 700]" in body["error"]
    assert out["grpc_live"] is True
    assert out["grpc_model_ready"] is True
    assert out["grpc_model_ready_without_key"] == "UNAUTHENTICATED"
    assert out["grpc_image_labels"] == expected_images
    assert out["grpc_pixel_labels"] == expected_pixels
    code, message = out["grpc_error"]
    assert code == "INVALID_ARGUMENT"
    assert message == body["error"]  # the same message over both protocols
