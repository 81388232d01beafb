from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server per test module, on the shipped model."""
    proc = ServerProcess(env={"MNIST_MAX_BATCH_WAIT_MS": "2"})
    proc.start(tmp_path_factory.mktemp("server"))
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture
def fresh_server_dir(tmp_path: Path) -> Path:
    return tmp_path
