"""Ingest first: the apps' requests go before delivery's bulk work on the event loop.

Ingest and delivery share one asyncio event loop, which runs whatever is ready in turn, one
pass after another. Delivery's bulk work came in steps of milliseconds: the intake took
the spool into its lanes 1,000 records at a time (10 to 15 ms in array mode), and an array
sender settled and took 500 at a time. An app's request waited behind every such step
ready before it, and each of the request's own steps (the append, the commit, the answer)
waited again. During an array-mode catch-up that put a single-record POST's 99th
percentile at 60 to 90 ms (`bench/latency.py`).

So delivery takes its `turn` before each slice of bulk work (the intake's reads; an array
sender's taking and settling of a batch):

* one pass of the loop first, in which requests whose bytes arrived are read;
* while a request is under way (received whole, not yet answered), a wait until none is,
  of at most `MAX_WAIT_S`: under a flood of requests delivery still moves;
* one slice of bulk work per pass: each pass of the loop stays short, and so does each of
  a request's steps.

While apps post (a POST began within `POSTING_S`), the intake reads `SLICE_RECORDS` at a
time; otherwise 1,000, so a backlog alone drains as before (small reads cost CPU: senders
find fewer records at once and send smaller batches).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final

SLICE_RECORDS: Final = 100  # records per intake read while apps post: about a millisecond
MAX_WAIT_S: Final = 0.005  # delivery waits for ingest at most this long a turn
POSTING_S: Final = 1.0  # apps post while a POST began this recently


class IngestFirst:
    def __init__(self, max_wait_s: float = MAX_WAIT_S) -> None:
        self._max_wait_s = max_wait_s
        self._under_way = 0
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._bulk = asyncio.Lock()
        self._last_post = float("-inf")

    @property
    def under_way(self) -> int:
        """Requests received whole and not answered yet."""
        return self._under_way

    @property
    def apps_posting(self) -> bool:
        """Whether a POST began within the last `POSTING_S`."""
        return time.monotonic() - self._last_post < POSTING_S

    def serving(self, worker: asyncio.Task[None], *, posting: bool) -> None:
        """A connection's worker started answering the requests it received (`posting`:
        usage; /status and /metrics are not apps posting): a request is under way until
        the worker ends (its done callback runs however it ends, even cancelled before
        its first step)."""
        self._under_way += 1
        self._quiet.clear()
        if posting:
            self._last_post = time.monotonic()
        worker.add_done_callback(self._served)

    def _served(self, _: asyncio.Task[None]) -> None:
        self._under_way -= 1
        if not self._under_way:
            self._quiet.set()

    async def turn(self) -> None:
        """Delivery's turn for a slice of bulk work (see the module's docstring), which
        follows at once. (The slot is given back at the next pass of the loop, whether the
        slice suspends or not.)"""
        await asyncio.sleep(0)
        if self._under_way:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._max_wait_s):
                    await self._quiet.wait()
        await self._bulk.acquire()  # one slice of bulk work per pass of the loop: released
        asyncio.get_running_loop().call_soon(self._bulk.release)  # at the next pass
