"""FeedbackStore on a real SQLite file and a real PostgreSQL cluster (the same SQL), the
quality figures worked out from it, and the recorder's never-blocking queue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import Settings
from service.feedback.quality import VersionQuality, snapshot_of
from service.feedback.recorder import Recorder
from service.feedback.store import NOT_A_DIGIT, FeedbackStore, PredictionRow, rows_of
from service.runtime.metrics import Metrics
from tests.support.postgres import PostgresCluster


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FeedbackStore]:
    if request.param == "sqlite":
        opened = FeedbackStore.open("", tmp_path / "sub" / "f.db", busy_timeout_s=5)
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        opened = FeedbackStore.open(cluster.url, tmp_path, busy_timeout_s=5)
        # One cluster for the module: each test starts from empty tables.
        opened._run("DELETE FROM predictions")
        opened._run("DELETE FROM feedback")
        opened._conn.commit()
    yield opened
    opened.close()


def _answers(
    request_id: str,
    role: str,
    version: str,
    at: float,
    *answers: tuple[str, str | None, float | None],
) -> list[PredictionRow]:
    """Rows for (kind, number, confidence) answers, indexed in order."""
    return rows_of(request_id, role, version, [(i, *a) for i, a in enumerate(answers)], at)


def test_store_keeps_the_first_answer_and_the_latest_truth(store: FeedbackStore) -> None:
    store.write_predictions(_answers("r1", "served", "4", 100.0, ("digit", "7", 0.9)))
    # The same request id again (a client reusing X-Request-ID): the first answer stays.
    store.write_predictions(_answers("r1", "served", "4", 101.0, ("digit", "1", 0.8)))
    served = store.served("r1", 0)
    assert served is not None
    assert (served.version, served.answer, served.created_at) == ("4", "7", 100.0)
    assert store.served("r1", 1) is None
    assert store.served("r2", 0) is None
    store.add_feedback("r1", 0, "1", 200.0)
    store.add_feedback("r1", 0, "7", 201.0)  # a correction
    store.add_feedback("r1", 0, "7", 202.0)  # and the same again
    (tally,) = store.tallies(since=0)
    assert (tally.labelled, tally.correct) == (1, 1)


def test_store_tallies_give_accuracy_rejection_and_calibration(store: FeedbackStore) -> None:
    rows = _answers(
        "a", "served", "4", 10.0,
        ("digit", "7", 0.95),  # right
        ("digit", "2", 0.75),  # wrong (a 3)
        ("not_a_digit", None, None),  # right rejection
        ("digit", "1", 0.55),  # missed rejection
        ("number", "12", 0.85),  # right number
        ("not_a_digit", None, None),  # wrong rejection (a 5)
    )  # fmt: skip
    rows += _answers("a", "shadow", "1", 10.0, ("digit", "7", 0.99), ("digit", "3", 0.99))
    rows += _answers("old", "served", "4", 1.0, ("digit", "7", 0.9))  # outside the window
    store.write_predictions(rows)
    for i, truth in enumerate(["7", "3", NOT_A_DIGIT, NOT_A_DIGIT, "12", "5"]):
        store.add_feedback("a", i, truth, 20.0)
    store.add_feedback("old", 0, "1", 20.0)
    snap = snapshot_of(store.tallies(since=5.0), store.agreements(since=5.0), 3600, 30.0)
    by_role = {q.role: q for q in snap.versions}
    served = by_role["served"]
    assert served == VersionQuality(
        version="4",
        role="served",
        labelled=6,
        accuracy=pytest.approx(3 / 6),
        rejection_precision=pytest.approx(1 / 2),
        rejection_recall=pytest.approx(1 / 2),
        # bins 9: 0.95 right; 7: 0.75 wrong; 5: 0.55 wrong; 8: 0.85 right
        ece=pytest.approx((0.05 + 0.75 + 0.55 + 0.15) / 4),
    )
    shadow = by_role["shadow"]
    assert (shadow.version, shadow.labelled, shadow.accuracy) == ("1", 2, 1.0)
    assert shadow.rejection_precision is None  # it never rejected
    (pair,) = snap.shadows
    assert (pair.version, pair.compared, pair.agreement, pair.labelled) == ("1", 2, 0.5, 2)
    # On the same two files: the served version got one right, the shadow both.
    assert (pair.served_accuracy, pair.shadow_accuracy) == (0.5, 1.0)


def test_store_prunes_by_age_then_by_size(store: FeedbackStore) -> None:
    store.write_predictions(
        [PredictionRow(f"r{t}", 0, "served", "4", "digit", "1", 0.9, float(t)) for t in range(10)]
    )
    for t in range(10):
        store.add_feedback(f"r{t}", 0, "1", float(t))
    assert store.prune(older_than=3.0, max_rows=5) == 3 + 2
    assert [t for t in range(10) if store.served(f"r{t}", 0)] == [5, 6, 7, 8, 9]
    assert store.tallies(since=0)[0].labelled == 5


def test_recorder_drops_and_counts_when_its_queue_is_full(tmp_path: Path) -> None:
    settings = Settings(
        feedback=True, feedback_path=tmp_path / "f.db", feedback_queue_requests=2
    )  # fmt: skip
    metrics = Metrics()
    recorder = Recorder(settings, metrics)  # not started: nothing drains the queue
    row = _answers("r", "served", "4", 1.0, ("digit", "7", 0.9), ("digit", "1", 0.8))
    for _ in range(3):
        recorder.record(row)
    assert metrics.feedback_answers.labels("dropped")._value.get() == 2
