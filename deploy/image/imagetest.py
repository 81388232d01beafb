"""`make image-test`: build the image with docker or podman, run it as production would, check it.

Checks: ready within 30 s; the example files predicted through /v1 and V2; non-root; read-only
root with a tmpfs /tmp and two workers; the image's HEALTHCHECK command; SIGTERM exits 0 within
the drain bound; one clear line on a read-only root without /tmp; with podman, `kube play` of
the rendered Deployment. Prints the image size, the ready time and the RSS of each process.

Environment knobs (all optional):
  IMAGE_ENGINE        docker or podman (default: docker when its daemon answers, else podman)
  PYTHON_IMAGE        base image; default: the Dockerfile's, else a local Debian one built by
                      deploy/image/local-base.sh when no registry answers
  TORCH_WHEEL         a CPU torch wheel to build with when the PyTorch index is unreachable
                      (default: one found in PIP_FIND_LINKS)
  IMAGE_BUILD_FLAGS   extra build flags; podman gets `--isolation chroot --network host
                      --format docker` (docker format keeps the HEALTHCHECK)
  IMAGE_RUN_FLAGS     extra run flags; podman gets `--ulimit nofile=4096:4096 --ulimit
                      nproc=4096:4096`, and `--runtime runc` when runc is installed
  KEEP_IMAGE=1        keep the built image (it is removed otherwise)
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/mnist-serving:image-test"
LOCAL_BASE = "localhost/mnist-base:bookworm"
EXAMPLES = {"seven.png": 7, "two.jpg": 2, "three-marker.png": 3, "four-mnist.png": 4}
READY_BOUND_S = 30.0
DRAIN_TIMEOUT_S = 20.0
UID = "10001"

failures: list[str] = []


def log(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def check(ok: bool, what: str, detail: str = "") -> None:
    log(f"{'PASS' if ok else 'FAIL'}  {what}" + (f"  ({detail})" if detail else ""))
    if not ok:
        failures.append(what)


def sh(
    *argv: str, check_rc: bool = True, timeout: float = 1800, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, env=full_env
    )
    if check_rc and done.returncode != 0:
        raise SystemExit(
            f"command failed ({done.returncode}): {shlex.join(argv)}\n"
            f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pick_engine() -> str:
    wanted = os.environ.get("IMAGE_ENGINE")
    if wanted:
        return wanted
    docker = shutil.which("docker")
    if docker and sh(docker, "info", check_rc=False, timeout=30).returncode == 0:
        return "docker"
    if shutil.which("podman"):
        return "podman"
    raise SystemExit("neither a docker daemon nor podman is available")


def engine_flags(engine: str) -> tuple[list[str], list[str]]:
    build = shlex.split(os.environ.get("IMAGE_BUILD_FLAGS", ""))
    run = shlex.split(os.environ.get("IMAGE_RUN_FLAGS", ""))
    if engine == "podman":
        # Sandbox-friendly defaults: chroot isolation and the host network need no user
        # namespaces or CNI; the ulimits stay under the sandbox's hard limits.
        build = ["--isolation", "chroot", "--network", "host", "--format", "docker", *build]
        run = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096", *run]
        if shutil.which("runc"):
            run = ["--runtime", "runc", *run]
    return build, run


def default_base() -> str:
    text = (ROOT / "Dockerfile").read_text()
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.MULTILINE)
    assert match, "the Dockerfile declares ARG PYTHON_IMAGE"
    return match.group(1)


def pick_base(engine: str) -> str:
    if os.environ.get("PYTHON_IMAGE"):
        return os.environ["PYTHON_IMAGE"]
    base = default_base()
    if sh(engine, "pull", base, check_rc=False, timeout=120).returncode == 0:
        return base
    if sh(engine, "image", "inspect", LOCAL_BASE, check_rc=False).returncode == 0:
        log(f"note  {base} cannot be pulled: using the local base {LOCAL_BASE}")
        return LOCAL_BASE
    log(f"note  {base} cannot be pulled: building {LOCAL_BASE} with debootstrap")
    sh(str(ROOT / "deploy/image/local-base.sh"), LOCAL_BASE)
    return LOCAL_BASE


def torch_args() -> list[str]:
    """Build args for torch: the PyTorch CPU index when it answers, else a local CPU wheel."""
    index = "https://download.pytorch.org/whl/cpu"
    wheel = os.environ.get("TORCH_WHEEL")
    if not wheel:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(index + "/torch/", timeout=10).close()
            return []
        for folder in os.environ.get("PIP_FIND_LINKS", "").split():
            found = sorted(Path(folder).glob("torch-*+cpu-cp311-*.whl"))
            if found:
                wheel = str(found[-1])
                break
    if not wheel:
        raise SystemExit(f"{index} is unreachable: set TORCH_WHEEL to a CPU torch wheel")
    version = Path(wheel).name.split("-")[1]
    shutil.copy(wheel, ROOT / "deploy/wheels" / Path(wheel).name)
    log(f"note  {index} unreachable: torch {version} from {Path(wheel).name}")
    # torch's own dependencies then come from PyPI.
    return [
        "--build-arg",
        "TORCH_INDEX=https://pypi.org/simple",
        "--build-arg",
        f"TORCH_VERSION={version}",
    ]


def build(engine: str, flags: list[str]) -> float:
    base = pick_base(engine)
    argv = [
        engine,
        "build",
        *flags,
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        *torch_args(),
        "-t",
        TAG,
        str(ROOT),
    ]
    log("build " + shlex.join(argv))
    started = time.monotonic()
    try:
        sh(*argv)
    finally:
        for wheel in (ROOT / "deploy/wheels").glob("*.whl"):
            wheel.unlink()
    return time.monotonic() - started


def image_size_mb(engine: str) -> float:
    out = sh(engine, "image", "inspect", "--format", "{{.Size}}", TAG).stdout
    return int(out.strip()) / 1e6


def wait_ready(url: str, bound_s: float, alive: Any = None) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < bound_s:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return time.monotonic() - started
        if alive is not None and not alive():
            return None
        time.sleep(0.1)
    return None


def state(engine: str, name: str, field: str) -> str:
    return sh(engine, "inspect", "--format", "{{" + field + "}}", name).stdout.strip()


def check_predictions(url: str, where: str) -> None:
    files = [("files", (n, (ROOT / "examples" / n).read_bytes(), "image/*")) for n in EXAMPLES]
    r = httpx.post(url + "/v1/predict", files=files, timeout=30)
    got = {p["filename"]: p["digit"] for p in r.json().get("predictions", [])}
    check(
        r.status_code == 200 and got == EXAMPLES, f"{where}: /v1/predict of the examples", str(got)
    )
    data = [base64.b64encode((ROOT / "examples" / n).read_bytes()).decode() for n in EXAMPLES]
    body = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(data)], "data": data}],
        "outputs": [{"name": "label"}],
    }
    r = httpx.post(url + "/v2/models/mnist-cnn/infer", json=body, timeout=30)
    labels = r.json()["outputs"][0]["data"] if r.status_code == 200 else r.text
    check(labels == list(EXAMPLES.values()), f"{where}: V2 infer of the examples", str(labels))


_RSS_SCRIPT = """
import os
for pid in sorted(int(p) for p in os.listdir('/proc') if p.isdigit()):
    try:
        cmd = open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\\0', b' ').decode().strip()
        rss = [l for l in open(f'/proc/{pid}/status') if l.startswith('VmRSS')]
    except OSError:
        continue
    if rss and 'python' in cmd and pid != os.getpid():
        role = ('worker' if 'spawn_main' in cmd else 'tracker' if 'resource_tracker' in cmd
                else 'supervisor')
        print(pid, role, int(rss[0].split()[1]) // 1024)
"""


def process_rss(engine: str, name: str) -> list[tuple[str, int]]:
    out = sh(engine, "exec", name, "python", "-c", _RSS_SCRIPT).stdout
    return [(line.split()[1], int(line.split()[2])) for line in out.splitlines()]


def run_server(engine: str, run_flags: list[str]) -> None:
    name = f"mnist-image-test-{os.getpid()}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        engine,
        "run",
        "-d",
        "--name",
        name,
        *run_flags,
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "-e",
        f"MNIST_PORT={port}",
        "-e",
        "MNIST_HOST=127.0.0.1",
        "-e",
        "MNIST_WORKERS=2",
        "-e",
        f"MNIST_DRAIN_TIMEOUT_S={DRAIN_TIMEOUT_S:g}",
        TAG,
    ]
    log("run   " + shlex.join(argv))
    sh(*argv)
    try:
        ready_s = wait_ready(url, READY_BOUND_S)
        check(
            ready_s is not None,
            f"ready within {READY_BOUND_S:g} s (2 workers)",
            f"{ready_s:.1f} s" if ready_s else sh(engine, "logs", name).stderr[-2000:],
        )
        if ready_s is None:
            return
        uid = sh(engine, "exec", name, "id", "-u").stdout.strip()
        check(uid == UID, "runs as non-root", f"uid {uid}")
        write_root = sh(engine, "exec", name, "python", "-c", "open('/app/x', 'w')", check_rc=False)
        check(
            write_root.returncode != 0 and "Read-only file system" in write_root.stderr,
            "root filesystem is read-only",
        )
        write_tmp = sh(engine, "exec", name, "python", "-c", "open('/tmp/x', 'w')", check_rc=False)
        check(write_tmp.returncode == 0, "/tmp is writable (tmpfs)")
        check_predictions(url, "container")
        health = json.loads(state(engine, name, "json .Config.Healthcheck"))
        test = health.get("Test") or []
        ok = (
            test[:1] == ["CMD"]
            and sh(engine, "exec", name, *test[1:], check_rc=False).returncode == 0
        )
        check(ok, "HEALTHCHECK command passes", shlex.join(test[1:])[:60] + "...")
        metrics = httpx.get(url + "/metrics", timeout=10).text
        check("mnist_requests_total" in metrics, "/metrics aggregates the workers")
        rss = process_rss(engine, name)
        workers = [mb for role, mb in rss if role == "worker"]
        check(len(workers) == 2, "two worker processes", f"{len(workers)}")
        log(f"ready {ready_s:.1f} s; RSS MB: " + ", ".join(f"{r} {mb}" for r, mb in rss))
        started = time.monotonic()
        sh(engine, "stop", "-t", f"{DRAIN_TIMEOUT_S + 10:g}", name)
        stop_s = time.monotonic() - started
        code = state(engine, name, ".State.ExitCode")
        check(
            code == "0" and stop_s < DRAIN_TIMEOUT_S,
            "SIGTERM: exit 0 within the drain bound",
            f"exit {code} after {stop_s:.1f} s, bound {DRAIN_TIMEOUT_S:g} s",
        )
    finally:
        sh(engine, "rm", "-f", name, check_rc=False)


def run_without_tmp(engine: str, run_flags: list[str]) -> None:
    # podman mounts a tmpfs on /tmp with --read-only unless told not to.
    no_tmpfs = ["--read-only-tmpfs=false"] if engine == "podman" else []
    done = sh(
        engine,
        "run",
        "--rm",
        *run_flags,
        "--network",
        "host",
        "--read-only",
        *no_tmpfs,
        "-e",
        "MNIST_WORKERS=2",
        "-e",
        f"MNIST_PORT={free_port()}",
        TAG,
        check_rc=False,
        timeout=120,
    )
    # The server's own output, without the engine's log lines (podman: no systemd timers).
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("time=")]
    check(
        done.returncode == 1 and len(lines) == 1 and "mount a writable /tmp" in lines[0],
        "read-only root without /tmp: one clear error line",
        lines[-1][:150] if lines else f"exit {done.returncode}",
    )


def kube_play(engine: str) -> None:
    if engine != "podman":
        log("note  kube play needs podman: skipped with " + engine)
        return
    (deployment,) = [
        d
        for d in yaml.safe_load_all((ROOT / "deploy/rendered/base.yaml").read_text())
        if d and d["kind"] == "Deployment"
    ]
    port = free_port()
    pod = deployment["spec"]["template"]["spec"]
    # The manifest as it is, but for the image built here and the host network on a free port
    # (the sandbox has no CNI); the Deployment's own env, probes, limits and volumes stay.
    pod["hostNetwork"] = True
    (c,) = pod["containers"]
    c["image"] = TAG
    # podman refuses port mappings on the host network: probes name the port by number.
    named = {p["name"]: port for p in c.pop("ports")}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        c[probe]["httpGet"]["port"] = named.get(c[probe]["httpGet"]["port"], port)
    c["env"] += [
        {"name": "MNIST_PORT", "value": str(port)},
        {"name": "MNIST_HOST", "value": "127.0.0.1"},
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(deployment, f)
    # kube play takes no run flags: the same ulimits and runtime go through containers.conf.
    _, run_flags = engine_flags(engine)
    ulimits = [run_flags[i + 1] for i, flag in enumerate(run_flags) if flag == "--ulimit"]
    conf = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)  # noqa: SIM115
    conf.write(f"[containers]\ndefault_ulimits = {json.dumps(ulimits)}\n")
    if "--runtime" in run_flags:
        conf.write(f'[engine]\nruntime = "{run_flags[run_flags.index("--runtime") + 1]}"\n')
    conf.close()
    env = {"CONTAINERS_CONF": conf.name}
    try:
        started = time.monotonic()
        sh(engine, "kube", "play", "--replace", f.name, env=env)
        # The pod's own start-up bound: what its startupProbe allows before a restart.
        startup = c["startupProbe"]
        bound_s = startup["periodSeconds"] * startup["failureThreshold"]
        ready = wait_ready(f"http://127.0.0.1:{port}", bound_s)
        elapsed = time.monotonic() - started
        check(
            ready is not None,
            f"kube play of the Deployment: ready within its startupProbe ({bound_s} s)",
            f"{elapsed:.1f} s",
        )
        if ready is not None:
            check_predictions(f"http://127.0.0.1:{port}", "kube play")
            pods = sh(engine, "ps", "--format", "{{.Names}}").stdout.split()
            server = [p for p in pods if p.endswith("-server")]
            if server:
                rss = process_rss(engine, server[0])
                log("kube play RSS MB: " + ", ".join(f"{r} {mb}" for r, mb in rss))
    finally:
        sh(engine, "kube", "down", f.name, check_rc=False, env=env)
        os.unlink(f.name)
        os.unlink(conf.name)


@contextlib.contextmanager
def built_image(engine: str, flags: list[str]) -> Iterator[None]:
    build_s = build(engine, flags)
    log(f"built {TAG} in {build_s:.0f} s; image size {image_size_mb(engine):.0f} MB")
    try:
        yield
    finally:
        if not os.environ.get("KEEP_IMAGE"):
            sh(engine, "rmi", "-f", TAG, check_rc=False)


def main(argv: list[str]) -> int:
    engine = pick_engine()
    build_flags, run_flags = engine_flags(engine)
    log(f"engine {engine}")
    if "--build-only" in argv:
        os.environ["KEEP_IMAGE"] = "1"
        with built_image(engine, build_flags):
            return 0
    with built_image(engine, build_flags):
        run_server(engine, run_flags)
        run_without_tmp(engine, run_flags)
        kube_play(engine)
    log(f"{'FAILED: ' + '; '.join(failures) if failures else 'all image checks passed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
