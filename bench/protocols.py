"""gRPC against HTTP on one server, in one run: the V2 infer call over each protocol.

    python -m bench.protocols                  # 3 interleaved rounds, 5 s per cell
    python -m bench.protocols --rounds 5 --duration 10

One server (`python -m service`, access log off) serves both ports. Each cell sends the same
PNG files as a V2 `image` BYTES input, one request at a time (concurrency 1), through
tritonclient's HTTP client (binary tensor extension) or its gRPC client (raw contents):
1 image per request and 64 images per request. Cells take turns within each round, so a
drifting machine shifts both protocols alike; the table reports medians and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.run import start_server, write_images

MODEL = "mnist-cnn"
WORKLOADS = (("single", 1), ("batch64", 64))
PROTOCOLS = ("http", "grpc")


def _caller(protocol: str, server: Any, files: list[bytes]) -> Callable[[], None]:
    """A function that sends one V2 infer request with `files` and checks its answer."""
    data = np.array(files, dtype=np.object_)
    if protocol == "http":
        import tritonclient.http as client_lib

        client: Any = client_lib.InferenceServerClient(server.url.removeprefix("http://"))
        inp = client_lib.InferInput("image", [len(files)], "BYTES")
        inp.set_data_from_numpy(data, binary_data=True)
        outputs = [client_lib.InferRequestedOutput("label", binary_data=True)]
    else:
        import tritonclient.grpc as client_lib

        client = client_lib.InferenceServerClient(server.grpc_url)
        inp = client_lib.InferInput("image", [len(files)], "BYTES")
        inp.set_data_from_numpy(data)
        outputs = [client_lib.InferRequestedOutput("label")]

    def call() -> None:
        labels = client.infer(MODEL, [inp], outputs=outputs).as_numpy("label")
        assert labels.shape == (len(files),)

    return call


def measure(call: Callable[[], None], seconds: float) -> dict[str, float]:
    latencies = []
    end = time.perf_counter() + seconds
    while (now := time.perf_counter()) < end:
        call()
        latencies.append(time.perf_counter() - now)
    lat = np.array(latencies) * 1000
    return {"rps": len(latencies) / seconds, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99))}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.protocols", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--duration", type=float, default=5.0, help="seconds per cell per round")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp)
        write_images(images)
        pngs = [f.read_bytes() for f in sorted(images.glob("*.png"))][:64]
        server = start_server([], {}, images)
        try:
            callers = {
                (proto, name): _caller(proto, server, pngs[:per])
                for name, per in WORKLOADS
                for proto in PROTOCOLS
            }
            for call in callers.values():
                measure(call, args.warmup)
            for rnd in range(args.rounds):
                for key, call in callers.items():
                    cell = measure(call, args.duration)
                    runs.setdefault(key, []).append(cell)
                    print(f"round {rnd} {key[0]:4} {key[1]:7} {cell['rps']:8.0f} req/s "
                          f"p50 {cell['p50_ms']:6.2f} ms p99 {cell['p99_ms']:6.2f} ms",
                          flush=True)  # fmt: skip
        finally:
            server.stop()
    print()
    print(table(runs, args.rounds, args.duration))
    return 0


def table(runs: dict[tuple[str, str], list[dict[str, float]]], rounds: int, duration: float) -> str:
    lines = [
        f"V2 infer, PNG `image` input, concurrency 1, medians of {rounds} interleaved rounds "
        f"of {duration:g} s",
        "",
        "| workload | protocol | req/s | images/s | p50 ms | p99 ms | req/s vs HTTP |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, per in WORKLOADS:
        base = statistics.median(r["rps"] for r in runs[("http", name)])
        for proto in PROTOCOLS:
            group = runs[(proto, name)]
            rps = statistics.median(r["rps"] for r in group)
            p50 = statistics.median(r["p50_ms"] for r in group)
            p99 = statistics.median(r["p99_ms"] for r in group)
            lines.append(f"| {name} | {proto} | {rps:,.0f} | {rps * per:,.0f} | {p50:.2f} | "
                         f"{p99:.2f} | {rps / base:.2f} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
