"""Our client and the `mnist-serving` CLI against a real server, on image files the tests
write themselves."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_client import AsyncClient, Client, ClientError
from tests.conftest import client_env, png_bytes
from tests.support.server import ROOT, ServerProcess

KEY = "client-key"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(env={"MNIST_API_KEYS": KEY, "MNIST_GRPC_PORT": "0"})
    proc.start(tmp_path_factory.mktemp("client"))
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory, mnist_sample) -> tuple[list[Path], list[int]]:
    images, labels = mnist_sample
    folder = tmp_path_factory.mktemp("digits")
    paths = []
    for i in range(5):
        path = folder / f"digit{i}.png"
        path.write_bytes(png_bytes(images[i]))
        paths.append(path)
    return paths, [int(v) for v in labels[:5]]


@pytest.fixture(scope="module")
def number_and_blank(
    tmp_path_factory: pytest.TempPathFactory, mnist_sample
) -> tuple[Path, Path, str]:
    """Three MNIST glyphs side by side, dark ink on white paper (one number), and a blank
    white page; with the number they should read as."""
    images, labels = mnist_sample
    folder = tmp_path_factory.mktemp("pages")
    paper = np.full((140, 40 + 3 * 104), 255, np.uint8)
    for i in range(3):
        glyph = 255 - np.asarray(Image.fromarray(images[i]).resize((84, 84), Image.BICUBIC))
        x = 20 + i * 104
        paper[28:112, x : x + 84] = np.minimum(paper[28:112, x : x + 84], glyph)
    row, blank = folder / "row.png", folder / "blank.png"
    row.write_bytes(png_bytes(paper))
    blank.write_bytes(png_bytes(np.full((140, 200), 255, np.uint8)))
    return row, blank, "".join(str(int(v)) for v in labels[:3])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=ROOT, env=client_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_client_predicts_paths_bytes_pil_and_arrays(keyed, digits, mnist_sample) -> None:
    paths, labels = digits
    images, _ = mnist_sample
    with Client(keyed.url, api_key=KEY) as client:
        result = client.predict(*paths, top_k=3)
        assert result.digits == labels
        assert result.model.name == "mnist-cnn"
        assert [p.filename for p in result] == [p.name for p in paths]
        assert all(p.top_k is not None and len(p.top_k) == 3 for p in result)
        mixed = client.predict(
            paths[0].read_bytes(), Image.open(paths[1]), images[2], images[3:5] / 255.0
        )
        assert mixed.digits == labels


async def test_async_client_predicts(keyed, digits) -> None:
    paths, labels = digits
    async with AsyncClient(keyed.url, api_key=KEY) as client:
        result = await client.predict(*paths)
    assert result.digits == labels


def test_client_errors_keep_code_status_and_details(keyed, digits) -> None:
    paths, _ = digits
    with Client(keyed.url) as client, pytest.raises(ClientError) as exc:
        client.predict(paths[0])
    assert (exc.value.status, exc.value.code) == (401, "unauthorized")
    with Client(keyed.url, api_key=KEY) as client:
        read, bad = client.predict(paths[0], b"not an image")
    assert (read.kind, bad.kind, bad.code) == ("digit", "error", "unsupported_media_type")
    assert str(bad.error).startswith("not a supported image file")
    with Client("http://127.0.0.1:9", retries=0) as client, pytest.raises(ClientError) as exc:
        client.predict(paths[0])
    assert exc.value.code == "connection_error"


def test_cli_predict_prints_a_table_and_json(keyed, digits) -> None:
    paths, labels = digits
    run = _cli("predict", *map(str, paths), "--url", keyed.url, "--api-key", KEY, "--top-k", "2")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["FILE", "KIND", "ANSWER", "CONFIDENCE", "TOP-K"]
    assert [line.split()[1] for line in lines[1:]] == ["digit"] * len(labels)
    assert [int(line.split()[2]) for line in lines[1:]] == labels
    run = _cli("predict", str(paths[0]), "--url", keyed.url, "--api-key", KEY, "--json")
    assert run.returncode == 0, run.stderr
    body = json.loads(run.stdout)
    assert body["predictions"][0]["digit"] == labels[0]
    assert body["predictions"][0]["kind"] == "digit"
    assert body["predictions"][0]["file"] == str(paths[0])


def test_client_reads_a_number_and_a_blank_page(keyed, number_and_blank) -> None:
    row, blank, number = number_and_blank
    with Client(keyed.url, api_key=KEY) as client:
        result = client.predict(row, blank)
        one = client.predict(row, one_digit=True)[0]
    read, empty = result
    assert (read.kind, read.digit, read.number) == ("number", None, number)
    assert [d.digit for d in read.digits] == [int(c) for c in number]
    lefts = [d.box[0] for d in read.digits]
    assert lefts == sorted(lefts)
    assert read.confidence is not None
    assert 0 < read.confidence <= min(d.confidence for d in read.digits)
    assert (empty.kind, empty.digit, empty.confidence, empty.digits) == (
        "not_a_digit",
        None,
        None,
        (),
    )
    assert empty.reason
    assert result.digits == [None, None]
    assert one.kind == "digit"
    assert len(one.digits) == 1


async def test_async_client_reads_a_number_and_one_digit(keyed, number_and_blank) -> None:
    row, blank, number = number_and_blank
    async with AsyncClient(keyed.url, api_key=KEY) as client:
        result = await client.predict(row, blank)
        one = await client.predict(row, one_digit=True)
    assert [p.kind for p in result] == ["number", "not_a_digit"]
    assert result[0].number == number
    assert one[0].kind == "digit"


def test_cli_predict_prints_numbers_and_not_a_digit(keyed, number_and_blank) -> None:
    row, blank, number = number_and_blank
    files = (str(row), str(blank))
    run = _cli("predict", *files, "--url", keyed.url, "--api-key", KEY)
    assert run.returncode == 0, run.stderr
    header, row_line, blank_line = run.stdout.splitlines()
    assert header.split() == ["FILE", "KIND", "ANSWER", "CONFIDENCE"]
    assert row_line.split()[:3] == [str(row), "number", number]
    assert blank_line.split()[:5] == [str(blank), "not_a_digit", "not", "a", "digit:"]
    assert blank_line.rstrip().endswith("-")
    run = _cli("predict", *files, "--url", keyed.url, "--api-key", KEY, "--json")
    assert run.returncode == 0, run.stderr
    read, empty = json.loads(run.stdout)["predictions"]
    assert (read["kind"], read["digit"], read["number"]) == ("number", None, number)
    assert [d["digit"] for d in read["digits"]] == [int(c) for c in number]
    assert all(len(d["box"]) == 4 for d in read["digits"])
    assert read["reason"] is None
    assert (empty["kind"], empty["digit"], empty["confidence"]) == ("not_a_digit", None, None)
    assert empty["reason"]
    assert empty["digits"] == []
    run = _cli("predict", str(row), "--url", keyed.url, "--api-key", KEY, "--json", "--one-digit")
    assert run.returncode == 0, run.stderr
    (one,) = json.loads(run.stdout)["predictions"]
    assert one["kind"] == "digit"
    assert isinstance(one["digit"], int)


def test_cli_predict_exits_non_zero_on_errors(keyed, digits, tmp_path: Path) -> None:
    paths, _ = digits
    run = _cli("predict", str(paths[0]), "--url", keyed.url)
    assert run.returncode == 2  # the server refused every request: nothing was read
    assert run.stderr.startswith("error: missing API key")
    assert run.stderr.rstrip().endswith("(unauthorized)")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    run = _cli("predict", str(paths[0]), str(bad), "--url", keyed.url, "--api-key", KEY,
               "--json")  # fmt: skip
    assert run.returncode == 1
    good_json, bad_json = json.loads(run.stdout)["predictions"]
    assert good_json["kind"] == "digit"
    assert (bad_json["file"], bad_json["kind"]) == (str(bad), "error")
    assert bad_json["code"] == "unsupported_media_type"


def test_cli_version_and_serve_is_python_m_service() -> None:
    run = _cli("--version")
    assert run.returncode == 0
    assert run.stdout.startswith("mnist-serving ")
    serve = _cli("serve", "--help")
    direct = subprocess.run(
        [sys.executable, "-m", "service", "--help"], cwd=ROOT, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert serve.returncode == direct.returncode == 0
    assert serve.stdout == direct.stdout
    train = _cli("train", "--help")
    assert train.returncode == 0
    assert "--epochs" in train.stdout


def test_client_sends_arrays_as_images(keyed, mnist_sample) -> None:
    images, labels = mnist_sample
    with Client(keyed.url, api_key=KEY) as client:
        result = client.predict(np.asarray(images[10:14], dtype=np.uint8))
    assert result.digits == [int(v) for v in labels[10:14]]
