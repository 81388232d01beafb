"""available_cpus: the container's CPU quota (cgroup v1 and v2) bounds threads and workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.runtime.cpus import available_cpus, cgroup_cpu_limit

AFFINITY = len(os.sched_getaffinity(0))


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    return root


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "200000 100000"}, 2.0),
        ({"cpu.max": "150000 100000"}, 1.5),
        ({"cpu.max": "max 100000"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"}, 3.0),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "50000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        ({"cpu.max": "garbage"}, None),
        ({}, None),
    ],
    ids=["v2-2", "v2-1.5", "v2-max", "v1-3", "v1-cpuacct-0.5", "v1-unlimited", "junk", "none"],
)
def test_cgroup_cpu_limit_reads_v1_and_v2(tmp_path: Path, files: dict[str, str], limit) -> None:
    assert cgroup_cpu_limit(_write(tmp_path, files)) == limit


def test_available_cpus_is_the_quota_rounded_down_when_below_affinity(tmp_path: Path) -> None:
    root = _write(tmp_path, {"cpu.max": "150000 100000"})
    assert available_cpus(root) == 1


def test_available_cpus_is_at_least_one_when_the_quota_is_a_fraction(tmp_path: Path) -> None:
    root = _write(tmp_path, {"cpu.max": "20000 100000"})
    assert available_cpus(root) == 1


def test_available_cpus_is_the_affinity_when_the_quota_is_larger(tmp_path: Path) -> None:
    root = _write(tmp_path, {"cpu.max": f"{(AFFINITY + 8) * 100000} 100000"})
    assert available_cpus(root) == AFFINITY


def test_available_cpus_is_the_affinity_without_a_cgroup(tmp_path: Path) -> None:
    assert available_cpus(tmp_path / "absent") == AFFINITY
