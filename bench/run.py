"""Side-by-side serving benchmark: one command, several server settings, the same load.

    python -m bench                      # batching on vs off, all cells, ~4 minutes
    python -m bench --configs batching,no-batching,workers2 --duration 10
    python -m bench --soak 100000        # RSS at 10k and 100k requests
    python -m bench --configs workers2,workers2-no-inline --rounds 3   # interleaved, medians
    python -m bench --configs batching,no-connection-limits --cells single:1,single:64 --rounds 3

For each server configuration it starts `python -m service` on a free port, checks its
answers digit by digit, then drives it with wrk (`apt-get install wrk`): single-image
requests at concurrency 1, 8 and 64 and 64-image requests at concurrency 1 and 8. It
reports req/s, images/s, p50/p99 latency, errors and the server's RSS, plus the in-process
ceiling (decode + forward at batch 64, no HTTP).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from tests.support.server import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "wrk_post.lua"
SAMPLE = ROOT / "tests" / "data" / "mnist_test_sample.npz"

CONFIGS: dict[str, list[str]] = {
    "batching": [],
    "no-batching": ["--no-batching"],
    "workers2": ["--workers", "2"],
    "workers2-no-inline": ["--workers", "2", "--no-inline-when-idle"],
    "no-inline": ["--no-inline-when-idle"],
    "batching-1thread": ["--torch-threads", "1"],
    # uvicorn's plain httptools protocol: the baseline for service/http/protocol.py's cost.
    "no-connection-limits": ["--no-connection-limits"],
}
CELLS = [("single", 1, 1), ("single", 1, 8), ("single", 1, 64), ("batch64", 64, 1),
         ("batch64", 64, 8)]  # fmt: skip


def write_images(folder: Path) -> list[int]:
    """The 200 committed MNIST test digits as PNG files plus a manifest."""
    data = np.load(SAMPLE)
    lines, labels = [], []
    for i, (img, label) in enumerate(zip(data["images"], data["labels"], strict=True)):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        (folder / f"d{i:03d}.png").write_bytes(buf.getvalue())
        lines.append(f"d{i:03d}.png {int(label)}")
        labels.append(int(label))
    (folder / "manifest.txt").write_text("\n".join(lines) + "\n")
    return labels


def group_processes(pgid: int) -> Iterator[tuple[Path, list[str]]]:
    """Each live process of a process group: its /proc folder and its stat fields after the
    command name (field 3 of proc(5) first)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                yield stat.parent, fields
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not a process we can read


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in the server's process group."""
    total = 0
    for folder, _ in group_processes(pgid):
        try:
            status = (folder / "status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        except (OSError, AttributeError, ValueError):
            continue
    return total / 1024


def start_server(args: list[str], env: dict[str, str], log_dir: Path) -> ServerProcess:
    """`python -m service` on a free port, ready; access logs off as for every peer."""
    extra = ["--log-level", "warning", "--no-access-log", *args]
    return ServerProcess(env=env, args=extra).start(log_dir, timeout_s=120)


def verify(url: str, images: Path, labels: list[int]) -> int:
    """Wrong or failed predictions over all bench images, sent as 64-image requests."""
    wrong = 0
    names = [f"d{i:03d}.png" for i in range(len(labels))]
    with httpx.Client(base_url=url, timeout=60) as c:
        for start in range(0, len(names), 64):
            chunk = names[start : start + 64]
            files = [("files", (n, (images / n).read_bytes(), "image/png")) for n in chunk]
            r = c.post("/v1/predict", files=files)
            if r.status_code != 200:
                wrong += len(chunk)
                continue
            digits = [p["digit"] for p in r.json()["predictions"]]
            wrong += sum(d != labels[start + i] for i, d in enumerate(digits))
    return wrong


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, images: Path, per: int, conc: int, duration: float) -> dict[str, Any]:
    env = {**os.environ, "BENCH_IMAGES": str(images), "BENCH_PER_REQUEST": str(per)}
    cmd = ["wrk", "-t", str(min(conc, 4)), "-c", str(conc), "-d", f"{duration:g}s",
           "--latency", "--timeout", "30s", "-s", str(LUA), url]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)\s*$", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return {"rps": rps, "images_per_s": rps * per, "p50_ms": _ms(lat["50"]),
            "p99_ms": _ms(lat["99"]), "errors": errors, "requests": total,
            "non2xx": int(non2xx.group(1)) if non2xx else 0}  # fmt: skip


def inprocess_ceiling(images: Path, model: dict[str, str], seconds: float = 5.0) -> float:
    """Images/s for decode + preprocess + forward at batch 64, no HTTP, one process, on the
    same model the servers get (`model`: Settings overrides, e.g. model_repository)."""
    import torch

    from service.config import Settings
    from service.serving.model import Classifier
    from service.serving.repository import ModelRepository
    from service.vision.preprocess import ImageLimits, preprocess

    settings = Settings(**model)  # type: ignore[arg-type]
    folder = ModelRepository(settings).resolve()
    clf = Classifier.load(folder, torch.device("cpu"))
    files = [p.read_bytes() for p in sorted(images.glob("*.png"))][:64]
    limits = ImageLimits.from_settings(Settings())
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        pixels = np.stack([preprocess(f, limits) for f in files])
        clf.predict_pixels(pixels)
        done += len(files)
    return done / (time.perf_counter() - started)


def _probe(url: str, stop: threading.Event, outcome: dict[str, int]) -> None:
    """Kubelet-style probes: liveness and readiness every 0.5 s, 1 s timeout each."""
    with httpx.Client(base_url=url, timeout=1.0) as c:
        while not stop.is_set():
            for path in ("/v2/health/live", "/v2/health/ready"):
                try:
                    ok = c.get(path).status_code == 200
                except httpx.HTTPError:
                    ok = False
                outcome["probes"] += 1
                outcome["probe_failures"] += not ok
            stop.wait(0.5)


BASE_CLIENTS = 16


def overload(
    images: Path, env: dict[str, str], configs: list[str], duration: float, factor: int
) -> list[dict[str, Any]]:
    """Goodput of 64-image requests at `factor` times the clients that saturate the server.

    Capacity is measured at BASE_CLIENTS (where 64-image requests saturate a small server);
    the overload cell has `factor` times the clients. Goodput counts only 200 answers.
    """
    rows = []
    for name in configs:
        server = start_server(CONFIGS[name], env, images)
        try:
            run_wrk(server.url, images, 64, BASE_CLIENTS, 2.0)
            cells = {}
            for conc in (BASE_CLIENTS, BASE_CLIENTS * factor):
                outcome = {"probes": 0, "probe_failures": 0}
                stop = threading.Event()
                prober = threading.Thread(target=_probe, args=(server.url, stop, outcome))
                prober.start()
                try:
                    cell = run_wrk(server.url, images, 64, conc, duration)
                finally:
                    stop.set()
                    prober.join()
                good = cell["requests"] - cell["non2xx"]
                cell.update(outcome, good_images_per_s=good * 64 / duration, concurrency=conc)
                cells[conc] = cell
            capacity, over = cells[BASE_CLIENTS], cells[BASE_CLIENTS * factor]
            row = {
                "config": name,
                "capacity_images_per_s": capacity["good_images_per_s"],
                "overload_concurrency": BASE_CLIENTS * factor,
                "overload_good_images_per_s": over["good_images_per_s"],
                "goodput_ratio": over["good_images_per_s"] / capacity["good_images_per_s"],
                "overload_503": over["non2xx"],
                "overload_p99_ms": over["p99_ms"],
                "probe_failures": capacity["probe_failures"] + over["probe_failures"],
                "probes": capacity["probes"] + over["probes"],
                "retry_after": _retry_after_seen(server.url, images),
            }
            rows.append(row)
            print(f"[{name}] overload x{factor}: capacity {row['capacity_images_per_s']:,.0f} "
                  f"img/s, at c={row['overload_concurrency']} "
                  f"{row['overload_good_images_per_s']:,.0f} img/s good "
                  f"({row['goodput_ratio']:.0%}), {row['overload_503']} x 503, p99 "
                  f"{row['overload_p99_ms']:.0f} ms, probes failed {row['probe_failures']} of "
                  f"{row['probes']}", flush=True)  # fmt: skip
        finally:
            server.stop()
    return rows


def _retry_after_seen(url: str, images: Path) -> bool:
    """Whether a 503 under a burst carries Retry-After (True when no 503 came at all)."""
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in sorted(images.glob("*.png"))]
    with httpx.Client(base_url=url, timeout=30) as c, ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(lambda _: c.post("/v1/predict", files=files[:64]), range(256)))
    refused = [r for r in answers if r.status_code == 503]
    return all("retry-after" in r.headers for r in refused)


def soak(images: Path, target: int, env: dict[str, str]) -> dict[str, float]:
    """Server RSS after ~10% and 100% of `target` single-image requests at c=64."""
    server = start_server([], env, images)
    try:
        wrk_env = {**os.environ, "BENCH_IMAGES": str(images), "BENCH_PER_REQUEST": "1"}
        load = subprocess.Popen(
            ["wrk", "-t", "4", "-c", "64", "-d", "3600s", "-s", str(LUA), server.url],
            env=wrk_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        marks = {target // 10: 0.0, target: 0.0}
        try:
            while True:
                text = httpx.get(server.url + "/metrics").text
                pattern = r'^mnist_requests_total\{[^}]*route="/v1/predict"[^}]*\} (\S+)$'
                count = sum(float(v) for v in re.findall(pattern, text, re.M))
                for mark in marks:
                    if count >= mark and not marks[mark]:
                        marks[mark] = group_rss_mb(server.pid)
                        print(f"  {int(count):>7} requests: RSS {marks[mark]:.1f} MB", flush=True)
                if all(marks.values()):
                    break
                time.sleep(0.5)
        finally:
            load.terminate()
            load.wait()
    finally:
        server.stop()
    low, high = marks[target // 10], marks[target]
    return {
        "rss_mb_at_10pct": low,
        "rss_mb_at_100pct": high,
        "growth_pct": 100 * (high - low) / low,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--configs", default="batching,no-batching")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per cell")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=0,
                   help="repeat every config, interleaved; cells report medians "
                   "(default 1, 3 with --baseline)")  # fmt: skip
    p.add_argument("--cells", default="",
                   help="only these cells, e.g. single:1,single:64 (default: all)")  # fmt: skip
    p.add_argument("--soak", type=int, default=0, help="requests for the RSS soak (0 = skip)")
    p.add_argument("--overload", type=int, default=0, metavar="FACTOR",
                   help="overload row only: goodput at FACTOR x saturating clients")  # fmt: skip
    p.add_argument("--baseline", default="", metavar="REF",
                   help="this checkout against commit/tag REF, both with their defaults, "
                   "interleaved rounds (default 3), per-cell ratios")  # fmt: skip
    p.add_argument("--model-repository", default="", help="serve another repository")
    p.add_argument("--model-name", default="")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    from bench import baseline  # it builds on this module's cells and wrk driver

    args.rounds = args.rounds or (3 if args.baseline else 1)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    known = baseline.CELLS if args.baseline else CELLS
    cells = [c for c in known if not args.cells or f"{c[0]}:{c[2]}" in args.cells.split(",")]
    if not cells:
        p.error(f"--cells matches none of {[f'{w}:{c}' for w, _, c in known]}")
    if not shutil.which("wrk"):
        print("wrk is missing: apt-get install wrk", file=sys.stderr)
        return 2
    if args.baseline:
        baseline.compare(args.baseline, args.rounds, args.duration, args.warmup, cells, args.out)
        return 0
    model = {
        k: v
        for k, v in (("model_repository", args.model_repository), ("model_name", args.model_name))
        if v
    }
    env = {"MNIST_" + k.upper(): v for k, v in model.items()}
    results: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "duration_s": args.duration,
        "rounds": args.rounds,
        "cells": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp)
        labels = write_images(images)
        if args.overload:
            results["overload"] = overload(
                images, env, args.configs.split(","), args.duration, args.overload
            )
            args.out.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
            (args.out / f"{stamp}-overload.json").write_text(json.dumps(results, indent=2))
            return 0
        ceiling = inprocess_ceiling(images, model)
        results["inprocess_ceiling_images_per_s"] = ceiling
        print(f"in-process ceiling (decode + forward, batch 64): {ceiling:,.0f} images/s")
        rows = []
        # NOTE: rounds take turns config by config, so a machine that drifts between minutes
        # (this project's VM moves by 30-60 % between hours) shifts every config alike.
        for rnd in range(args.rounds):
            for name in args.configs.split(","):
                server = start_server(CONFIGS[name], env, images)
                try:
                    wrong = verify(server.url, images, labels)
                    print(f"[{name}] verification: {wrong} wrong of {len(labels)}", flush=True)
                    for workload, per, conc in cells:
                        run_wrk(server.url, images, per, conc, args.warmup)
                        cell = run_wrk(server.url, images, per, conc, args.duration)
                        cell.update(config=name, workload=workload, concurrency=conc, round=rnd,
                                    rss_mb=group_rss_mb(server.pid), wrong=wrong)  # fmt: skip
                        rows.append(cell)
                        print(f"[{name}] {workload:7} c={conc:<3} {cell['rps']:8,.0f} req/s "
                              f"{cell['images_per_s']:8,.0f} img/s p50 {cell['p50_ms']:7.2f} ms "
                              f"p99 {cell['p99_ms']:7.2f} ms errors {cell['errors']} "
                              f"RSS {cell['rss_mb']:.0f} MB", flush=True)  # fmt: skip
                finally:
                    server.stop()
        results["runs"] = rows
        results["cells"] = median_cells(rows)
        if args.soak:
            print(f"soak: {args.soak} single-image requests at c=64")
            results["soak"] = soak(images, args.soak, env)
    print()
    print(table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    (args.out / f"{stamp}.json").write_text(json.dumps(results, indent=2))
    return 0


def median_cells(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One cell per (config, workload, concurrency), in first-run order: medians of the
    rounds' rates and latencies, errors and requests summed, the largest RSS, and every
    round's req/s (`rps_runs`) so the spread stays visible."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["config"], run["workload"], run["concurrency"]), []).append(run)
    cells = []
    for (config, workload, conc), group in groups.items():
        cell: dict[str, Any] = {"config": config, "workload": workload, "concurrency": conc}
        for key in ("rps", "images_per_s", "p50_ms", "p99_ms"):
            cell[key] = statistics.median(r[key] for r in group)
        for key in ("errors", "requests", "wrong"):
            cell[key] = sum(r[key] for r in group)
        cell["rss_mb"] = max(r["rss_mb"] for r in group)
        cell["rps_runs"] = [r["rps"] for r in group]
        cells.append(cell)
    return cells


def table(results: dict) -> str:
    rounds = results["rounds"]
    lines = [
        f"{results['date']} · {results['machine']} · {results['duration_s']:g} s per cell"
        + (f" · medians of {rounds} interleaved rounds" if rounds > 1 else ""),
        "",
        "| config | workload | conc | req/s | req/s by round | images/s | p50 ms | p99 ms "
        "| errors | RSS MB |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for c in results["cells"]:
        by_round = " / ".join(f"{r:,.0f}" for r in c["rps_runs"])
        lines.append(
            f"| {c['config']} | {c['workload']} | {c['concurrency']} | {c['rps']:,.0f} | "
            f"{by_round} | {c['images_per_s']:,.0f} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | "
            f"{c['errors']} | {c['rss_mb']:.0f} |"
        )
    lines.append("")
    lines.append(
        f"In-process ceiling (decode + forward, batch 64): "
        f"{results['inprocess_ceiling_images_per_s']:,.0f} images/s"
    )
    if "soak" in results:
        s = results["soak"]
        lines.append(
            f"Soak: RSS {s['rss_mb_at_10pct']:.1f} MB at 10% -> {s['rss_mb_at_100pct']:.1f} MB "
            f"at 100% of the requests ({s['growth_pct']:+.1f}%)"
        )
    return "\n".join(lines)
