"""Shared fixtures; tests are marked by folder (e2e, browser) so `-m "not e2e"` stays fast."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
#: The client distribution's source. It comes first on the path, here and in the commands
#: the tests run (`client_env`), so they use this checkout's client even where the
#: environment has another checkout's installed.
CLIENT_SRC = ROOT / "clients" / "python"
sys.path.insert(0, str(CLIENT_SRC))


def client_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a subprocess that imports mnist_client from this checkout."""
    base = dict(os.environ if env is None else env)
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CLIENT_SRC), base.get("PYTHONPATH")]))
    return base


SHIPPED_MODELS = ROOT / "models"
#: The shipped versions, oldest first; the newest is what a server serves by default.
SHIPPED_VERSIONS = sorted(
    (p.name for p in (SHIPPED_MODELS / "mnist-cnn").iterdir() if p.name.isdigit()), key=int
)
NEWEST_SHIPPED = SHIPPED_VERSIONS[-1]
SAMPLE = Path(__file__).parent / "data" / "mnist_test_sample.npz"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        if parts[0] == "e2e":
            item.add_marker(pytest.mark.e2e)
        if parts[0] == "browser":
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def mnist_sample() -> tuple[np.ndarray, np.ndarray]:
    """200 MNIST test digits (every 50th) and their labels, committed with the tests."""
    data = np.load(SAMPLE)
    return data["images"], data["labels"]


def png_bytes(pixels: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode=mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def shipped_models() -> Path:
    assert (SHIPPED_MODELS / "mnist-cnn").is_dir(), "the shipped model repository is missing"
    return SHIPPED_MODELS
