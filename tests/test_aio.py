"""The one "is this asyncio?" check and the waiter it picks: a future on asyncio, an
``anyio.Event`` anywhere else, both woken the same way."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from ssegate._aio import Waiter, asyncio_loop, wait, waiter_factory, wake

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_the_waiter_is_a_future_on_asyncio_and_an_event_elsewhere(anyio_backend: str) -> None:
    waiter = waiter_factory()()
    if anyio_backend == "asyncio":
        assert isinstance(waiter, asyncio.Future)
        assert asyncio_loop() is asyncio.get_running_loop()
    else:
        assert isinstance(waiter, anyio.Event)
        assert asyncio_loop() is None


async def test_a_woken_waiter_wakes_its_task_once() -> None:
    make = waiter_factory()
    woken: list[int] = []

    async def waiting(n: int, waiter: Waiter) -> None:
        await wait(waiter)
        woken.append(n)

    waiters = [make(), make()]
    async with anyio.create_task_group() as tg:
        for n, waiter in enumerate(waiters):
            tg.start_soon(waiting, n, waiter)
        await anyio.wait_all_tasks_blocked()
        assert woken == []
        wake(waiters[1])
        wake(waiters[1])  # idempotent
        await anyio.wait_all_tasks_blocked()
        assert woken == [1]
        wake(waiters[0])
    assert woken == [1, 0]
    await wait(waiters[0])  # a woken waiter lets a late wait through


async def test_a_cancelled_wait_ends_and_its_waiter_can_still_be_woken() -> None:
    waiter = waiter_factory()()
    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, waiter)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    wake(waiter)  # the appender does not know the follower left


def test_outside_an_asyncio_task_the_check_says_no() -> None:
    assert asyncio_loop() is None  # no loop at all
    loop = asyncio.new_event_loop()
    seen: list[object] = []

    def callback() -> None:  # a loop runs, but no task: a future can't be awaited here
        seen.append(asyncio_loop())
        loop.stop()

    try:
        loop.call_soon(callback)
        loop.run_forever()
    finally:
        loop.close()
    assert seen == [None]
