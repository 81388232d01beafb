"""`python -m evaluation` against a real server, on a small development set built here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.server import ROOT, ServerProcess
from tests.training.conftest import SAMPLE, write_realdev


def test_evaluation_command_reports_every_part_through_http(
    server: ServerProcess, tmp_path: Path
) -> None:
    dev = write_realdev(tmp_path / "dev")
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "evaluation", "--url", server.url, "--real-dev", str(dev),
         "--sample", str(SAMPLE), "--generated-count", "8", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    everything = result["real_dev"]["all"]
    counted = sum(t["total"] for t in everything["by_kind"].values())
    assert counted == 40  # every digit of the set, each answered once
    assert set(everything["by_kind"]) == {"photo", "usps"}
    # Pen-on-paper MNIST digits: the served model reads nearly all of them.
    assert everything["by_kind"]["photo"]["rate"] >= 0.9
    assert everything["nondigit_rejection"]["total"] == 9
    assert everything["numbers_exact"]["total"] == 1
    assert 0 <= everything["baseline_real_digits"]["rate"] <= 1
    val = result["real_dev"]["validation"]
    assert 0 < val["real_digits"]["total"] < everything["real_digits"]["total"]
    assert result["mnist_test"]["total"] == 200
    assert result["mnist_test"]["rate"] >= 0.98
    assert set(result["generated_uploads"]) >= {"scan", "photo", "canvas"}
    assert all(t["total"] == 8 for t in result["generated_uploads"].values())
    assert "| digits: photo |" in proc.stdout
    assert "naive resize" in proc.stdout
