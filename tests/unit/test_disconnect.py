"""cancelled_on_disconnect: a client that hangs up stops the wait for the model."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import ClientDisconnect

from service.http.api.deps import cancelled_on_disconnect


class FakeRequest:
    """Only what the watcher reads: `receive`, which yields http.disconnect once hung up."""

    def __init__(self) -> None:
        self.hung_up = asyncio.Event()
        self.receives = 0

    async def receive(self) -> dict[str, str]:
        self.receives += 1
        await self.hung_up.wait()
        return {"type": "http.disconnect"}


async def test_hang_up_while_waiting_raises_client_disconnect_and_stops_the_wait() -> None:
    request, work = FakeRequest(), asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, request.hung_up.set)
    with (
        pytest.raises(ClientDisconnect),
        cancelled_on_disconnect(request, after_s=0.01),  # type: ignore[arg-type]
    ):
        await work.wait()  # the model never answers
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0, "the cancel used to stop the wait must be taken back"


async def test_answer_before_the_hang_up_is_returned_and_watching_stops() -> None:
    request = FakeRequest()
    with cancelled_on_disconnect(request, after_s=0.01):  # type: ignore[arg-type]
        await asyncio.sleep(0.03)
    request.hung_up.set()
    await asyncio.sleep(0.02)  # a watcher left running would cancel us here
    assert request.receives == 1


async def test_quick_answers_never_start_a_watcher() -> None:
    request = FakeRequest()
    with cancelled_on_disconnect(request, after_s=10):  # type: ignore[arg-type]
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert request.receives == 0


async def test_other_cancellations_still_propagate() -> None:
    request = FakeRequest()

    async def wait_forever() -> None:
        with cancelled_on_disconnect(request, after_s=0.01):  # type: ignore[arg-type]
            await asyncio.Event().wait()

    task = asyncio.create_task(wait_forever())
    await asyncio.sleep(0.03)
    task.cancel()  # e.g. shutdown: not a hang-up
    with pytest.raises(asyncio.CancelledError):
        await task
