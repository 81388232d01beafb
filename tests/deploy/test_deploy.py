"""Container and Kubernetes artifacts, checked without a Docker engine or a cluster."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from service.config import Settings
from tests.conftest import ROOT
from tests.e2e.server import free_port

BIN = Path(sys.executable).parent
K8S = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
MANIFESTS = [p for p in K8S if p.name != "kustomization.yaml"]


def _tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is a dev dependency and must be installed"
    return str(path)


def test_dockerfile_passes_hadolint_with_warnings_failing() -> None:
    done = subprocess.run(
        [_tool("hadolint"), "--failure-threshold", "warning", "Dockerfile"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_k8s_manifest_is_valid_strict(manifest: Path) -> None:
    done = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "-k", "1.30.0", str(manifest)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed" in done.stdout


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kust = yaml.safe_load((ROOT / "deploy/k8s/kustomization.yaml").read_text())
    expected = {p.name for p in MANIFESTS if "example" not in p.name}
    assert set(kust["resources"]) == expected


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _env_names(container: dict) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def test_manifests_use_only_real_settings_and_routes() -> None:
    fields = {f"MNIST_{name.upper()}" for name in Settings.model_fields}
    deployment = _docs(ROOT / "deploy/k8s/deployment.yaml")[0]
    isvc = _docs(ROOT / "deploy/kserve/inferenceservice.yaml")[0]
    containers = deployment["spec"]["template"]["spec"]["containers"]
    containers += isvc["spec"]["predictor"]["containers"]
    from service.app import create_app

    paths = set(create_app(Settings()).openapi()["paths"])
    for c in containers:
        unknown = _env_names(c) - fields
        assert not unknown, f"{c['name']}: not settings: {unknown}"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe in c:
                assert c[probe]["httpGet"]["path"] in paths


def test_deployment_drains_before_it_is_killed() -> None:
    spec = _docs(ROOT / "deploy/k8s/deployment.yaml")[0]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    drain = float(env["MNIST_DRAIN_TIMEOUT_S"])
    pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > drain + pause
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert c["resources"]["requests"]
    assert c["resources"]["limits"]


def test_kserve_inferenceservice_is_a_v2_custom_predictor() -> None:
    (isvc,) = _docs(ROOT / "deploy/kserve/inferenceservice.yaml")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    assert set(isvc) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(isvc["spec"]) == {"predictor"}
    (c,) = isvc["spec"]["predictor"]["containers"]
    assert c["name"] == "kserve-container"
    assert c["ports"][0]["containerPort"] == 8000
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    allowed = {"name", "image", "ports", "env", "readinessProbe", "livenessProbe", "resources",
               "securityContext", "args", "command"}  # fmt: skip
    assert set(c) <= allowed


def _dockerfile_runtime() -> tuple[dict[str, str], list[str], list[str]]:
    """ENV, CMD and HEALTHCHECK CMD of the Dockerfile's final stage."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stage = text.split("AS runtime", 1)[1]
    env: dict[str, str] = {}
    for line in stage.splitlines():
        if line.startswith("ENV "):
            for token in shlex.split(line[4:]):
                key, _, value = token.partition("=")
                env[key] = value
        if line.startswith("CMD "):
            cmd = json.loads(line[4:])
        if line.startswith("HEALTHCHECK "):
            health = json.loads(re.search(r"CMD (\[.*\])", line).group(1))  # type: ignore[union-attr]
    return env, cmd, health


def test_image_cmd_runs_on_the_host_and_gets_ready(tmp_path: Path) -> None:
    env, cmd, health = _dockerfile_runtime()
    assert cmd[:3] == ["python", "-m", "service"]
    assert env["MNIST_HOST"] == "0.0.0.0"
    # The container's environment, except: the venv's python instead of /opt/venv, and a
    # loopback address on a free port so the test never listens on the host's interfaces.
    port = free_port()
    run_env = {k: v for k, v in env.items() if k != "PATH"}
    run_env.update(MNIST_HOST="127.0.0.1", MNIST_PORT=str(port), MNIST_GRPC_PORT=str(free_port()))
    full_env = {**{k: v for k, v in os.environ.items() if not k.startswith("MNIST_")}, **run_env}
    argv = [sys.executable, *cmd[1:]]
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        ready = False
        for _ in range(300):
            if proc.poll() is not None:
                break
            with contextlib.suppress(httpx.TransportError):
                ready = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200
            if ready:
                break
            time.sleep(0.1)
        assert ready, (tmp_path / "server.log").read_text()
        check = subprocess.run([sys.executable, *health[1:]], env=full_env, timeout=10)
        assert check.returncode == 0, "the HEALTHCHECK command must pass on a ready server"
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
        assert models["served"]["name"] == "mnist-cnn"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, "SIGTERM (docker stop) must drain and exit 0"
        log.close()


def test_dockerignore_keeps_the_model_and_drops_the_venv() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored
    assert "models" not in ignored
    assert ".git" in ignored
