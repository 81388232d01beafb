"""The fleet folder: generations, reports of running workers only, the bounded wait."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from service.runtime.fleet import Desired, Fleet, Report


def test_fleet_publish_raises_the_generation(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    assert fleet.desired() is None
    assert fleet.publish("2") == 1
    assert fleet.publish("1") == 2
    assert fleet.desired() == Desired(2, "1")


def test_fleet_reports_only_running_workers(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.report(3, "2")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    gone = int(dead.stdout)
    (tmp_path / f"worker-{gone}.json").write_text(
        json.dumps({"pid": gone, "generation": 0, "version": "1", "error": None})
    )
    assert fleet.reports() == {os.getpid(): Report(os.getpid(), 3, "2")}
    fleet.forget(os.getpid())
    assert fleet.reports() == {}


async def test_fleet_wait_names_the_workers_behind_at_the_timeout(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.report(1, "1", "checksum mismatch")
    reports, behind = await fleet.wait_for(2, timeout_s=0.2)
    assert behind == [os.getpid()]
    assert reports == [Report(os.getpid(), 1, "1", "checksum mismatch")]
    fleet.report(2, "2")
    assert await fleet.wait_for(2, timeout_s=5) == ([Report(os.getpid(), 2, "2")], [])
