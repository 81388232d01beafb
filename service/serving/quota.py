"""Quota: the limits of each API key, held across the worker processes of one server.

Token buckets (requests per second with a burst; images per minute) and concurrency counts
per key name live in one small SQLite database: the supervisor's fleet folder holds the file
with several workers (every worker opens it), and one worker keeps it in memory. SQLite
makes each check one atomic statement under its write lock: there is no read-modify-write
for two workers to interleave, and no server to run. WAL with `synchronous=OFF`: the state
is worth nothing after a restart, so nothing is flushed to disk.

Only keys with limits reach the database; with no keys or no limits nothing here runs.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from service.errors import PayloadTooLarge, RateLimited
from service.serving.keys import ApiKey, KeyRing, client_id

#: The database file in the fleet folder (service/runtime/fleet.py).
QUOTA_FILE = "quota.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bucket (
    name TEXT NOT NULL, kind TEXT NOT NULL, tokens REAL NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (name, kind)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS busy (
    name TEXT NOT NULL, pid INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (name, pid)
) WITHOUT ROWID;
"""

# One statement: refill the bucket to `now`, then take `cost` only if that much is there.
_TAKE = """
UPDATE bucket SET tokens = min(:burst, tokens + (:now - at) * :rate) - :cost, at = :now
WHERE name = :name AND kind = :kind AND min(:burst, tokens + (:now - at) * :rate) >= :cost
"""
_LEVEL = """
SELECT min(:burst, tokens + (:now - at) * :rate) FROM bucket WHERE name = :name AND kind = :kind
"""
_CREATE = """
INSERT OR IGNORE INTO bucket (name, kind, tokens, at) VALUES (:name, :kind, :burst, :now)
"""
# One statement: count this worker's request in unless the key's total is at the limit.
_ENTER = """
INSERT INTO busy (name, pid, n)
SELECT :name, :pid, 1 WHERE (SELECT coalesce(sum(n), 0) FROM busy WHERE name = :name) < :max
ON CONFLICT (name, pid) DO UPDATE SET n = n + 1
"""
_LEAVE = "UPDATE busy SET n = max(0, n - :n) WHERE name = :name AND pid = :pid"
#: What SQLite answers when another worker holds the write lock past `lock_timeout_s`.
_BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def _busy(exc: sqlite3.OperationalError) -> bool:
    return exc.sqlite_errorcode & 0xFF in _BUSY  # the primary code of an extended one


@dataclass(frozen=True)
class QuotaPolicy:
    #: How long a worker waits for another's write lock before it gives up (then: 429).
    lock_timeout_s: float = 0.5
    #: Retry-After bounds, in seconds.
    min_retry_s: int = 1
    max_retry_s: int = 3600


class Quota:
    """The shared counters; `enter`/`leave` around a request, `take_images` per image batch."""

    def __init__(self, path: Path | None, policy: QuotaPolicy | None = None) -> None:
        self.path = path
        self.policy = policy or QuotaPolicy()
        self._db: sqlite3.Connection | None = None
        self._pid = os.getpid()
        #: Keys with an images-per-minute limit, by client id (`charge` looks them up).
        self.image_keys: dict[str, ApiKey] = {}
        #: Slots to give back, by key name, that found the write lock taken (`_settle`).
        self._owed: dict[str, int] = {}

    def use(self, ring: KeyRing) -> None:
        """Follow the keys now configured (start-up and every reload)."""
        self.image_keys = {client_id(k.name): k for k in ring.keys if k.images_per_minute}

    def charge(self, client: object, images: int) -> None:
        """Charge `images` to the client's key when that key limits images (the data plane
        calls it before any decoding)."""
        key = self.image_keys.get(client) if isinstance(client, str) else None
        if key is not None:
            self.take_images(key, images)

    def _conn(self) -> sqlite3.Connection:
        # Opened on first use, in the worker (never inherited across a fork).
        if self._db is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self._owed = {}
            target = str(self.path) if self.path is not None else ":memory:"
            db = sqlite3.connect(
                target, timeout=self.policy.lock_timeout_s, isolation_level=None,
                check_same_thread=False,
            )  # fmt: skip
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    # ------------------------------------------------------------------ per request

    def enter(self, key: ApiKey) -> bool:
        """Count a request of `key` in, or raise RateLimited. True when `leave` is owed."""
        db = self._conn()
        if self._owed:
            self._settle(db)
        held = False
        try:
            if key.concurrent is not None:
                params = {"name": key.name, "pid": self._pid, "max": key.concurrent}
                if db.execute(_ENTER, params).rowcount == 0:
                    raise RateLimited(
                        f"key {key.name!r} has {key.concurrent} requests in progress, its "
                        "limit; retry when one has finished",
                        retry_after_s=self.policy.min_retry_s,
                    )
                held = True
            if key.requests_per_second is not None:
                self._take(db, key, "requests", key.requests_per_second, key.request_burst, 1)
        except (RateLimited, sqlite3.OperationalError) as exc:
            if held:
                self.leave(key)
            if isinstance(exc, sqlite3.OperationalError):
                raise self._refused_busy(key, exc) from None
            raise
        return held

    def leave(self, key: ApiKey) -> None:
        """Give back the slot `enter` took. Never raises for a busy database: the slot is
        owed and given back by this worker's next call, so a moment of lock contention
        cannot keep it counted (and the key refused) for good."""
        self._owed[key.name] = self._owed.get(key.name, 0) + 1
        self._settle(self._conn())

    def _settle(self, db: sqlite3.Connection) -> None:
        for name, count in list(self._owed.items()):
            try:
                db.execute(_LEAVE, {"name": name, "pid": self._pid, "n": count})
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
                return  # still locked: the rest wait for the next call too
            del self._owed[name]

    def _refused_busy(self, key: ApiKey, exc: sqlite3.OperationalError) -> RateLimited:
        """A check that could not get the write lock in time: a 429 to retry, not a 500."""
        if not _busy(exc):
            raise exc
        return RateLimited(
            f"key {key.name!r}'s limits could not be checked, the server is busy; retry "
            "after the Retry-After seconds",
            retry_after_s=self.policy.min_retry_s,
        )

    def take_images(self, key: ApiKey, images: int) -> None:
        """Charge `images` to the key's images-per-minute bucket, or raise."""
        per_minute = key.images_per_minute
        if per_minute is None:
            return
        if images > per_minute:
            raise PayloadTooLarge(
                f"{images} images in one request exceed key {key.name!r}'s limit of "
                f"{per_minute} per minute"
            )
        try:
            self._take(self._conn(), key, "images", per_minute / 60, per_minute, images)
        except sqlite3.OperationalError as exc:
            raise self._refused_busy(key, exc) from None

    def _take(
        self, db: sqlite3.Connection, key: ApiKey, kind: str, rate: float, burst: int, cost: int
    ) -> None:
        params = {"name": key.name, "kind": kind, "rate": rate, "burst": burst,
                  "cost": cost, "now": time.monotonic()}  # fmt: skip
        if db.execute(_TAKE, params).rowcount:
            return
        level = db.execute(_LEVEL, params).fetchone()
        if level is None:  # the key's first request: a full bucket
            db.execute(_CREATE, params)
            if db.execute(_TAKE, params).rowcount:
                return
            level = db.execute(_LEVEL, params).fetchone()
        wait = (cost - level[0]) / rate
        unit = "requests per second" if kind == "requests" else "images per minute"
        limit = rate if kind == "requests" else burst
        raise RateLimited(
            f"key {key.name!r} is over its limit of {limit:g} {unit}; retry after the "
            "Retry-After seconds",
            retry_after_s=self.retry_after(wait),
        )

    def retry_after(self, wait_s: float) -> int:
        """Whole seconds until the bucket holds what was asked (at least one)."""
        return max(self.policy.min_retry_s, min(self.policy.max_retry_s, math.ceil(wait_s)))

    # ------------------------------------------------------------------ the supervisor's side

    @staticmethod
    def forget(path: Path, pid: int) -> None:
        """Drop a dead worker's requests in progress (the supervisor calls it)."""
        if not path.exists():
            return
        with (
            contextlib.suppress(sqlite3.Error),
            contextlib.closing(sqlite3.connect(str(path), timeout=1.0)) as db,
            db,
        ):
            db.execute("DELETE FROM busy WHERE pid = ?", (pid,))
