"""`python -m service`: settings from env and flags, a fail-fast model check, then uvicorn."""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import signal
import socket
import subprocess
import sys
import tempfile
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError

from service.config import Settings


def parse_args(argv: list[str] | None) -> dict[str, Any]:
    """The Settings fields given as flags: one flag per field, `--max-batch-size 32` for
    `max_batch_size`, `--batching` / `--no-batching` for a yes/no field."""
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve the MNIST model over HTTP. Every flag has an MNIST_<FLAG> env var.",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            action = argparse.BooleanOptionalAction
            parser.add_argument(flag, dest=name, action=action, help=field.description)
            continue
        # NOTE: values stay strings: Settings converts and validates them, so a bad value
        # gets the same one-line error whether it came from a flag or the environment.
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
        parser.add_argument(flag, dest=name, choices=choices, help=field.description)
    args = parser.parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None}


def _fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"error: {message}\n")
    return code


def _grpc_port_taken(settings: Settings) -> str | None:
    """Why the gRPC port cannot be used, or None. The workers bind it with SO_REUSEPORT to
    share it, which would also share it silently with another server already on it: a
    plain bind first fails as that server's would."""
    if not settings.grpc_port:
        return None
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As gRPC binds: TIME_WAIT left by a server that just stopped does not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((settings.host, settings.grpc_port))
        except OSError as exc:
            return (
                f"cannot use the gRPC port {settings.host}:{settings.grpc_port} "
                f"({exc.strerror or exc}); set MNIST_GRPC_PORT to a free port, or 0 for none"
            )
    return None


def uvicorn_options(settings: Settings, log_config: dict[str, Any]) -> dict[str, Any]:
    """uvicorn.run keyword arguments shared by one and several workers."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": log_config,
        "access_log": False,
        "timeout_graceful_shutdown": settings.drain_timeout_s,
        "server_header": False,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        # NOTE: uvicorn trusts 127.0.0.1 by default; here only the configured proxies are,
        # and without any the proxy-header middleware is not installed at all.
        "proxy_headers": bool(settings.forwarded_allow_ips.strip()),
        "forwarded_allow_ips": settings.forwarded_allow_ips.strip() or None,
    }
    if settings.connection_limits:
        from service.http.protocol import ConnectionLimits, protocol_factory

        limits = ConnectionLimits.from_settings(settings)
        if limits.fd_limit is not None:
            logging.getLogger("service").warning(
                "max_connections %d lowered to %d: RLIMIT_NOFILE is %d (ulimit -n)",
                settings.max_connections,
                limits.max_connections,
                limits.fd_limit,
            )
        options["http"] = protocol_factory(limits)
    else:
        options["http"] = "httptools"
    return options


def main(argv: list[str] | None = None) -> int:
    overrides = parse_args(argv)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        from service.errors import describe_validation  # the web stack only on this path

        return _fail(f"invalid setting {describe_validation(exc, 'settings')}")

    import uvicorn

    from service.runtime.logging_config import build_log_config

    try:
        settings.api_key_list()
    except OSError as exc:
        return _fail(f"cannot read API keys file: {exc}")
    log_config = build_log_config(
        settings.log_level, settings.log_json, queue_records=settings.log_queue_records
    )
    logging.config.dictConfig(log_config)
    common = uvicorn_options(settings, log_config)
    # NOTE: uvicorn re-raises the signal that stopped it once it has drained, under the
    # handler that was installed before it started. A no-op handler there turns a graceful
    # SIGTERM into exit status 0, which is what orchestrators expect after a clean drain.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    if settings.workers == 0:
        from service.runtime.cpus import available_cpus

        overrides["workers"] = available_cpus()
        settings = settings.model_copy(update={"workers": overrides["workers"]})
    if settings.workers == 1:
        from service.http.app import create_app
        from service.serving.repository import ModelLoadError, ModelRepository

        repository = ModelRepository(settings)
        try:
            repository.start()
        except ModelLoadError as exc:
            return _fail(str(exc), 1)
        uvicorn.run(create_app(settings, repository), **common)
        return 0
    # Several processes, each with its own model and batcher built from the environment. The
    # supervisor never imports torch (saves ~0.8 GB): a child process checks the model first.
    for field, value in overrides.items():
        os.environ["MNIST_" + field.upper()] = str(value)
    check = subprocess.run(
        [sys.executable, "-m", "service.runtime.check"], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        lines = check.stderr.strip().splitlines() or ["model check failed"]
        sys.stderr.write(lines[-1] + "\n")
        return check.returncode
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        try:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mnist-metrics-")
        except OSError as exc:
            # A read-only root filesystem without a /tmp volume: say what to mount.
            return _fail(
                f"cannot create the metrics directory for {settings.workers} workers "
                f"({exc.strerror or exc}); mount a writable /tmp (tmpfs or emptyDir) "
                "or set PROMETHEUS_MULTIPROC_DIR to a writable directory",
                1,
            )
    taken = _grpc_port_taken(settings)
    if taken:
        return _fail(taken)
    from service.runtime.supervisor import Supervisor

    # What uvicorn.run does for workers > 1, with our supervisor in place of uvicorn's.
    # A worker that does not answer the parent's health check this long is replaced
    # (uvicorn's 5 s is too short on a busy machine).
    config = uvicorn.Config(
        "service.http.app:create_app",
        factory=True,
        workers=settings.workers,
        timeout_worker_healthcheck=60,
        **common,
    )
    Supervisor(config, sockets=[config.bind_socket()], settings=settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
