"""Wakeup: notify(n) wakes at most n waiters, the longest idle first; a waiter that timed
out or was cancelled is no longer counted."""

from __future__ import annotations

import asyncio

from agent.delivery.wakeup import Wakeup


async def waiting(wakeup: Wakeup, count: int, timeout: float = 5.0) -> list[asyncio.Task[None]]:
    tasks = []
    for _ in range(count):
        tasks.append(asyncio.create_task(wakeup.wait(timeout)))
        await asyncio.sleep(0)  # each starts waiting in turn
    return tasks


async def test_notify_wakes_at_most_n_the_longest_idle_first():
    wakeup = Wakeup()
    tasks = await waiting(wakeup, 4)
    wakeup.notify(2)
    await asyncio.sleep(0.01)
    assert [task.done() for task in tasks] == [True, True, False, False]
    wakeup.notify_all()
    await asyncio.wait_for(asyncio.gather(*tasks), 1.0)


async def test_a_waiter_that_timed_out_is_not_woken_in_place_of_one_still_waiting():
    wakeup = Wakeup()
    [gone] = await waiting(wakeup, 1, timeout=0.01)
    await gone
    [live] = await waiting(wakeup, 1)
    wakeup.notify(1)
    await asyncio.wait_for(live, 1.0)


async def test_a_cancelled_waiter_leaves_the_queue():
    wakeup = Wakeup()
    cancelled, live = await waiting(wakeup, 2)
    cancelled.cancel()
    await asyncio.sleep(0)
    assert cancelled.cancelled()
    wakeup.notify(1)
    await asyncio.wait_for(live, 1.0)
    assert wakeup.waiting == 0


async def test_waiting_with_nothing_announced_ends_at_the_timeout():
    wakeup = Wakeup()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wakeup.wait(0.05)
    assert 0.04 <= loop.time() - started < 1.0
    assert wakeup.waiting == 0
