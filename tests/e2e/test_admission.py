"""Admission against a real server: one address with many connections is one client, and a
lone client is never refused work the worker can do in time; forwarded addresses count only
from a trusted proxy."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import png_bytes
from tests.support.server import ServerProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess().start(tmp_path_factory.mktemp("admission"))
    yield proc
    assert proc.stop() == 0, proc.log()


def _files(images, n: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"d{i}.png", png_bytes(images[i % len(images)]), "image/png"))
            for i in range(n)]  # fmt: skip


def test_one_address_with_64_connections_of_64_images_is_answered_in_full(
    server: ServerProcess, mnist_sample
) -> None:
    # 64 x 64 = 4,096 images at once from one address: about a second of work for one
    # worker, far inside the 10 s deadline. The old per-client cap (half a 4,096-image
    # queue) refused most of them while the model had room.
    images, labels = mnist_sample
    files = _files(images, 64)

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as c:
            return await asyncio.gather(*(c.post("/v1/predict", files=files) for _ in range(64)))

    for _ in range(2):  # the second burst meets measured costs, not the first guess
        answers = asyncio.run(burst())
        statuses = [r.status_code for r in answers]
        assert statuses == [200] * 64, {s: statuses.count(s) for s in set(statuses)}
    digits = [p["digit"] for p in answers[0].json()["predictions"]]
    assert sum(d == int(y) for d, y in zip(digits, labels[:64], strict=True)) >= 60


def test_a_refusal_past_the_hard_bound_carries_retry_after(tmp_path: Path, mnist_sample) -> None:
    images, _ = mnist_sample
    proc = ServerProcess(env={"MNIST_MAX_QUEUE_SIZE": "64", "MNIST_MAX_BATCH_SIZE": "8"})
    proc.start(tmp_path)
    try:
        files = _files(images, 64)

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=proc.url, timeout=30) as c:
                return await asyncio.gather(
                    *(c.post("/v1/predict", files=files) for _ in range(16))
                )

        answers = asyncio.run(burst())
        refused = [r for r in answers if r.status_code == 503]
        assert any(r.status_code == 200 for r in answers)
        assert refused, "16 x 64 images cannot all fit a 64-image bound"
        for r in refused:
            assert r.json()["code"] == "overloaded"
            assert 1 <= int(r.headers["retry-after"]) <= 30
    finally:
        assert proc.stop() == 0, proc.log()


@pytest.mark.parametrize("trusted", [False, True])
def test_forwarded_for_is_the_client_only_from_a_trusted_proxy(
    tmp_path: Path, mnist_sample, trusted: bool
) -> None:
    images, _ = mnist_sample
    env = {"MNIST_FORWARDED_ALLOW_IPS": "127.0.0.1"} if trusted else {}
    proc = ServerProcess(env=env).start(tmp_path)
    try:
        r = httpx.post(
            proc.url + "/v1/predict",
            files=_files(images, 1),
            headers={"x-forwarded-for": "203.0.113.9"},
        )
        assert r.status_code == 200, r.text
        line = proc.wait_for_log('"POST /v1/predict" 200')
    finally:
        assert proc.stop() == 0, proc.log()
    access = next(ln for ln in line.splitlines() if '"POST /v1/predict" 200' in ln)
    assert ("203.0.113.9" in access) is trusted, access
