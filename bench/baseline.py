"""The regression guard: this checkout against a fixed earlier commit, in one run.

    python -m bench --baseline 2fd90e7             # 3 interleaved rounds, the four cells
    python -m bench --baseline v0.3 --rounds 5 --duration 20

REF (a commit, tag or branch) is checked out into a temporary git worktree; both servers
start with the defaults `make serve` uses (only host and ports are given, access log on),
from the same virtualenv, and take turns cell set by cell set, round after round, so a
machine that drifts between minutes moves both alike. Each cell reports req/s, images/s,
p50/p99, refusals (non-2xx) and the server's CPU per request (all its processes' CPU time
over the requests answered), and the ratio current / baseline.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.run import ROOT, group_processes, group_rss_mb, run_wrk, verify, write_images
from tests.support.server import ServerProcess

#: (workload, images per request, concurrency): the cells the issue tracker's table uses.
CELLS = [("single", 1, 1), ("single", 1, 64), ("batch64", 64, 1), ("batch64", 64, 64)]

_TICK = os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every live process in the process group (workers
    included; a worker that exited mid-cell takes its share with it)."""
    ticks = sum(int(f[11]) + int(f[12]) for _, f in group_processes(pgid))
    return ticks / _TICK


@dataclass(frozen=True)
class Checkout:
    """A server to measure: a name for the table and the folder whose code runs."""

    name: str
    root: Path


@contextlib.contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """REF checked out (detached) in a temporary worktree, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(path), ref],
            check=True,
        )
        try:
            yield path
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                check=False,
            )


def measure_cell(
    server: ServerProcess, images: Path, per: int, conc: int, warmup: float, duration: float
) -> dict[str, Any]:
    run_wrk(server.url, images, per, conc, warmup)
    before = group_cpu_s(server.pid)
    cell = run_wrk(server.url, images, per, conc, duration)
    cpu = group_cpu_s(server.pid) - before
    answered = max(cell["requests"] - cell["non2xx"], 1)
    # Refusals are not work done: rates count answered requests only.
    cell["rps"] = answered / duration
    cell["images_per_s"] = answered * per / duration
    cell["cpu_ms_per_request"] = 1000 * cpu / answered
    cell["server_cores"] = cpu / duration
    cell["rss_mb"] = group_rss_mb(server.pid)
    return cell


def compare(
    ref: str,
    rounds: int = 3,
    duration: float = 10.0,
    warmup: float = 2.0,
    cells: list[tuple[str, int, int]] | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    cells = cells or CELLS
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", ref],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    runs: list[dict[str, Any]] = []
    with worktree(ref) as base_root, tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp)
        labels = write_images(images)
        checkouts = [Checkout(f"baseline {rev}", base_root), Checkout("current", ROOT)]
        for rnd in range(rounds):
            # Odd rounds reverse the order, so neither server always runs first.
            for co in checkouts if rnd % 2 == 0 else checkouts[::-1]:
                server = ServerProcess(cwd=co.root, defaults=True).start(images, timeout_s=120)
                try:
                    wrong = verify(server.url, images, labels)
                    print(f"[{co.name}] round {rnd + 1}: {wrong} wrong of {len(labels)}",
                          flush=True)  # fmt: skip
                    for workload, per, conc in cells:
                        cell = measure_cell(server, images, per, conc, warmup, duration)
                        cell.update(server=co.name, workload=workload, concurrency=conc,
                                    round=rnd, wrong=wrong)  # fmt: skip
                        runs.append(cell)
                        print(_line(cell), flush=True)
                finally:
                    server.stop()
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPUs",
        "baseline": rev,
        "rounds": rounds,
        "duration_s": duration,
        "runs": runs,
        "cells": fold(runs, f"baseline {rev}", "current"),
    }
    print()
    print(ratio_table(results))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        (out / f"{stamp}-baseline-{rev}.json").write_text(json.dumps(results, indent=2))
    return results


def _line(c: dict[str, Any]) -> str:
    return (
        f"[{c['server']}] {c['workload']:7} c={c['concurrency']:<3} {c['rps']:8,.0f} req/s "
        f"{c['images_per_s']:8,.0f} img/s p50 {c['p50_ms']:7.2f} ms p99 {c['p99_ms']:7.2f} ms "
        f"non-2xx {c['non2xx']} cpu/req {c['cpu_ms_per_request']:.3f} ms"
    )


_KEYS = ("rps", "images_per_s", "p50_ms", "p99_ms", "cpu_ms_per_request")


def fold(runs: list[dict[str, Any]], base: str, current: str) -> list[dict[str, Any]]:
    """Per cell: each server's medians over the rounds and current / baseline."""
    groups: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        key = (run["workload"], run["concurrency"])
        groups.setdefault(key, {}).setdefault(run["server"], []).append(run)
    cells = []
    for (workload, conc), by_server in groups.items():
        cell: dict[str, Any] = {"workload": workload, "concurrency": conc}
        for label, name in (("baseline", base), ("current", current)):
            group = by_server.get(name, [])
            if not group:
                continue
            side = {k: statistics.median(r[k] for r in group) for k in _KEYS}
            side["refused"] = sum(r["non2xx"] for r in group)
            side["requests"] = sum(r["requests"] for r in group)
            cell[label] = side
        if "baseline" in cell and "current" in cell:
            cell["ratio"] = cell["current"]["images_per_s"] / max(
                cell["baseline"]["images_per_s"], 1e-9
            )
        cells.append(cell)
    return cells


def ratio_table(results: dict[str, Any]) -> str:
    rev = results["baseline"]
    lines = [
        f"{results['date']} · {results['machine']} · {results['duration_s']:g} s per cell · "
        f"medians of {results['rounds']} interleaved rounds · defaults of both",
        "",
        f"| cell | {rev} images/s | current images/s | ratio | p50 ms ({rev} / current) "
        f"| p99 ms | refused ({rev} / current) | CPU ms/req ({rev} / current) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in results["cells"]:
        b, n = c.get("baseline"), c.get("current")
        if b is None or n is None:
            continue
        name = f"{'one image' if c['workload'] == 'single' else '64 images'}, c={c['concurrency']}"
        lines.append(
            f"| {name} | {b['images_per_s']:,.0f} | {n['images_per_s']:,.0f} | "
            f"**{c['ratio']:.2f}x** | {b['p50_ms']:.2f} / {n['p50_ms']:.2f} | "
            f"{b['p99_ms']:.1f} / {n['p99_ms']:.1f} | "
            f"{b['refused']} of {b['requests']} / {n['refused']} of {n['requests']} | "
            f"{b['cpu_ms_per_request']:.3f} / {n['cpu_ms_per_request']:.3f} |"
        )
    return "\n".join(lines)
