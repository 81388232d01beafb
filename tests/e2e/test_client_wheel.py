"""The client as another app gets it: its wheel, built from clients/python, installed in a
virtualenv with no torch and no server code (`.venv-client`, made by `make install`),
driving a real server through its API and its command."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CLIENT_SRC, png_bytes
from tests.support.server import ROOT, ServerProcess

VENV = ROOT / ".venv-client"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(CLIENT_SRC)],
        check=True, timeout=120,
    )  # fmt: skip
    (built,) = out.glob("mnist_client-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Path:
    python = VENV / "bin" / "python"
    assert python.exists(), f"{VENV} is missing: `make install` creates it"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall",
         str(wheel)],
        check=True, timeout=120,
    )  # fmt: skip
    return python


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(env={"MNIST_GRPC_PORT": "0"})
    proc.start(tmp_path_factory.mktemp("wheel-server"))
    yield proc
    assert proc.stop() == 0, proc.log()


def test_the_wheel_holds_only_the_client_typed(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"mnist_client"}
    assert "mnist_client/py.typed" in names
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [
        line.split(":", 1)[1].strip()
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert sorted(r.split(">")[0].split("<")[0] for r in requires) == ["httpx", "tqdm"]


def test_installed_client_has_no_torch_and_reads_files(
    installed: Path, server: ServerProcess, tmp_path: Path, mnist_sample
) -> None:
    images, labels = mnist_sample
    seven = tmp_path / "digit.png"
    seven.write_bytes(png_bytes(images[0]))
    code = (
        "import sys, importlib.util as u\n"
        "assert u.find_spec('torch') is None and u.find_spec('service') is None\n"
        "from mnist_client import Client\n"
        f"with Client({server.url!r}) as c: print(c.predict({str(seven)!r}).digits[0])\n"
    )
    run = subprocess.run(
        [str(installed), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(int(labels[0]))


def test_installed_command_predicts(installed: Path, server: ServerProcess, tmp_path: Path,
                                    mnist_sample) -> None:  # fmt: skip
    images, labels = mnist_sample
    path = tmp_path / "digit.png"
    path.write_bytes(png_bytes(images[1]))
    command = installed.parent / "mnist-client"
    run = subprocess.run(
        [str(command), "predict", str(path), "--url", server.url],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[1].split()[2] == str(int(labels[1]))
