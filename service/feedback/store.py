"""FeedbackStore: predictions and their ground truth in SQLite (one server) or PostgreSQL
(several replicas), with the few queries the recorder, the feedback route and the
quality metrics need.

Both backends run the same SQL (written with `?` placeholders; PostgreSQL's driver takes
`%s`). Every method opens no connection of its own: a store object is used by one thread
at a time (the recorder's writer has one, the request side another, behind a lock).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

#: The answer and the truth of "not a digit", as stored (the kind's name in /v1 answers).
NOT_A_DIGIT = "not_a_digit"
#: Confidence bins of the calibration error (ECE), as in Guo et al. 2017: ten equal widths.
CONFIDENCE_BINS = 10

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS predictions (
        request_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        role TEXT NOT NULL,
        version TEXT NOT NULL,
        kind TEXT NOT NULL,
        answer TEXT NOT NULL,
        confidence DOUBLE PRECISION,
        conf_bin INTEGER,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (request_id, idx, role))""",
    "CREATE INDEX IF NOT EXISTS predictions_created ON predictions (created_at)",
    """CREATE TABLE IF NOT EXISTS feedback (
        request_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        truth TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (request_id, idx))""",
    "CREATE INDEX IF NOT EXISTS feedback_created ON feedback (created_at)",
)


@dataclass(frozen=True)
class PredictionRow:
    """One answer as stored: `role` is "served" (what the client got) or "shadow"."""

    request_id: str
    idx: int
    role: str
    version: str
    kind: str
    answer: str
    confidence: float | None
    created_at: float

    def values(self) -> tuple[Any, ...]:
        conf_bin = (
            None
            if self.confidence is None
            else min(int(self.confidence * CONFIDENCE_BINS), CONFIDENCE_BINS - 1)
        )
        return (self.request_id, self.idx, self.role, self.version, self.kind, self.answer,
                self.confidence, conf_bin, self.created_at)  # fmt: skip


@dataclass(frozen=True)
class Served:
    """The served answer a feedback refers to."""

    version: str
    answer: str
    created_at: float


@dataclass(frozen=True)
class Tally:
    """Labelled answers of one (version, role) in the window, as the quality metrics need."""

    version: str
    role: str
    labelled: int
    correct: int
    rejected_right: int  # answered "not a digit" and truly not a digit
    rejected: int  # answered "not a digit"
    not_digits: int  # truly not a digit
    # Per confidence bin: (answers, right answers, sum of their confidences)
    bins: dict[int, tuple[int, int, float]]


@dataclass(frozen=True)
class Agreement:
    """Shadow answers of one version compared with the served answers of the same files,
    and, of those with feedback, how many each got right (accuracy on the same files)."""

    version: str
    compared: int
    agreed: int
    labelled: int
    served_right: int
    shadow_right: int


class _Connection(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...
    def commit(self) -> None: ...
    def close(self) -> None: ...


class FeedbackStore:
    """The predictions and feedback tables over one DB-API connection."""

    placeholder = "?"

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn

    # ---------------------------------------------------------------- opening

    @staticmethod
    def open(url: str, path: Path, busy_timeout_s: float) -> FeedbackStore:
        """PostgreSQL when `url` is set, else the SQLite file at `path` (created)."""
        store = (
            PostgresStore.connect(url, busy_timeout_s)
            if url
            else SqliteStore.connect(path, busy_timeout_s)
        )
        store.create_schema()
        return store

    def close(self) -> None:
        self._conn.close()

    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(self._sql(sql), params)

    def create_schema(self) -> None:
        for statement in SCHEMA:
            self._run(statement)
        self._conn.commit()

    # ---------------------------------------------------------------- writing

    def write_predictions(self, rows: Sequence[PredictionRow]) -> None:
        """Insert a batch in one transaction; a (request id, index, role) already stored
        keeps its first answer (a client that reuses an X-Request-ID)."""
        self._insert_many(
            "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (request_id, idx, role) DO NOTHING",
            [r.values() for r in rows],
        )
        self._conn.commit()

    def _insert_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def served(self, request_id: str, idx: int) -> Served | None:
        row = self._run(
            "SELECT version, answer, created_at FROM predictions "
            "WHERE request_id = ? AND idx = ? AND role = 'served'",
            (request_id, idx),
        ).fetchone()
        self._conn.commit()  # end the read transaction: later reads see new rows
        return Served(str(row[0]), str(row[1]), float(row[2])) if row else None

    def add_feedback(self, request_id: str, idx: int, truth: str, now: float) -> None:
        """Record the truth; given again, the latest truth stands (a labeller's correction),
        and the same truth twice changes nothing but the time."""
        self._run(
            "INSERT INTO feedback VALUES (?, ?, ?, ?) ON CONFLICT (request_id, idx) "
            "DO UPDATE SET truth = excluded.truth, created_at = excluded.created_at",
            (request_id, idx, truth, now),
        )
        self._conn.commit()

    def prune(self, older_than: float, max_rows: int) -> int:
        """Delete predictions and feedback older than `older_than` (epoch seconds), then the
        oldest predictions beyond `max_rows`; the rows deleted."""
        deleted = self._run("DELETE FROM predictions WHERE created_at < ?", (older_than,))
        count = max(deleted.rowcount, 0)
        self._run("DELETE FROM feedback WHERE created_at < ?", (older_than,))
        cutoff = self._run(
            "SELECT created_at FROM predictions ORDER BY created_at DESC LIMIT 1 OFFSET ?",
            (max_rows,),
        ).fetchone()
        if cutoff is not None:
            extra = self._run("DELETE FROM predictions WHERE created_at <= ?", (cutoff[0],))
            count += max(extra.rowcount, 0)
            self._run("DELETE FROM feedback WHERE created_at <= ?", (cutoff[0],))
        self._conn.commit()
        return count

    # ---------------------------------------------------------------- reading

    def tallies(self, since: float) -> list[Tally]:
        """Per (version, role): the answers made since `since` that have feedback."""
        totals = self._run(
            """SELECT p.version, p.role, COUNT(*),
                SUM(CASE WHEN p.answer = f.truth THEN 1 ELSE 0 END),
                SUM(CASE WHEN p.answer = ? AND f.truth = ? THEN 1 ELSE 0 END),
                SUM(CASE WHEN p.answer = ? THEN 1 ELSE 0 END),
                SUM(CASE WHEN f.truth = ? THEN 1 ELSE 0 END)
            FROM predictions p JOIN feedback f ON f.request_id = p.request_id AND f.idx = p.idx
            WHERE p.created_at >= ? GROUP BY p.version, p.role""",
            (NOT_A_DIGIT, NOT_A_DIGIT, NOT_A_DIGIT, NOT_A_DIGIT, since),
        ).fetchall()
        bins: dict[tuple[str, str], dict[int, tuple[int, int, float]]] = {}
        for version, role, b, n, right, conf in self._run(
            """SELECT p.version, p.role, p.conf_bin, COUNT(*),
                SUM(CASE WHEN p.answer = f.truth THEN 1 ELSE 0 END), SUM(p.confidence)
            FROM predictions p JOIN feedback f ON f.request_id = p.request_id AND f.idx = p.idx
            WHERE p.created_at >= ? AND p.conf_bin IS NOT NULL
            GROUP BY p.version, p.role, p.conf_bin""",
            (since,),
        ).fetchall():
            bins.setdefault((version, role), {})[int(b)] = (int(n), int(right), float(conf))
        self._conn.commit()
        return [
            Tally(str(v), str(r), int(n), int(c), int(tp), int(pp), int(ap), bins.get((v, r), {}))
            for v, r, n, c, tp, pp, ap in totals
        ]

    def agreements(self, since: float) -> list[Agreement]:
        """Per shadow version: its answers since `since` beside the served ones."""
        rows = self._run(
            """SELECT s.version, COUNT(*), SUM(CASE WHEN s.answer = p.answer THEN 1 ELSE 0 END),
                COUNT(f.truth), SUM(CASE WHEN p.answer = f.truth THEN 1 ELSE 0 END),
                SUM(CASE WHEN s.answer = f.truth THEN 1 ELSE 0 END)
            FROM predictions s JOIN predictions p
              ON p.request_id = s.request_id AND p.idx = s.idx AND p.role = 'served'
            LEFT JOIN feedback f ON f.request_id = s.request_id AND f.idx = s.idx
            WHERE s.role = 'shadow' AND s.created_at >= ? GROUP BY s.version""",
            (since,),
        ).fetchall()
        self._conn.commit()
        return [Agreement(str(row[0]), *(int(v or 0) for v in row[1:])) for row in rows]


class SqliteStore(FeedbackStore):
    """One SQLite file in WAL mode: every worker of a server writes it, readers never wait
    for the writer (https://sqlite.org/wal.html)."""

    @classmethod
    def connect(cls, path: Path, busy_timeout_s: float) -> SqliteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        # NOTE: check_same_thread off: a store is created on one thread and used on
        # another (the writer's, or asyncio's worker threads behind the request lock).
        conn = sqlite3.connect(path, timeout=busy_timeout_s, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # WAL with synchronous=NORMAL is durable across a process crash; only a power cut
        # may lose the last transactions, which for an accuracy estimate is acceptable.
        conn.execute("PRAGMA synchronous=NORMAL")
        return cls(conn)

    def _insert_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        assert isinstance(self._conn, sqlite3.Connection)
        self._conn.executemany(sql, rows)


class PostgresStore(FeedbackStore):
    """A PostgreSQL database that several replicas share (psycopg 3, the `postgres` extra)."""

    placeholder = "%s"

    @classmethod
    def connect(cls, url: str, busy_timeout_s: float) -> PostgresStore:
        import psycopg  # only imported when a PostgreSQL URL is configured

        conn = psycopg.connect(url, connect_timeout=max(1, round(busy_timeout_s)))
        # Several workers create the tables at once on a fresh database: CREATE ... IF NOT
        # EXISTS can still collide in PostgreSQL's catalog, so it is serialised by a lock.
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(27027)")
            for statement in SCHEMA:
                conn.execute(statement)
        return cls(conn)

    def create_schema(self) -> None:
        pass  # done under the lock in connect()

    def _insert_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with self._conn.cursor() as cur:  # type: ignore[attr-defined]
            cur.executemany(self._sql(sql), rows)


def answer_of(kind: str, number: str | None) -> str:
    """The stored answer of a reading: its digits (rows joined by newlines), or "not_a_digit"."""
    return number if kind in ("digit", "number") and number else NOT_A_DIGIT


def now() -> float:
    return time.time()


def rows_of(
    request_id: str,
    role: str,
    version: str,
    answers: Iterable[tuple[int, str, str | None, float | None]],
    at: float,
) -> list[PredictionRow]:
    """Rows for (index, kind, number, confidence) answers of one request."""
    return [
        PredictionRow(request_id, i, role, version, kind, answer_of(kind, number), conf, at)
        for i, kind, number, conf in answers
    ]
