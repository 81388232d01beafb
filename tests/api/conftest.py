from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.http.app import create_app


def make_settings(repo: Path, **kw: object) -> Settings:
    base = {
        "model_repository": repo,
        "max_batch_wait_ms": 1.0,
        "preprocess_threads": 2,
        "grpc_port": 0,  # in-process apps never bind the shared default gRPC port
    }
    base.update(kw)
    return Settings(_env_file=None, **base)  # type: ignore[call-arg]


@pytest.fixture
def client(shipped_models: Path) -> Iterator[TestClient]:
    """A fresh app per test, lifespan included, on the shipped model."""
    with TestClient(create_app(make_settings(shipped_models))) as c:
        yield c
