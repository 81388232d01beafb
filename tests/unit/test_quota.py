"""Quota on a real SQLite file shared by two `Quota` objects, as two workers share it; and the
key file's parsing."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest

from service.errors import PayloadTooLarge, RateLimited
from service.serving.keys import ApiKey, KeyRing, client_id, key_ring, read_key_file
from service.serving.quota import Quota, QuotaPolicy


@pytest.fixture
def workers(tmp_path: Path) -> tuple[Quota, Quota]:
    path = tmp_path / "quota.sqlite"
    return Quota(path), Quota(path)


def test_one_bucket_for_two_workers_with_retry_after_from_the_refill(workers) -> None:
    a, b = workers
    key = ApiKey(name="app", key="k", requests_per_second=0.5, burst=2)
    assert a.enter(key) is False  # nothing to leave: no concurrency limit
    b.enter(key)
    with pytest.raises(RateLimited) as refused:
        a.enter(key)
    # One token at 0.5 per second: 2 s, less the microseconds since.
    assert refused.value.headers == {"Retry-After": "2"}
    assert refused.value.status_code == 429
    assert refused.value.code == "rate_limited"


def test_concurrency_counts_every_worker_and_forgets_a_dead_one(workers, tmp_path) -> None:
    a, b = workers
    key = ApiKey(name="app", key="k", concurrent=2)
    assert a.enter(key)
    assert b.enter(key)
    with pytest.raises(RateLimited, match="2 requests in progress"):
        a.enter(key)
    b.leave(key)
    assert a.enter(key)
    with pytest.raises(RateLimited):
        b.enter(key)
    # The supervisor drops a dead worker's count: its requests are not in progress any more.
    b._pid = 999_999  # noqa: SLF001 - stands for another process's rows
    Quota.forget(tmp_path / "quota.sqlite", a._pid)  # noqa: SLF001
    assert b.enter(key)
    assert b.enter(key)


def test_a_request_refused_by_rate_does_not_hold_a_concurrency_slot(workers) -> None:
    a, _ = workers
    key = ApiKey(name="app", key="k", concurrent=1, requests_per_second=0.01, burst=1)
    assert a.enter(key)
    a.leave(key)
    with pytest.raises(RateLimited, match="requests per second"):
        a.enter(key)
    other = ApiKey(name="app", key="k", concurrent=1)  # the same name, rate limit dropped
    assert a.enter(other)  # the slot was given back


def test_a_busy_database_is_a_429_and_never_keeps_a_slot(tmp_path: Path) -> None:
    path = tmp_path / "quota.sqlite"
    policy = QuotaPolicy(lock_timeout_s=0.01)  # give up on the lock at once: no waiting here
    a, b = Quota(path, policy), Quota(path, policy)
    key = ApiKey(name="app", key="k", concurrent=1)
    images = ApiKey(name="pics", key="p", images_per_minute=6)
    assert a.enter(key)
    with pytest.raises(RateLimited, match="1 requests in progress"):
        b.enter(key)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # another worker holds the write lock
        a.leave(key)  # the slot cannot be given back now: owed, not lost, and no 500
        with pytest.raises(RateLimited, match="server is busy") as refused:
            b.enter(key)
        assert refused.value.headers == {"Retry-After": "1"}
        with pytest.raises(RateLimited, match="server is busy"):
            b.take_images(images, 1)
        other.execute("ROLLBACK")
    # The worker that owed the slot gives it back first thing, then takes it again.
    assert a.enter(key)
    a.leave(key)
    assert b.enter(key)


def test_images_per_minute(workers) -> None:
    a, b = workers
    key = ApiKey(name="app", key="k", images_per_minute=6)
    ring = KeyRing([key])
    a.use(ring)
    a.charge(client_id("app"), 4)
    b.take_images(key, 2)
    with pytest.raises(RateLimited, match="6 images per minute") as refused:
        a.charge(client_id("app"), 1)
    assert refused.value.headers == {"Retry-After": "10"}  # one image at 6 a minute
    with pytest.raises(PayloadTooLarge):
        a.charge(client_id("app"), 7)
    a.charge("addr:127.0.0.1", 100)  # a client without such a key is not charged


def test_key_file_toml_and_json_and_listed_keys(tmp_path: Path) -> None:
    toml = tmp_path / "keys.toml"
    toml.write_text('[[keys]]\nname = "app-a"\nkey = "ka"\nrequests_per_second = 2.5\n')
    (key,) = read_key_file(toml)
    assert (key.name, key.requests_per_second, key.request_burst) == ("app-a", 2.5, 2)
    assert "ka" not in repr(key)
    js = tmp_path / "keys.json"
    js.write_text(json.dumps({"keys": [{"name": "app-b", "key": "kb", "concurrent": 3}]}))
    ring = key_ring(["l1", "l2"], js)
    assert sorted(ring.names) == ["app-b", "key-1", "key-2"]
    assert ring.identify("l2").name == "key-2"
    assert ring.identify("kb").concurrent == 3
    assert ring.identify("nope") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[keys]]\nname = "a"\nkey = "k"\nburst = 0\n', "keys.0.burst"),
        ('[[keys]]\nname = "a"\nkey = "k"\nrate = 1\n', "keys.0.rate: Extra inputs"),
        ('[[keys]]\nname = "a b"\nkey = "k"\n', "keys.0.name"),
        ('[[keys]]\nname = "a"\nkey = "k"\n[[keys]]\nname = "a"\nkey = "j"\n', "unique"),
        ('[[keys]]\nname = "anonymous"\nkey = "k"\n', "unique and not 'anonymous'"),
        ("keys = [", "does not parse"),
    ],
)
def test_key_file_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_key_file(path)
