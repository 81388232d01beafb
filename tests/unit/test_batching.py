"""Batcher behaviour through its public API, with a deterministic fake model."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from service.config import Settings
from service.errors import InferenceFailed, InferenceTimeout, Overloaded, ShuttingDown
from service.serving.batching import Batcher, InlineWhenIdle
from service.serving.model import Classifier


class RecordingModel:
    """Doubles its input (so rows are traceable) and records every batch size."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.threads: list[int] = []
        self.delay_s = delay_s
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()

    def predict_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        self.gate.wait(5)
        self.sizes.append(int(pixels.shape[0]))
        self.threads.append(threading.get_ident())
        if self.delay_s:
            threading.Event().wait(self.delay_s)
        if self.fail:
            raise RuntimeError("boom")
        return pixels.reshape(len(pixels), -1)[:, :10] * 2


def rows(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 28, 28, generator=torch.Generator().manual_seed(seed))


async def started(model: RecordingModel, **kw: object) -> Batcher:
    defaults = Settings()
    options: dict[str, object] = {
        "max_batch_size": defaults.max_batch_size,
        "max_batch_wait_ms": defaults.max_batch_wait_ms,
        "max_queue_size": defaults.max_queue_size,
        "request_timeout_s": defaults.request_timeout_s,
        "enabled": defaults.batching,
    }
    b = Batcher(lambda: model, **(options | kw))  # type: ignore[arg-type]
    await b.start()
    return b


async def test_batcher_lone_request_goes_straight_through() -> None:
    model = RecordingModel()
    b = await started(model, max_batch_size=8, max_batch_wait_ms=500)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    out, _ = await b.submit(rows(1, 0))
    assert loop.time() - t0 < 0.4, "a lone request must not wait for max_batch_wait_ms"
    assert model.sizes == [1]
    await b.stop()


async def test_batcher_coalesces_concurrent_requests_into_one_forward() -> None:
    model = RecordingModel()
    model.gate.clear()  # hold the first forward so the rest pile up behind it
    b = await started(model, max_batch_size=64)
    first = asyncio.create_task(b.submit(rows(1, 100)))
    await asyncio.sleep(0.05)
    inputs = [rows(1, i) for i in range(10)]
    tasks = [asyncio.create_task(b.submit(x)) for x in inputs]
    await asyncio.sleep(0.05)
    model.gate.set()
    results = await asyncio.gather(*tasks)
    await first
    assert model.sizes == [1, 10], model.sizes
    for x, (out, _) in zip(inputs, results, strict=True):
        torch.testing.assert_close(out, x.reshape(1, -1)[:, :10] * 2)
    await b.stop()


async def test_batcher_multi_image_requests_get_exactly_their_rows() -> None:
    model = RecordingModel()
    model.gate.clear()
    b = await started(model, max_batch_size=16)
    blocker = asyncio.create_task(b.submit(rows(1, 99)))
    await asyncio.sleep(0.05)
    inputs = [rows(n, n) for n in (3, 5, 1, 7)]
    tasks = [asyncio.create_task(b.submit(x)) for x in inputs]
    await asyncio.sleep(0.05)
    model.gate.set()
    results = await asyncio.gather(*tasks)
    await blocker
    for x, (out, _) in zip(inputs, results, strict=True):
        assert out.shape == (len(x), 10)
        torch.testing.assert_close(out, x.reshape(len(x), -1)[:, :10] * 2)
    assert max(model.sizes) <= 16
    await b.stop()


async def test_batcher_never_exceeds_max_batch_size_and_splits_large_requests() -> None:
    model = RecordingModel()
    b = await started(model, max_batch_size=4)
    x = rows(10, 1)
    out, _ = await b.submit(x)
    torch.testing.assert_close(out, x.reshape(10, -1)[:, :10] * 2)
    assert model.sizes == [4, 4, 2]
    await b.stop()


async def test_batcher_partial_batch_flushes_after_wait_when_work_is_announced() -> None:
    model = RecordingModel()
    b = await started(model, max_batch_size=64, max_batch_wait_ms=50)
    loop = asyncio.get_running_loop()
    with b.incoming(1):  # another request is "still decoding" and never arrives
        t0 = loop.time()
        await b.submit(rows(1, 0))
        waited = loop.time() - t0
    assert 0.04 <= waited < 1.0, f"should wait about max_batch_wait_ms, waited {waited:.3f}s"
    assert model.sizes == [1]
    await b.stop()


async def test_batcher_failing_forward_fails_every_waiter_and_keeps_running() -> None:
    model = RecordingModel(fail=True)
    model.gate.clear()
    b = await started(model, max_batch_size=8)
    blocker = asyncio.create_task(b.submit(rows(1, 0)))
    await asyncio.sleep(0.05)
    tasks = [asyncio.create_task(b.submit(rows(1, i))) for i in range(3)]
    await asyncio.sleep(0.05)
    model.gate.set()
    results = await asyncio.gather(blocker, *tasks, return_exceptions=True)
    assert all(isinstance(r, InferenceFailed) for r in results), results
    model.fail = False
    out, _ = await b.submit(rows(2, 5))
    assert out.shape == (2, 10)
    assert b.alive
    await b.stop()


async def test_batcher_full_queue_raises_overloaded() -> None:
    model = RecordingModel()
    model.gate.clear()
    b = await started(model, max_batch_size=2, max_queue_size=4)
    pending = [asyncio.create_task(b.submit(rows(2, i), client=i)) for i in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(Overloaded) as info:
        await b.submit(rows(1, 9), client="someone else")
    assert info.value.headers == {"Retry-After": "1"}
    with pytest.raises(Overloaded):
        b.check_capacity()  # what routes call before reading a body
    model.gate.set()
    await asyncio.gather(*pending)
    await b.stop()


async def test_batcher_deadline_raises_timeout_and_frees_the_slot() -> None:
    model = RecordingModel()
    model.gate.clear()
    b = await started(model, max_batch_size=1, max_queue_size=2, request_timeout_s=0.2)
    with pytest.raises(InferenceTimeout):
        await b.submit(rows(1, 0))
    assert b.queued_images == 0
    model.gate.set()
    out, _ = await b.submit(rows(1, 1))
    assert out.shape == (1, 10)
    await b.stop()


async def test_batcher_deadline_covers_every_chunk_of_a_split_request() -> None:
    model = RecordingModel()
    model.gate.clear()
    b = await started(model, max_batch_size=2, max_queue_size=8, request_timeout_s=0.2)
    with pytest.raises(InferenceTimeout, match="0.2 s request deadline"):
        await b.submit(rows(5, 0))  # three chunks: 2 + 2 + 1 rows
    assert b.queued_images == 0
    model.gate.set()
    out, _ = await b.submit(rows(3, 1))
    assert out.shape == (3, 10)
    await b.stop()


async def test_batcher_cancelled_client_frees_its_slot_and_is_skipped() -> None:
    model = RecordingModel()
    model.gate.clear()
    b = await started(model, max_batch_size=8, max_queue_size=8)
    blocker = asyncio.create_task(b.submit(rows(1, 0)))
    await asyncio.sleep(0.05)
    doomed = asyncio.create_task(b.submit(rows(4, 1), client="impatient"))
    await asyncio.sleep(0.05)
    assert b.queued_images == 5
    doomed.cancel()
    await asyncio.sleep(0.01)
    assert b.queued_images == 1, "a cancelled request must release its queue slot"
    model.gate.set()
    await blocker
    await asyncio.sleep(0.05)
    assert model.sizes == [1], "the cancelled request must not reach the model"
    await b.stop()


async def test_batcher_disabled_runs_one_request_per_forward() -> None:
    model = RecordingModel()
    model.gate.clear()
    b = await started(model, max_batch_size=64, enabled=False)
    tasks = [asyncio.create_task(b.submit(rows(2, i))) for i in range(4)]
    await asyncio.sleep(0.05)
    model.gate.set()
    await asyncio.gather(*tasks)
    assert model.sizes == [2, 2, 2, 2]
    await b.stop()


async def test_batcher_stop_refuses_new_work() -> None:
    b = await started(RecordingModel())
    await b.stop()
    with pytest.raises(ShuttingDown):
        await b.submit(rows(1, 0))
    assert not b.alive


class Batches:
    """Observer that records what the batcher reports."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def observe_batch(
        self, size: int, queue_wait_s: float, forward_s: float, model: object = None
    ) -> None:
        self.sizes.append(size)


async def test_batcher_lone_image_runs_on_the_event_loop_when_alone() -> None:
    model, seen = RecordingModel(), Batches()
    b = await started(model, inline=InlineWhenIdle(lambda: True), observer=seen)
    x = rows(1, 3)
    out, used = await b.submit(x)
    torch.testing.assert_close(out, x.reshape(1, -1)[:, :10] * 2)
    assert used is model
    assert model.threads == [threading.get_ident()], "expected the forward on the loop thread"
    assert seen.sizes == [1], "an inline forward is still reported as a batch"
    assert b.idle
    await b.stop()


async def test_batcher_goes_through_the_thread_when_not_alone_or_several_images() -> None:
    model = RecordingModel()
    company = await started(model, inline=InlineWhenIdle(lambda: False))
    await company.submit(rows(1, 0))
    await company.stop()
    alone = await started(model, inline=InlineWhenIdle(lambda: True))
    await alone.submit(rows(3, 0))
    await alone.stop()
    assert model.sizes == [1, 3]
    assert threading.get_ident() not in model.threads


async def test_batcher_requests_arriving_together_are_still_coalesced_when_alone() -> None:
    # `alone` says yes to everyone: the claim alone must send simultaneous arrivals (and the
    # claimant) through one batch on the inference thread.
    model = RecordingModel()
    b = await started(model, max_batch_size=64, inline=InlineWhenIdle(lambda: True))
    inputs = [rows(1, i) for i in range(5)]
    results = await asyncio.gather(*(b.submit(x) for x in inputs))
    for x, (out, _) in zip(inputs, results, strict=True):
        torch.testing.assert_close(out, x.reshape(1, -1)[:, :10] * 2)
    assert sum(model.sizes) == 5
    assert len(model.sizes) < 5, model.sizes
    assert threading.get_ident() not in model.threads
    await b.stop()


async def test_batcher_request_arriving_during_the_claim_sends_it_to_the_batch_path() -> None:
    answers = iter([True, False])  # alone when it looks, not any more after one loop turn
    model = RecordingModel()
    b = await started(model, inline=InlineWhenIdle(lambda: next(answers)))
    await b.submit(rows(1, 0))
    assert len(model.threads) == 1
    assert threading.get_ident() not in model.threads
    await b.stop()


async def test_batcher_inline_failure_fails_that_request_and_the_next_is_served() -> None:
    model = RecordingModel(fail=True)
    b = await started(model, inline=InlineWhenIdle(lambda: True))
    with pytest.raises(InferenceFailed):
        await b.submit(rows(1, 0))
    assert b.idle, "a failed inline forward must not leave the batcher busy"
    model.fail = False
    out, _ = await b.submit(rows(1, 1))
    assert out.shape == (1, 10)
    assert b.alive
    await b.stop()


async def test_batcher_a_lone_client_may_fill_the_whole_queue() -> None:
    model = RecordingModel()
    model.gate.clear()
    b = await started(model, max_batch_size=4, max_queue_size=8)
    hog = [asyncio.create_task(b.submit(rows(4, i), client="hog")) for i in range(2)]
    await asyncio.sleep(0.05)
    assert b.pending_images == 8  # nobody else waits: its share does not bind
    with pytest.raises(Overloaded, match="at capacity"):
        await b.submit(rows(1, 5), client="hog")  # the queue itself is full
    model.gate.set()
    await asyncio.gather(*hog)
    await b.stop()


async def test_batcher_share_binds_only_while_another_client_waits() -> None:
    model = RecordingModel()
    model.gate.clear()
    b = await started(model, max_batch_size=4, max_queue_size=8)
    hog = [asyncio.create_task(b.submit(rows(4, 0), client="hog"))]
    other = asyncio.create_task(b.submit(rows(2, 1), client="other"))
    await asyncio.sleep(0.05)
    # 6 of 8 pending, the hog holds 4 while "other" waits: its fair share (4) is used up
    # and the queue is past the room kept for others.
    with pytest.raises(Overloaded, match="1 other client is waiting") as info:
        await b.submit(rows(1, 2), client="hog")
    assert int(info.value.headers["Retry-After"]) >= 1
    # The waiting client itself still gets in.
    more = asyncio.create_task(b.submit(rows(1, 3), client="other"))
    await asyncio.sleep(0.05)
    model.gate.set()
    await asyncio.gather(*hog, other, more)
    await b.stop()


async def test_batcher_serves_clients_round_robin() -> None:
    model = RecordingModel()
    model.gate.clear()
    b = await started(model, max_batch_size=1, max_queue_size=64)
    blocker = asyncio.create_task(b.submit(rows(1, 0), client="first"))
    await asyncio.sleep(0.05)
    order: list[str] = []

    async def send(client: str, seed: int) -> None:
        await b.submit(rows(1, seed), client=client)
        order.append(client)

    heavy = [asyncio.create_task(send("heavy", i)) for i in range(1, 6)]
    await asyncio.sleep(0.01)
    light = asyncio.create_task(send("light", 99))
    await asyncio.sleep(0.01)
    model.gate.set()
    await asyncio.gather(blocker, *heavy, light)
    assert order.index("light") <= 1, order  # not behind all five of the heavy client's
    await b.stop()


async def test_batcher_admission_happens_before_decoding() -> None:
    b = await started(RecordingModel(), max_batch_size=4, max_queue_size=8)
    with b.incoming(4, client="a"):
        with pytest.raises(Overloaded), b.incoming(5, client="b"):
            pytest.fail("admitted past the queue size")
        with b.incoming(4, client="b"):
            assert b.pending_images == 8
    assert b.pending_images == 0
    await b.stop()


async def test_batcher_batches_hold_one_version_and_others_keep_their_place() -> None:
    default, other = RecordingModel(), RecordingModel()
    default.gate.clear()  # hold the first forward while requests for both versions queue
    b = await started(default, max_batch_size=64)
    blocker = asyncio.create_task(b.submit(rows(1, 99)))
    await asyncio.sleep(0.05)
    # Interleaved versions, from two clients: each batch takes every item of its version.
    named = [None, other, None, other, other, None]
    tasks = [
        asyncio.create_task(b.submit(rows(1, i), client=i % 2, model=m))
        for i, m in enumerate(named)
    ]
    await asyncio.sleep(0.05)
    default.gate.set()
    results = await asyncio.gather(*tasks)
    await blocker
    assert default.sizes == [1, 3], default.sizes
    assert other.sizes == [3], other.sizes
    assert [used for _, used in results] == [m or default for m in named]
    await b.stop()


async def test_batcher_timing_adds_up_to_the_time_in_the_batcher() -> None:
    model = RecordingModel(delay_s=0.02)
    b = await started(model, max_batch_size=2)
    timing: list[float] = []
    await b.submit(rows(5, 0), timing=timing)  # three forwards, one after another
    queue_s, forward_s = timing
    assert model.sizes == [2, 2, 1]
    assert forward_s >= 3 * 0.02
    assert queue_s >= 0
    await b.stop()


async def test_batcher_takes_a_request_naming_a_loaded_classifier(shipped_models) -> None:
    # The data plane names a real Classifier (a dataclass): the lanes key on it.
    named = Classifier.load(shipped_models / "mnist-cnn" / "1", torch.device("cpu"))
    default = RecordingModel()
    b = await started(default)
    x = torch.as_tensor(named.inputs(torch.rand(2, 28, 28).numpy()))
    probs, used = await b.submit(x, model=named)
    assert used is named
    assert probs.shape == (2, 10)
    assert default.sizes == []
    await b.stop()


class UnhashableModel(RecordingModel):
    """As a dataclass with eq=True is (the real Classifier): no hash."""

    __hash__ = None  # type: ignore[assignment]


async def test_batcher_takes_named_models_that_cannot_be_hashed() -> None:
    default, other = RecordingModel(), UnhashableModel()
    b = await started(default)
    out, used = await b.submit(rows(2, 1), model=other)
    assert used is other
    assert other.sizes == [2]
    await b.stop()
