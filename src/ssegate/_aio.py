"""The one place that asks "is this asyncio?", and the waiter it picks.

Code that runs on any anyio backend waits with ``anyio.Event``. One wait happens per event for
every caught-up follower of a stream, and on asyncio an ``anyio.Event`` costs about 21,000 more
CPU instructions per wait than a bare ``asyncio`` future (callgrind, the memory store, one loop
turn per event: 114,700 against 93,600 instructions per event with one follower, 588,300
against 376,400 with ten). So a task that runs on asyncio waits on a future.

The check (:func:`asyncio_loop`) asks asyncio itself, through public functions, whether the
calling code runs in an asyncio task; anything else (trio, no loop, a loop without a task)
gets ``None`` and the portable ``anyio.Event``. A wrong answer can only pick the portable
path, which works everywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeAlias

import anyio

__all__ = ["Waiter", "asyncio_loop", "wait", "waiter_factory", "wake"]

#: Something one task waits on until another wakes it, once.
Waiter: TypeAlias = "asyncio.Future[None] | anyio.Event"


def asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The asyncio loop running the calling task, or ``None`` when it is not an asyncio task."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # another backend (trio), or no loop at all
        return None
    return loop if asyncio.current_task(loop) is not None else None


def waiter_factory() -> Callable[[], Waiter]:
    """What makes a waiter for the calling task: call once per task, then once per wait."""
    loop = asyncio_loop()
    return anyio.Event if loop is None else loop.create_future


def wake(waiter: Waiter) -> None:
    """Wake the task waiting on ``waiter`` (or let it pass if it waits later); idempotent."""
    if isinstance(waiter, anyio.Event):
        waiter.set()
    elif not waiter.done():  # done if its waiter was cancelled
        waiter.set_result(None)


async def wait(waiter: Waiter) -> None:
    """Wait until ``waiter`` is woken; cancellable like any wait."""
    if isinstance(waiter, anyio.Event):
        await waiter.wait()
    else:
        await waiter
