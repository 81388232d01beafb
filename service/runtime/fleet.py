"""Fleet: keeps the worker processes of `--workers N` on one model version.

The supervisor creates a small folder and names it in MNIST_FLEET_DIR for its workers:

- `desired.json`: the version every worker should serve, with a generation number that
  each publication raises (written atomically, under `desired.lock`);
- `worker-<pid>.json`: each worker's report: the generation it last applied, the version it
  serves, and the reason when it refused that generation's version.

A reload (POST /admin/reload in any worker, or SIGHUP to the parent) publishes a version;
the parent relays SIGHUP to every worker that has reported, and each reloads to the desired
version. A worker that starts later (a replacement) loads the desired version directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from service.serving.repository import ModelLoadError, ModelRepository

logger = logging.getLogger(__name__)

#: Environment variable naming the fleet folder; set by the supervisor, absent with one worker.
FLEET_DIR_ENV = "MNIST_FLEET_DIR"
#: The signal a worker sends the parent to have a published version relayed to every worker.
FAN_OUT_SIGNAL = signal.SIGUSR1


@dataclass(frozen=True)
class Desired:
    generation: int
    version: str


@dataclass(frozen=True)
class Report:
    pid: int
    generation: int
    version: str
    error: str | None = None


class Fleet:
    """The shared files; every method is a few small file operations."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @classmethod
    def from_env(cls) -> Fleet | None:
        folder = os.environ.get(FLEET_DIR_ENV)
        return cls(Path(folder)) if folder else None

    def publish(self, version: str) -> int:
        """Make `version` the desired one; returns its generation."""
        with open(self.folder / "desired.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.desired()
            generation = (current.generation if current else 0) + 1
            _write_json(self.folder / "desired.json", asdict(Desired(generation, version)))
        return generation

    def desired(self) -> Desired | None:
        raw = _read_json(self.folder / "desired.json")
        return Desired(**raw) if raw else None

    def report(self, generation: int, version: str, error: str | None = None) -> None:
        report = Report(os.getpid(), generation, version, error)
        _write_json(self.folder / f"worker-{report.pid}.json", asdict(report))

    def reports(self) -> dict[int, Report]:
        """The reports of workers that are still running."""
        found = {}
        for path in self.folder.glob("worker-*.json"):
            raw = _read_json(path)
            if raw and _running(raw["pid"]):
                found[raw["pid"]] = Report(**raw)
        return found

    def forget(self, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.folder / f"worker-{pid}.json").unlink()

    async def wait_for(self, generation: int, timeout_s: float) -> tuple[list[Report], list[int]]:
        """Every running worker's report once all have applied `generation` (or a later one),
        or at the timeout; with the pids still behind."""
        deadline = time.monotonic() + timeout_s
        while True:
            reports = self.reports()
            behind = sorted(pid for pid, r in reports.items() if r.generation < generation)
            if not behind or time.monotonic() >= deadline:
                return sorted(reports.values(), key=lambda r: r.pid), behind
            await asyncio.sleep(0.05)


class FleetMember:
    """One worker's side: follow the desired version, or publish one for everybody."""

    def __init__(self, fleet: Fleet, repository: ModelRepository, timeout_s: float) -> None:
        self.fleet = fleet
        self.repository = repository
        self.timeout_s = timeout_s
        self.generation = 0
        self._start_error: str | None = None

    def load_desired(self) -> None:
        """At start-up: serve the desired version (a replacement joins the others), else the
        configured one. A desired version that no longer loads falls back to the configured
        one and is reported."""
        desired = self.fleet.desired()
        if desired is not None:
            self.generation = desired.generation
            try:
                self.repository.start(desired.version)
                return
            except ModelLoadError as exc:
                self._start_error = str(exc)
                logger.error("cannot serve the fleet's v%s: %s", desired.version, exc)
        self.repository.start()

    def join(self) -> bool:
        """Report in (the parent relays reloads only to workers that have); True when a
        reload was published meanwhile and this worker must follow it."""
        self.fleet.report(self.generation, self.repository.current.version, self._start_error)
        desired = self.fleet.desired()
        return desired is not None and desired.generation != self.generation

    async def follow(self) -> None:
        """Reload to the desired version and report (on SIGHUP from the parent)."""
        desired = self.fleet.desired()
        if desired is None:
            return
        error = None
        try:
            await self.repository.reload(desired.version)
        except ModelLoadError as exc:
            error = str(exc)
        self.generation = desired.generation
        self.fleet.report(desired.generation, self.repository.current.version, error)

    async def publish(self, version: str) -> tuple[list[Report], list[int]]:
        """Publish `version` (already served here) to every worker and wait, bounded, for
        their reports. Returns them and the pids that did not report in time."""
        generation = self.fleet.publish(version)
        self.generation = generation
        self.fleet.report(generation, self.repository.current.version)
        os.kill(os.getppid(), FAN_OUT_SIGNAL)
        return await self.fleet.wait_for(generation, self.timeout_s)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # a torn read cannot happen (atomic rename); a stray file is ignored


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)
