"""Feedback and live accuracy end to end: real servers of two workers, the real client, a
real SQLite file across a restart, and a real PostgreSQL cluster shared by two servers."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from mnist_client import NOT_A_DIGIT, Client, ClientError, Prediction, PredictResult
from tests.conftest import png_bytes
from tests.e2e.test_ops import metric
from tests.support.postgres import PostgresCluster
from tests.support.server import ROOT, ServerProcess

EXAMPLES = ROOT / "examples"
KEY = "labelling-ui-key"
#: Fast enough that a test waits a moment for the figures, not the 15 s default.
REFRESH = {"MNIST_FEEDBACK_REFRESH_S": "0.2"}


def _blank() -> bytes:
    return png_bytes(np.full((64, 64), 255, dtype=np.uint8))


def _scrape(url: str) -> str:
    # A new connection each time: with two workers, either may answer.
    with httpx.Client(timeout=10) as http:
        return http.get(url + "/metrics").text


def _wait_metric(url: str, name: str, labels: str, expected: float, timeout_s: float = 15) -> str:
    """The /metrics text once `name{labels}` reads `expected` (the figures are refreshed
    from the store a moment after the feedback)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = _scrape(url)
        if metric(text, name, labels) == pytest.approx(expected):
            return text
        if time.monotonic() > deadline:
            found = [line for line in text.splitlines() if line.startswith("mnist_feedback")]
            raise AssertionError(f"{name}{labels} never read {expected}: {found}")
        time.sleep(0.1)


def _give(url: str, request_id: str, truth: int | str, index: int) -> httpx.Response:
    # A new connection per call, so that feedback reaches whichever worker accepts it.
    with httpx.Client(timeout=10) as http:
        return http.post(
            url + "/v1/feedback",
            json={"request_id": request_id, "index": index, "truth": truth},
            headers={"X-API-Key": KEY},
        )


def _expected(answers: list[str], truths: list[str]) -> dict[str, float]:
    """Accuracy and rejection figures worked out from the answers the server gave."""
    right = sum(a == t for a, t in zip(answers, truths, strict=True))
    rejected = [t for a, t in zip(answers, truths, strict=True) if a == NOT_A_DIGIT]
    not_digits = [a for a, t in zip(answers, truths, strict=True) if t == NOT_A_DIGIT]
    return {
        "accuracy": right / len(truths),
        "precision": sum(t == NOT_A_DIGIT for t in rejected) / len(rejected),
        "recall": sum(a == NOT_A_DIGIT for a in not_digits) / len(not_digits),
    }


def _answer(p: Prediction) -> str:
    """The answer as the store keeps it: the digits, or "not_a_digit"."""
    return str(p.number) if p.kind in ("digit", "number") else NOT_A_DIGIT


SERVED = '{role="served",version="4"}'


def test_feedback_sqlite_shared_by_workers_and_kept_across_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "store" / "feedback.db"
    env = {
        "MNIST_WORKERS": "2", "MNIST_FEEDBACK": "true", "MNIST_FEEDBACK_PATH": str(db),
        "MNIST_API_KEYS": KEY, **REFRESH,
    }  # fmt: skip
    server = ServerProcess(env=env).start(tmp_path)
    try:
        with Client(server.url, api_key=KEY) as client:
            first = client.predict(
                EXAMPLES / "seven.png", EXAMPLES / "two.jpg", _blank(), EXAMPLES / "seven.png"
            )
        assert first.request_id, first
        assert first.model.version == "4", first
        assert [p.index for p in first] == [0, 1, 2, 3]
        assert first[2].kind == "not_a_digit", "a blank page must be answered not a digit"
        # The truths a labelling UI sends: right, wrong, a right rejection, a missed one.
        truths = [7, 3, NOT_A_DIGIT, NOT_A_DIGIT]
        for index, truth in enumerate(truths):
            with Client(server.url, api_key=KEY) as labeller:  # a connection each
                kept = labeller.feedback(first.request_id, truth, index=index)
            assert (kept.index, kept.truth, kept.version) == (index, str(truth), "4")
            assert kept.answer == _answer(first[index])
            assert kept.correct is (kept.answer == str(truth))
        expected = _expected([_answer(p) for p in first], [str(t) for t in truths])

        text = _wait_metric(server.url, "mnist_feedback_labelled", SERVED, 4)
        assert metric(text, "mnist_feedback_accuracy", SERVED) == pytest.approx(
            expected["accuracy"]
        )
        assert metric(text, "mnist_feedback_rejection_precision", SERVED) == pytest.approx(
            expected["precision"]
        )
        assert metric(text, "mnist_feedback_rejection_recall", SERVED) == pytest.approx(
            expected["recall"]
        )
        assert 0 < metric(text, "mnist_feedback_calibration_error", SERVED) <= 1
        # Whichever worker answers the scrape reads the same store.
        for _ in range(6):
            assert metric(_scrape(server.url), "mnist_feedback_labelled", SERVED) == 4

        # The same truth again changes nothing; a correction replaces it.
        assert _give(server.url, first.request_id, 7, 0).status_code == 200
        assert _give(server.url, first.request_id, 2, 1).json()["correct"] is (
            _answer(first[1]) == "2"
        )
        truths[1] = 2
        fixed = _expected([_answer(p) for p in first], [str(t) for t in truths])
        _wait_metric(server.url, "mnist_feedback_accuracy", SERVED, fixed["accuracy"])
        assert metric(_scrape(server.url), "mnist_feedback_labelled", SERVED) == 4

        # Refusals: no key, unknown id, index out of range, a truth that is not one.
        with httpx.Client(timeout=10) as http:
            r = http.post(
                server.url + "/v1/feedback",
                json={"request_id": first.request_id, "truth": 7},
            )
        assert (r.status_code, r.json()["code"]) == (401, "unauthorized")
        r = _give(server.url, "no-such-request", 7, 0)
        assert (r.status_code, r.json()["code"]) == (404, "prediction_not_found")
        assert _give(server.url, first.request_id, 7, 9).status_code == 404
        for bad in (12, "seven", True, None, "1 2"):
            r = _give(server.url, first.request_id, bad, 0)  # type: ignore[arg-type]
            assert (r.status_code, r.json()["code"]) == (400, "invalid_input"), bad
        with pytest.raises(ClientError) as err, Client(server.url, api_key=KEY) as c:
            c.feedback("no-such-request", 1)
        assert (err.value.status, err.value.code) == (404, "prediction_not_found")
    finally:
        assert server.stop() == 0, server.log()

    # A new server on the same file: the figures and the answers are still there.
    again = ServerProcess(env=env).start(tmp_path)
    try:
        _wait_metric(again.url, "mnist_feedback_labelled", SERVED, 4)
        r = _give(again.url, first.request_id, 7, 3)  # the last seven is a seven after all
        assert r.status_code == 200, r.text
        truths[3] = 7
        restored = _expected([_answer(p) for p in first], [str(t) for t in truths])
        _wait_metric(again.url, "mnist_feedback_accuracy", SERVED, restored["accuracy"])
    finally:
        assert again.stop() == 0, again.log()


def test_answers_carry_their_request_id_and_feedback_off_is_404(tmp_path: Path) -> None:
    server = ServerProcess(env={"MNIST_WORKERS": "2"}).start(tmp_path)
    try:
        with httpx.Client(timeout=10) as http:
            files = [("files", ("seven.png", (EXAMPLES / "seven.png").read_bytes()))]
            r = http.post(server.url + "/v1/predict", files=files)
            assert r.json()["request_id"] == r.headers["x-request-id"]
            r = http.post(
                server.url + "/v1/predict", files=files, headers={"X-Request-ID": "form-17"}
            )
            assert r.json()["request_id"] == "form-17"
            r = http.post(server.url + "/v1/feedback", json={"request_id": "form-17", "truth": 7})
        assert (r.status_code, r.json()["code"]) == (404, "feedback_off")
    finally:
        assert server.stop() == 0, server.log()


def test_feedback_on_an_answer_older_than_the_retention_is_404(tmp_path: Path) -> None:
    hours = "0.0003"  # about a second
    env = {
        "MNIST_FEEDBACK": "true", "MNIST_FEEDBACK_PATH": str(tmp_path / "f.db"),
        "MNIST_FEEDBACK_RETENTION_H": hours, "MNIST_FEEDBACK_WINDOW_H": hours,
        "MNIST_API_KEYS": KEY,
    }  # fmt: skip
    server = ServerProcess(env=env).start(tmp_path)
    try:
        with Client(server.url, api_key=KEY) as client:
            answer = client.predict(EXAMPLES / "seven.png")
            assert answer.request_id is not None
            assert client.feedback(answer.request_id, 7).correct is True
            time.sleep(1.5)  # past the retention: the answer has expired
            with pytest.raises(ClientError) as err:
                client.feedback(answer.request_id, 7)
        assert (err.value.status, err.value.code) == (404, "prediction_not_found")
    finally:
        assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


def test_feedback_postgres_shared_by_two_servers(tmp_path: Path, postgres: PostgresCluster) -> None:
    env = {
        "MNIST_WORKERS": "2", "MNIST_FEEDBACK": "true", "MNIST_FEEDBACK_URL": postgres.url,
        "MNIST_API_KEYS": KEY, **REFRESH,
    }  # fmt: skip
    a = ServerProcess(env=env).start(tmp_path)
    b = ServerProcess(env=env).start(tmp_path)
    try:
        with Client(a.url, api_key=KEY) as client:
            answered = client.predict(EXAMPLES / "seven.png", _blank())
        assert answered.request_id is not None
        # The labelling UI reaches the other replica: it finds the answer all the same.
        with Client(b.url, api_key=KEY) as other:
            assert other.feedback(answered.request_id, 7).answer == _answer(answered[0])
            assert other.feedback(answered.request_id, NOT_A_DIGIT, index=1).correct is True
        for server in (a, b):
            text = _wait_metric(server.url, "mnist_feedback_labelled", SERVED, 2)
            expected = _expected([_answer(p) for p in answered], ["7", NOT_A_DIGIT])
            assert metric(text, "mnist_feedback_accuracy", SERVED) == pytest.approx(
                expected["accuracy"]
            )
            assert metric(text, "mnist_feedback_rejection_recall", SERVED) == 1
    finally:
        assert a.stop() == 0, a.log()
        assert b.stop() == 0, b.log()


def _shadow_turns(url: str) -> float:
    """Sampled requests the shadow has run, shed or failed so far (all workers)."""
    found = re.findall(r"^mnist_shadow_requests_total\{[^}]*\} (\S+)$", _scrape(url), re.M)
    return sum(float(v) for v in found)


def _predict_each(url: str, images: list[bytes]) -> list[PredictResult]:
    """One request after another, each sent once the shadow has had its turn at the one
    before (its forward runs after the answer: a fast server answers the next request
    before it is done, and the shadow sheds it)."""
    results = []
    with Client(url, api_key=KEY) as client:
        for n, image in enumerate(images, 1):
            results.append(client.predict(image))
            deadline = time.monotonic() + 10
            while _shadow_turns(url) < n:
                assert time.monotonic() < deadline, "the shadow never took its turn"
                time.sleep(0.02)
    return results


def test_shadow_version_is_compared_never_returned(
    tmp_path: Path, mnist_sample: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = mnist_sample
    env = {
        "MNIST_WORKERS": "2", "MNIST_FEEDBACK": "true",
        "MNIST_FEEDBACK_PATH": str(tmp_path / "f.db"), "MNIST_API_KEYS": KEY,
        "MNIST_SHADOW_VERSION": "1", "MNIST_SHADOW_RATE": "1", "MNIST_ADMIN_KEY": "admin",
        **REFRESH,
    }  # fmt: skip
    server = ServerProcess(env=env).start(tmp_path)
    admin = {"X-API-Key": "admin"}
    try:
        pngs = [png_bytes(images[i]) for i in range(12)]
        results = _predict_each(server.url, pngs)
        # Only the served version ever answers.
        assert {r.model.version for r in results} == {"4"}
        with Client(server.url, api_key=KEY) as labeller:
            for r, label in zip(results, labels[:12], strict=True):
                assert r.request_id is not None
                labeller.feedback(r.request_id, int(label))

        deadline = time.monotonic() + 15
        while True:
            with httpx.Client(timeout=10) as http:
                report = http.get(server.url + "/admin/shadow", headers=admin).json()
            runs = metric(_scrape(server.url), "mnist_shadow_requests_total", '{outcome="run"}')
            labelled = {v["version"]: v["labelled"] for v in report["versions"]}
            if runs and report["compared"] == runs and labelled.get("1") == runs:
                break
            assert time.monotonic() < deadline, (report, runs)
            time.sleep(0.1)
        assert (report["served"], report["shadow"], report["rate"]) == ("4", "1", 1.0)
        # Sequential requests leave the queue idle after each answer: most are compared.
        assert report["compared"] >= 6, report
        assert report["agreement"] > 0.5, report  # two models of the same digits
        assert labelled["4"] == 12, report
        # Every compared file was labelled: both versions' accuracy on the same files.
        assert report["labelled"] == report["compared"], report
        assert 0 <= report["shadow_accuracy"] <= 1, report
        assert report["served_accuracy"] >= 0.9, report  # MNIST digits, the served model
        # /metrics shows each worker's last refresh from the store: within a refresh period
        # of the report, whichever worker answers the scrape.
        deadline = time.monotonic() + 15
        while True:
            shown = metric(_scrape(server.url), "mnist_shadow_agreement", '{version="1"}')
            if shown == pytest.approx(report["agreement"], abs=0.2):
                break
            assert time.monotonic() < deadline, (shown, report)
            time.sleep(0.2)
        # Under load the shadow is shed first: concurrent requests keep the queue busy.
        from concurrent.futures import ThreadPoolExecutor

        # 12-image requests from 32 clients: each answer is sent while others' images are
        # still queued for the model, however fast the machine.
        files = [("files", (f"{i}.png", png, "image/png")) for i, png in enumerate(pngs)]

        def burst(_: int) -> tuple[int, str]:
            with httpx.Client(timeout=60) as http:
                answer = http.post(
                    server.url + "/v1/predict", files=files, headers={"X-API-Key": KEY}
                )
                return answer.status_code, answer.text[:200]

        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(burst, range(128)))
        assert {status for status, _ in answers} == {200}, [a for a in answers if a[0] != 200]
        shed = metric(_scrape(server.url), "mnist_shadow_requests_total", '{outcome="shed"}')
        assert shed > 0
        with httpx.Client(timeout=10) as http:
            assert http.get(server.url + "/admin/shadow").status_code == 401
    finally:
        assert server.stop() == 0, server.log()
