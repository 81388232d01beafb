"""CUDA path: the only tests allowed to skip, and only when no GPU is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.serving.model import Classifier, resolve_device

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_cuda_classifier_matches_cpu(shipped_models, mnist_sample) -> None:
    images, labels = mnist_sample
    x = images.astype(np.float32) / 255
    folder = shipped_models / "mnist-cnn" / "1"
    cpu = Classifier.load(folder, torch.device("cpu")).predict_pixels(x)
    gpu = Classifier.load(folder, resolve_device("cuda")).predict_pixels(x)
    assert gpu.device.type == "cpu", "results come back on the CPU"
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-3)


def test_cuda_half_precision_keeps_accuracy(shipped_models, mnist_sample) -> None:
    images, labels = mnist_sample
    x = images.astype(np.float32) / 255
    clf = Classifier.load(shipped_models / "mnist-cnn" / "1", resolve_device("cuda"), half=True)
    assert clf.half
    preds = clf.predict_pixels(x).argmax(1).numpy()
    assert (preds == labels).mean() >= 0.99


def test_cuda_explicit_index_and_bad_index(shipped_models) -> None:
    from service.serving.model import ModelLoadError

    assert resolve_device("cuda:0").index == 0
    with pytest.raises(ModelLoadError, match="GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_cuda_server_end_to_end(tmp_path, mnist_sample) -> None:
    import httpx

    from tests.conftest import png_bytes
    from tests.support.server import ServerProcess

    images, labels = mnist_sample
    proc = ServerProcess(env={"MNIST_DEVICE": "cuda"}).start(tmp_path)
    try:
        assert httpx.get(proc.url + "/v1/models").json()["served"]["device"] == "cuda:0"
        files = [("files", (f"{i}.png", png_bytes(images[i]), "image/png")) for i in range(16)]
        r = httpx.post(proc.url + "/v1/predict", files=files, timeout=60)
        digits = [p["digit"] for p in r.json()["predictions"]]
        assert sum(d == y for d, y in zip(digits, labels[:16], strict=True)) >= 15
    finally:
        assert proc.stop() == 0
