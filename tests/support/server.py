"""Start a real `python -m service` process on a free port and wait until it is ready."""

from __future__ import annotations

import atexit
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(
        self,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        fd_limit: int | None = None,
        cwd: Path | None = None,
        defaults: bool = False,
    ) -> None:
        """`fd_limit`: RLIMIT_NOFILE (soft and hard) of the server process, as `ulimit -n`;
        `cwd`: the checkout whose code runs (default: this one); `defaults`: exactly what
        `make serve` runs (one worker per CPU), else one worker unless `env` says more, so
        that a test's server costs one process."""
        self.fd_limit = fd_limit
        self.cwd = cwd or ROOT
        self.port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.env = {
            **os.environ,
            "MNIST_PORT": str(self.port),
            "MNIST_GRPC_PORT": str(self.grpc_port),
            "PYTHONUNBUFFERED": "1",
        }
        if not defaults:
            self.env.setdefault("MNIST_WORKERS", "1")
        self.env.update(env or {})
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def start(self, log_dir: Path, wait: bool = True, timeout_s: float = 60) -> ServerProcess:
        self.log_path = log_dir / f"server-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", *self.args],
            cwd=self.cwd,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=self._limit_fds if self.fd_limit else None,
        )
        # Never leak a server, whatever happens to the test that started it.
        atexit.register(self.kill)
        if wait:
            try:
                self.wait_ready(timeout_s)
            except BaseException:
                self.kill()
                raise
        return self

    def _limit_fds(self) -> None:
        assert self.fd_limit is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.fd_limit, self.fd_limit))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout_s}s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def wait_for_log(self, text: str, timeout_s: float = 10) -> str:
        """The log once it contains `text`: lines reach it from a writer thread, a moment
        after the event they describe."""
        deadline = time.monotonic() + timeout_s
        while text not in (log := self.log()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged: {log[-2000:]}")
            time.sleep(0.02)
        return log

    @property
    def pid(self) -> int:
        """The server's pid, which is also its process group (it starts a new session)."""
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def run_to_exit(
    env: dict[str, str], args: list[str] | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the server command expecting it to exit (startup failures)."""
    full_env = {
        **os.environ,
        "MNIST_PORT": str(free_port()),
        "MNIST_GRPC_PORT": str(free_port()),
        "MNIST_WORKERS": os.environ.get("MNIST_WORKERS", "1"),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "service", *(args or [])],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
