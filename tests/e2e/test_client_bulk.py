"""Folders in, results out: `mnist-serving predict` and `Client.predict_many` over a
thousand real files, bad ones included, against a real server with a small file limit so
that the files go in many requests."""

from __future__ import annotations

import csv
import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mnist_client import Client, ClientError
from tests.conftest import client_env, png_bytes
from tests.support.server import ROOT, ServerProcess

MAX_FILES = 16
COUNT = 1000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(env={"MNIST_MAX_FILES": str(MAX_FILES), "MNIST_GRPC_PORT": "0"})
    proc.start(tmp_path_factory.mktemp("bulk"))
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, mnist_sample) -> tuple[Path, dict[str, int]]:
    """COUNT files in a folder and a subfolder: digits, plus two that cannot be read and a
    text file that a folder does not contribute."""
    images, labels = mnist_sample
    root = tmp_path_factory.mktemp("folder")
    (root / "sub").mkdir()
    expected: dict[str, int] = {}
    for i in range(COUNT - 2):
        path = root / ("sub" if i % 3 == 0 else ".") / f"d{i:04d}.png"
        path.write_bytes(png_bytes(images[i % len(images)]))
        expected[str(path.resolve())] = int(labels[i % len(images)])
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (root / "sub" / "empty.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    return root, expected


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "predict", *args],
        cwd=ROOT, env=client_env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_cli_folder_to_csv_has_a_row_per_file_and_exits_1(server, folder, tmp_path) -> None:
    root, expected = folder
    out = tmp_path / "results.csv"
    run = _cli(str(root), "--recursive", "--format", "csv", "--output", str(out),
               "--url", server.url)  # fmt: skip
    assert run.returncode == 1, run.stderr
    rows = list(csv.DictReader(out.open(newline="")))
    assert len(rows) == COUNT
    by_file = {str(Path(r["file"]).resolve()): r for r in rows}
    failed = {Path(f).name: r for f, r in by_file.items() if r["kind"] == "error"}
    assert set(failed) == {"broken.png", "empty.jpg"}
    assert {r["code"] for r in failed.values()} == {"invalid_image"}
    read = {f: int(r["digit"]) for f, r in by_file.items() if r["kind"] == "digit"}
    right = sum(read.get(f) == d for f, d in expected.items())
    assert right >= 0.97 * len(expected), right
    # Piped: no progress bar, only the summary.
    assert run.stderr.splitlines() == [f"{COUNT} files: {COUNT - 2} read ({COUNT - 2} digit), "
                                       "2 failed"]  # fmt: skip


def test_cli_without_recursive_takes_the_folder_itself_and_streams_jsonl(server, folder) -> None:
    root, _ = folder
    run = _cli(str(root), "--format", "jsonl", "--glob", "d00*.png", "--url", server.url)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    names = sorted(p.name for p in root.glob("d00*.png"))
    assert [Path(line.split('"file": "')[1].split('"')[0]).name for line in lines] == names


def test_cli_shows_a_progress_bar_on_a_terminal(server, folder) -> None:
    root, _ = folder
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "predict", str(root / "sub"), "--format", "csv",
         "--url", server.url],
        cwd=ROOT, env=client_env(), stdout=subprocess.PIPE, stderr=slave, text=True,
    )  # fmt: skip
    os.close(slave)
    seen: list[bytes] = []

    def drain() -> None:  # as a terminal would, while the command runs
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            seen.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    stdout, _ = proc.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(master)
    assert proc.returncode == 1  # sub/ holds empty.jpg
    text = b"".join(seen).decode(errors="replace")
    total = len(list((root / "sub").glob("*.*")))
    assert f"{total}/{total}" in text
    assert "file/s" in text
    assert len(list(csv.reader(io.StringIO(stdout)))) == total + 1


def test_cli_exit_2_for_usage_and_for_no_server(folder) -> None:
    root, _ = folder
    # A missing file is that file's error (1); a folder with nothing in it, usage (2).
    assert _cli(str(root / "nothing-here"), "--url", "http://127.0.0.1:9").returncode == 2
    run = _cli(str(root / "broken.png"), "--url", "http://127.0.0.1:9", "--retries", "0")
    assert run.returncode == 2
    assert "connection_error" in run.stderr
    assert _cli("--format", "xml", str(root)).returncode == 2


def test_predict_many_yields_every_file_in_order(server, folder) -> None:
    root, expected = folder
    paths = sorted(expected)[:100] + [str(root / "missing.png"), str(root / "broken.png")]
    with Client(server.url) as client:
        results = list(client.predict_many(paths, concurrency=3))
    assert [r.path for r in results] == paths
    assert [r.prediction.index for r in results] == list(range(len(paths)))
    assert [r.prediction.digit for r in results[:100]] == [expected[p] for p in paths[:100]]
    missing, broken = (r.prediction for r in results[100:])
    assert (missing.kind, missing.code) == ("error", "unreadable")
    assert (broken.kind, broken.code) == ("error", "invalid_image")
    with Client(server.url, api_key="x") as client:
        assert len(list(client.predict_many([root / "sub"]))) == COUNT // 3 + 1
    with Client("http://127.0.0.1:9", retries=0) as client, pytest.raises(ClientError):
        list(client.predict_many(paths))
