"""Waking idle senders: as many as there is new work for (or, in the gate, places for
sends), not all of them.

Up to `upstream.concurrency` (256) sender tasks wait for records. An `asyncio.Event` set
for each record admitted or sent wakes every idle one, and each goes back to sleep but
one: at 256 senders that cost more CPU than the sends. `Wakeup.notify(n)` wakes at most
n, the longest idle first. Work is announced: records admitted by the intake, records put
back, a held lane whose time is over (`Lanes.release_held`); a waiter's timeout is only a
backstop, so idle senders cost next to nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Wakeup:
    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def notify(self, n: int = 1) -> None:
        """Wake at most `n` waiters."""
        waiters = self._waiters
        while n > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                n -= 1

    def notify_for(self, items: int, per_waiter: int) -> None:
        """Wake as many waiters as `items` keep busy, `per_waiter` items each (a sender
        takes a batch: in array mode 1,000 records wake two senders, not a thousand)."""
        self.notify(-(-items // per_waiter))

    def notify_all(self) -> None:
        self.notify(len(self._waiters))

    async def wait(self, timeout: float) -> None:
        """Return when notified, or after `timeout` seconds."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await waiter
        finally:
            if not waiter.done():
                waiter.cancel()
            if waiter.cancelled():  # timed out or cancelled: it may still be in the queue
                with contextlib.suppress(ValueError):  # (a notified one is not: no search,
                    self._waiters.remove(waiter)  # and no error, whose message is its repr)
