"""Backing off as one client: every send passes this gate first.

* **Pause**: a 429 or 503 with Retry-After pauses every sender until then, not just the
  request that got it.
* **Circuit**: after `retry.circuit_failures` failures in a row, one probe at a time; the
  first success closes it.
* **Pace** (AIMD): the number of sends in flight starts low, grows by about one per round
  of successes up to `upstream.concurrency`, and halves on a 429 or a 5xx, so that after an
  outage the backlog drains at a pace the upstream shows it can take.
* **Degraded**: a configuration problem (refused credentials, 403, every request 404)
  is a reason shown in `/readyz` and `/status`; sends go on as single probes with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

INITIAL_LIMIT = 4.0
LOG_EVERY_S = 60.0


class Gate:
    def __init__(
        self,
        max_concurrency: int,
        circuit_failures: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max = max_concurrency
        self.circuit_failures = circuit_failures
        self.limit = min(INITIAL_LIMIT, float(max_concurrency))
        self.in_flight = 0
        self.paused_until = 0.0
        self.failures_in_a_row = 0
        self.degraded = ""
        self._clock = clock
        self._changed = asyncio.Condition()
        self._waiting = 0
        self._logged_at = -LOG_EVERY_S

    @property
    def circuit_open(self) -> bool:
        return self.failures_in_a_row >= self.circuit_failures

    @property
    def capacity(self) -> int:
        if self.circuit_open or self.degraded:
            return 1
        return max(1, int(self.limit))

    async def acquire(self) -> None:
        """Wait until a send may start: not paused, and under the current capacity."""
        if self.in_flight < self.capacity and self.paused_until <= self._clock():
            self.in_flight += 1  # the usual case, decided without a suspension point
            return
        self._waiting += 1
        try:
            await self._wait_turn()
        finally:
            self._waiting -= 1

    async def _wait_turn(self) -> None:
        async with self._changed:
            while True:
                wait = self.paused_until - self._clock()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), wait)
                    continue
                if self.in_flight < self.capacity:
                    self.in_flight += 1
                    return
                await self._changed.wait()

    async def release(self) -> None:
        self.in_flight -= 1
        if self._waiting:
            async with self._changed:
                self._changed.notify_all()

    def succeeded(self) -> None:
        if self.degraded:
            log.warning("delivery recovered from: %s", self.degraded)
        self.failures_in_a_row = 0
        self.degraded = ""
        self.limit = min(float(self.max), self.limit + 1.0 / self.limit)

    def failed(self, *, overload: bool) -> None:
        """A transient failure; `overload` (429, 5xx) also halves the pace."""
        self.failures_in_a_row += 1
        if overload:
            self.limit = max(1.0, self.limit / 2)
        if self.failures_in_a_row == self.circuit_failures:
            log.warning(
                "upstream failing: %d failures in a row; probing one at a time",
                self.failures_in_a_row,
            )

    def pause(self, seconds: float) -> None:
        until = self._clock() + seconds
        if until > self.paused_until:
            self.paused_until = until
            log.warning("upstream asked to wait %.1f s: every sender pauses", seconds)

    def config_problem(self, reason: str) -> None:
        """Delivery cannot work until a person fixes something; nothing is dropped."""
        self.degraded = reason
        self.failures_in_a_row += 1
        now = self._clock()
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.error("delivery degraded, records kept in the spool: %s", reason)
