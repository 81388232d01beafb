"""Container and Kubernetes artifacts, checked without a Docker engine or a cluster."""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from service.config import Settings
from tests.conftest import ROOT
from tests.support.server import free_port

BIN = Path(sys.executable).parent
DEPLOY = ROOT / "deploy"
RENDERED = sorted((DEPLOY / "rendered").glob("*.yaml"))
SCHEMAS = Path(__file__).parent / "schemas"
K8S_VERSION = "1.30.0"


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


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kinds(path: Path) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in _docs(path)}


def _k8s_defs() -> Registry:
    """kubernetes-validate's bundled strict schemas for K8S_VERSION (no download)."""
    folder = importlib.resources.files("kubernetes_validate").joinpath(
        f"kubernetes-json-schema/v{K8S_VERSION}-local-strict"
    )
    defs = json.loads(folder.joinpath("_definitions.json").read_text())
    return Resource.from_contents(defs) @ Registry()  # type: ignore[no-any-return]


def _pod_spec_properties() -> dict[str, Any]:
    folder = importlib.resources.files("kubernetes_validate").joinpath(
        f"kubernetes-json-schema/v{K8S_VERSION}-local-strict"
    )
    return json.loads(folder.joinpath("podspec-v1.json").read_text())["properties"]  # type: ignore[no-any-return]


def _validate_custom(doc: dict[str, Any]) -> None:
    """A custom resource against its vendored CRD schema; a KServe predictor is also a PodSpec."""
    name = {"InferenceService": "kserve-inferenceservice-v1beta1", "PodMonitor":
            "prometheus-operator-podmonitor-v1"}[doc["kind"]]  # fmt: skip
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    if doc["kind"] == "InferenceService":
        predictor = schema["$defs"]["predictor"]
        predictor["properties"] = {**_pod_spec_properties(), **predictor["properties"]}
        predictor["required"] = ["containers"]
        # The PodSpec's $refs are relative to kubernetes.io/api/, where the bundle lives.
        schema["$id"] = f"https://kubernetes.io/api/{name}"
    Draft202012Validator(schema, registry=_k8s_defs()).validate(doc)


def test_rendered_manifests_are_the_kustomize_outputs() -> None:
    names = {p.name for p in RENDERED}
    assert names == {"base.yaml", "cpu.yaml", "gpu.yaml", "cpu-hpa-in-flight.yaml", "kserve.yaml"}
    for path in RENDERED:
        assert path.read_text().startswith("# Rendered from deploy/"), path.name


@pytest.mark.parametrize("rendered", RENDERED, ids=lambda p: p.name)
def test_rendered_manifest_is_valid_strict(rendered: Path) -> None:
    for doc in _docs(rendered):
        where = f"{rendered.name}: {doc['kind']} {doc['metadata']['name']}"
        if doc["kind"] in {"InferenceService", "PodMonitor"}:
            _validate_custom(doc)
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {'/'.join(map(str, exc.path))}")


def test_strict_validation_rejects_a_misspelt_field() -> None:
    """The validators above are closed: a typo in a container or a predictor fails."""
    deployment = _kinds(DEPLOY / "rendered/base.yaml")["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    isvc = _kinds(DEPLOY / "rendered/kserve.yaml")["InferenceService"]
    isvc["spec"]["predictor"]["minReplica"] = 1
    with pytest.raises(jsonschema.ValidationError):
        _validate_custom(isvc)
    isvc = _kinds(DEPLOY / "rendered/kserve.yaml")["InferenceService"]
    isvc["spec"]["predictor"]["containers"][0]["startupprobe"] = {}
    with pytest.raises(jsonschema.ValidationError):
        _validate_custom(isvc)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _pod(path: Path) -> dict[str, Any]:
    kinds = _kinds(path)
    if "InferenceService" in kinds:
        return kinds["InferenceService"]["spec"]["predictor"]  # type: ignore[no-any-return]
    return kinds["Deployment"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_manifests_use_only_real_settings_and_routes() -> None:
    fields = {f"MNIST_{name.upper()}" for name in Settings.model_fields}
    from service.http.app import create_app

    paths = set(create_app(Settings()).openapi()["paths"])
    for path in RENDERED:
        for c in _pod(path)["containers"]:
            unknown = set(_env(c)) - fields
            assert not unknown, f"{path.name} {c['name']}: not settings: {unknown}"
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                assert probe in c, f"{path.name}: no {probe}"
                assert c[probe]["httpGet"]["path"] in paths


@pytest.mark.parametrize("rendered", RENDERED, ids=lambda p: p.name)
def test_pod_drains_before_it_is_killed_and_runs_locked_down(rendered: Path) -> None:
    spec = _pod(rendered)
    (c,) = spec["containers"]
    drain = float(_env(c)["MNIST_DRAIN_TIMEOUT_S"])
    pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert spec["terminationGracePeriodSeconds"] > drain + pause
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["runAsNonRoot"] is True
    # A writable /tmp on the read-only root: the workers' Prometheus multi-process files.
    (tmp,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume
    assert c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    # Readiness tolerates one slow probe.
    assert c["readinessProbe"]["failureThreshold"] >= 2


@pytest.mark.parametrize("name", ["base.yaml", "cpu.yaml", "cpu-hpa-in-flight.yaml", "kserve.yaml"])
def test_cpu_pods_run_one_worker_per_cpu_of_the_limit_with_one_thread(name: str) -> None:
    (c,) = _pod(DEPLOY / "rendered" / name)["containers"]
    env = _env(c)
    ref = env["MNIST_WORKERS"]["resourceFieldRef"]
    assert ref == {"containerName": c["name"], "resource": "limits.cpu", "divisor": "1"}
    assert env["MNIST_TORCH_THREADS"] == "1"


def test_replicas_are_left_to_the_hpa_and_pods_spread_over_nodes() -> None:
    for name in ("base.yaml", "cpu.yaml", "gpu.yaml", "cpu-hpa-in-flight.yaml"):
        kinds = _kinds(DEPLOY / "rendered" / name)
        assert "replicas" not in kinds["Deployment"]["spec"], name
        assert (
            kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"]
            == (kinds["Deployment"]["metadata"]["name"])
        )
        spread = kinds["Deployment"]["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {t["topologyKey"] for t in spread} >= {"kubernetes.io/hostname"}


def test_cpu_overlay_adds_monitoring_and_ingress_to_the_base() -> None:
    kinds = _kinds(DEPLOY / "rendered/cpu.yaml")
    labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    monitor = kinds["PodMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    ports = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert endpoint["port"] in {p["name"] for p in ports}
    rules = kinds["Ingress"]["spec"]["rules"]
    prefixes = {p["path"] for r in rules for p in r["http"]["paths"]}
    assert prefixes == {"/v1", "/v2"}, "the Ingress must not publish /metrics or /admin"


def test_network_policy_admits_the_namespace_and_the_monitoring_namespace_only() -> None:
    policy = _kinds(DEPLOY / "rendered/base.yaml")["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    sources = [peer for rule in policy["ingress"] for peer in rule["from"]]
    assert {"podSelector": {}} in sources  # same namespace: no namespaceSelector
    monitoring = [p for p in sources if "namespaceSelector" in p]
    assert [p["namespaceSelector"]["matchLabels"] for p in monitoring] == [
        {"kubernetes.io/metadata.name": "monitoring"}
    ]
    assert all("ipBlock" not in p for p in sources)


def test_gpu_overlay_requests_a_gpu_and_tolerates_gpu_nodes() -> None:
    pod = _pod(DEPLOY / "rendered/gpu.yaml")
    (c,) = pod["containers"]
    assert c["image"].endswith("-cuda")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    env = _env(c)
    assert env["MNIST_DEVICE"] == "cuda"
    assert env["MNIST_WORKERS"] == "1"


def test_in_flight_overlay_scales_on_the_served_gauge() -> None:
    hpa = _kinds(DEPLOY / "rendered/cpu-hpa-in-flight.yaml")["HorizontalPodAutoscaler"]
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    assert name == "mnist_in_flight_requests"
    from service.runtime.metrics import Metrics

    exposed = {m.name for m in Metrics().registry.collect()}
    assert name in exposed
    (rule,) = yaml.safe_load(
        (DEPLOY / "k8s/components/hpa-in-flight/prometheus-adapter-rule.yaml").read_text()
    )
    assert name in rule["seriesQuery"]


def test_kserve_inferenceservice_answers_under_its_own_name() -> None:
    """KServe routes /v2/models/<InferenceService name>/...: the server must serve that name."""
    (isvc,) = _docs(DEPLOY / "rendered/kserve.yaml")
    name = isvc["metadata"]["name"]
    (c,) = isvc["spec"]["predictor"]["containers"]
    assert c["name"] == "kserve-container"
    env = _env(c)
    # HTTP only: an in-process gRPC server would bind a real port, and its generated protobuf
    # module cannot share a process with tritonclient's (both define package `inference`).
    settings = Settings(model_name=env.get("MNIST_MODEL_NAME", Settings().model_name), grpc_port=0)
    from fastapi.testclient import TestClient

    from service.http.app import create_app

    port = c["ports"][0]["containerPort"]
    assert str(port) == env["MNIST_PORT"]
    with TestClient(create_app(settings)) as client:
        assert client.get(f"/v2/models/{name}/ready").status_code == 200
        assert client.get(f"/v2/models/{name}").json()["name"] == name
        body = {"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 784],
                            "data": [0] * 784}]}  # fmt: skip
        r = client.post(f"/v2/models/{name}/infer", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["model_name"] == name


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


def test_serving_image_carries_no_training_or_evaluation_code() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"training", "evaluation"} <= set(ignored)
    copied = re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert not {"training", "evaluation"} & set(copied), copied


def test_compose_services_are_limited_and_hardened_like_the_pods() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    deployment = _kinds(DEPLOY / "rendered/base.yaml")["Deployment"]
    (pod_container,) = deployment["spec"]["template"]["spec"]["containers"]
    for name, service in compose["services"].items():
        assert service["read_only"] is True, name
        assert service["tmpfs"] == ["/tmp"], name
        assert service["cap_drop"] == ["ALL"], name
        assert service["mem_limit"], name
        assert "PYTHON_IMAGE" in service["build"]["args"], name
    cpu = compose["services"]["mnist"]
    assert cpu["image"] == pod_container["image"]
    assert int(cpu["environment"]["MNIST_WORKERS"]) == cpu["cpus"]


def _requirement_name(spec: str) -> str:
    return re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0].lower().replace("_", "-")


def test_image_lock_covers_the_runtime_dependencies_and_no_training_ones() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())["project"]
    # The client distribution comes from clients/python in the image, its dependencies
    # from the lock (the command's progress bar, tqdm, is one of them).
    runtime = {_requirement_name(d) for d in project["dependencies"]} - {"mnist-client"}
    runtime |= {_requirement_name(d) for d in client["dependencies"]}
    train = {_requirement_name(d) for d in project["optional-dependencies"]["train"]} - runtime
    lock_text = (ROOT / "requirements/image.txt").read_text()
    locked = dict(
        re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+)", lock_text, flags=re.MULTILINE | re.I)
    )
    locked = {k.lower().replace("_", "-"): v for k, v in locked.items()}
    assert runtime - {"torch"} <= set(locked), runtime - set(locked)
    assert not train & set(locked), "torchvision must stay out of the serving image"
    assert "torch" not in locked, "torch comes from the variant's index, not the lock"
    # Every pin is hash-checked (the Dockerfile installs with --require-hashes).
    assert lock_text.count("--hash=sha256:") >= len(locked)


def test_dockerfile_torch_is_the_one_the_lock_was_resolved_against() -> None:
    text = (ROOT / "Dockerfile").read_text()
    match = re.search(r"^ARG TORCH_VERSION=(\S+)", text, flags=re.MULTILINE)
    assert match
    overrides = (ROOT / "requirements/image-overrides.txt").read_text()
    assert f"torch=={match.group(1)}" in overrides.split()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, flags=re.MULTILINE)
    assert base
    assert re.search(r":3\.11\.\d+-", base.group(1)), "the base image is pinned to a patch release"
