"""bench: how interleaved rounds are folded into one table."""

from __future__ import annotations

from bench.run import median_cells, table


def _run(config: str, conc: int, rps: float, p99: float, errors: int = 0) -> dict:
    return {"config": config, "workload": "single", "concurrency": conc, "rps": rps,
            "images_per_s": rps, "p50_ms": 1000 / rps, "p99_ms": p99, "errors": errors,
            "requests": int(rps * 10), "wrong": 0, "rss_mb": rps / 10, "round": 0}  # fmt: skip


def test_rounds_fold_into_medians_in_first_run_order() -> None:
    runs = [
        _run("a", 1, 100, 5.0), _run("a", 64, 900, 40.0), _run("b", 1, 80, 6.0),
        _run("a", 1, 300, 9.0), _run("a", 64, 1000, 30.0, errors=2), _run("b", 1, 60, 7.0),
        _run("a", 1, 200, 7.0), _run("a", 64, 1100, 50.0), _run("b", 1, 70, 8.0),
    ]  # fmt: skip
    cells = median_cells(runs)
    assert [(c["config"], c["concurrency"]) for c in cells] == [("a", 1), ("a", 64), ("b", 1)]
    a1, a64, b1 = cells
    assert a1["rps"] == 200  # the median, not the mean or the last round
    assert a1["p99_ms"] == 7.0
    assert a1["rps_runs"] == [100, 300, 200]
    assert a64["errors"] == 2
    assert a64["requests"] == 30_000
    assert a64["rss_mb"] == 110  # the largest
    assert b1["rps"] == 70


def test_table_shows_each_round() -> None:
    cells = median_cells([_run("a", 1, 100, 5.0), _run("a", 1, 300, 9.0)])
    text = table({"date": "d", "machine": "m", "duration_s": 10, "rounds": 2, "cells": cells,
                  "inprocess_ceiling_images_per_s": 1234.0})  # fmt: skip
    assert "medians of 2 interleaved rounds" in text
    assert "| a | single | 1 | 200 | 100 / 300 |" in text


def test_protocols_table_reports_medians_and_the_ratio_to_http() -> None:
    from bench.protocols import table as protocols_table

    def cell(rps: float) -> dict[str, float]:
        return {"rps": rps, "p50_ms": 1000 / rps, "p99_ms": 2000 / rps}

    runs = {
        ("http", "single"): [cell(100), cell(300), cell(200)],
        ("grpc", "single"): [cell(400), cell(100), cell(300)],
        ("http", "batch64"): [cell(10)],
        ("grpc", "batch64"): [cell(5)],
    }
    text = protocols_table(runs, 3, 5)
    assert "| single | grpc | 300 | 300 | 3.33 | 6.67 | 1.50 |" in text
    assert "| batch64 | grpc | 5 | 320 | 200.00 | 400.00 | 0.50 |" in text
