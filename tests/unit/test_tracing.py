"""Tracing's switch: the standard OTEL_* variables turn it on; off, the SDK is not imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.runtime import tracing
from tests.support.server import ROOT


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),  # a name alone exports nowhere
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_tracing_is_wanted_only_with_an_otlp_endpoint(env: dict[str, str], on: bool) -> None:
    assert tracing.wanted(env) is on


def test_off_the_app_never_imports_the_sdk() -> None:
    code = (
        "import sys\n"
        "from service.config import Settings\n"
        "from service.http.app import create_app\n"
        "create_app(Settings())\n"
        "from service.runtime import tracing\n"
        "assert tracing.tracer is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    assert out.stdout.strip() == "[]", out.stderr


def test_an_unknown_protocol_is_refused() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
    }
    with pytest.raises(ValueError, match="use grpc or http/protobuf"):
        tracing._exporter(env)  # noqa: SLF001
