"""Start a real PostgreSQL cluster (Debian's package: `apt-get install postgresql`) in a
temporary folder on a free port, owned by the current user, or by `postgres` when the
tests run as root (the server refuses to run as root)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.server import free_port

#: The user the cluster runs as when the tests run as root (Debian's package creates it).
SERVICE_USER = "postgres"


def pg_bin(name: str) -> str:
    """`initdb`, `pg_ctl`...: on the PATH, else in Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise FileNotFoundError(
            f"{name} not found: install PostgreSQL (apt-get install -y postgresql); .ci/run does"
        )
    return candidates[-1]


class PostgresCluster:
    """A throwaway cluster: `url` is ready once `start()` returns; `stop()` removes it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.user = "mnist"
        self.url = f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"
        self._root = Path(tempfile.mkdtemp(prefix="mnist-pg-"))
        self.data = self._root / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            # The server will not run as root: the folder goes to the service user.
            shutil.chown(self._root, SERVICE_USER)
            self._as = ["runuser", "-u", SERVICE_USER, "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresCluster:
        self._run(
            pg_bin("initdb"), "-D", str(self.data), "-U", self.user,
            "--auth=trust", "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        options = f"-p {self.port} -k {self._root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            pg_bin("pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self._root / "server.log"), "-w", "-t", "60", "start",
        )  # fmt: skip
        self._wait_ready()
        return self

    def _wait_ready(self, timeout_s: float = 30) -> None:
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def log(self) -> str:
        path = self._root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, FileNotFoundError):
            self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self._root, ignore_errors=True)
