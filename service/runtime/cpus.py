"""CPUs this process may use: affinity and the container's cgroup CPU quota, not the node's."""

from __future__ import annotations

import math
import os
from pathlib import Path

_CGROUP = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota(quota: str | None, period: str | None) -> float | None:
    """quota/period in CPUs, or None for no limit ("max" in v2, -1 in v1) or unreadable files."""
    if quota is None or period is None or quota in ("max", "-1"):
        return None
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _candidate_dirs(root: Path) -> list[Path]:
    """This process's cgroup folders (v2, and v1's cpu controller) with their ancestors."""
    leaves: list[Path] = [root, root / "cpu,cpuacct", root / "cpu"]
    for line in (_read(Path("/proc/self/cgroup")) or "").splitlines():
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        mounts = [root] if controllers == "" else [root / "cpu,cpuacct", root / "cpu"]
        if controllers and "cpu" not in controllers.split(","):
            continue
        for mount in mounts:
            folder = mount / path.strip().lstrip("/")
            while folder != mount and mount in folder.parents:
                leaves.append(folder)
                folder = folder.parent
    return leaves


def cgroup_cpu_limit(root: Path = _CGROUP) -> float | None:
    """The tightest CPU quota, in CPUs, from cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us`.

    A container usually sees its own cgroup as the root of /sys/fs/cgroup; elsewhere the
    folders named in /proc/self/cgroup and their parents are read too. None: no quota.
    """
    limits: list[float] = []
    for folder in dict.fromkeys(_candidate_dirs(root)):
        v2 = _read(folder / "cpu.max")
        if v2 is not None:
            quota, _, period = v2.partition(" ")
            found = _quota(quota, period or None)
        else:
            found = _quota(_read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us"))
        if found is not None:
            limits.append(found)
    return min(limits) if limits else None


def available_cpus(root: Path = _CGROUP) -> int:
    """Whole CPUs this process can use: min(affinity, quota rounded down), at least 1.

    Rounding down keeps threads x workers within the quota, where extra threads would only
    be throttled by the kernel's CFS bandwidth control.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        count = min(count, math.floor(limit))
    return max(1, count)
