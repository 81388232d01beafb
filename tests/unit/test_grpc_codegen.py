"""The committed gRPC code is what grpcio-tools generates from service/rpc/inference.proto."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")
#: Version stamps differ between grpcio-tools releases; the code around them must not.
_STAMPS = re.compile(
    r"^(# Protobuf Python Version: .*|GRPC_GENERATED_VERSION = .*|\s*\d+,\s*\d+,\s*\d+,"
    r"\s*'',)$",
    re.M,
)


def _normalised(text: str) -> str:
    return _STAMPS.sub("<version>", text)


@pytest.mark.parametrize("name", GENERATED)
def test_generated_grpc_code_matches_a_fresh_generation(tmp_path: Path, name: str) -> None:
    target = tmp_path / "service" / "rpc"
    target.mkdir(parents=True)
    shutil.copy(ROOT / "service" / "rpc" / "inference.proto", target)
    # A subprocess: protoc and the descriptors it loads stay out of the test process.
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--pyi_out=.",
         "--grpc_python_out=.", "service/rpc/inference.proto"],
        cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    fresh = (target / name).read_text()
    committed = (ROOT / "service" / "rpc" / name).read_text()
    assert _normalised(fresh) == _normalised(committed), (
        f"service/rpc/{name} is stale: regenerate it (see the command in inference.proto)"
    )
