"""Backing off as one client: every send passes this gate first.

* **Backoff, shared**: from the second failure in a row (no answer, 429, 5xx, a
  configuration problem; no success between), every sender waits, not only the one that
  failed. The wait grows exponentially with the failures in a row (tenacity's exponential
  strategy, full jitter by default, capped at `retry.max_backoff_s`); a success resets it.
  Failures of sends that started before the last counted failure do not grow it again:
  32 sends that fail together are one failure. So however the upstream refuses, the
  agent's request rate falls to about one per backoff: no status can make it hammer the
  upstream. A lone failure among successes (a 5 % error rate) pauses nobody: the record
  that failed waits out its own backoff (`backoff_s`, in its lane), the rest flow.
* **Pause**: a Retry-After (429, 503) holds every sender until then.
* **Circuit**: after `retry.circuit_failures` failures in a row, one send at a time; the
  first success closes it.
* **Pace** (`pace.py`): the number of sends in flight adapts to what the upstream takes:
  it grows (slow start, then additive) while answers are 2xx and the limit binds, up to
  `upstream.concurrency`; it shrinks on 429 and 5xx, on sends without an answer, and on a
  rising round-trip time; after an outage it starts again from a jittered low limit.
* **Degraded**: a configuration problem (refused credentials, 403, every request 404)
  is a reason shown in `/readyz` and `/status`; sends go on one at a time with backoff.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from tenacity import AsyncRetrying, RetryCallState, wait_exponential, wait_random_exponential
from tenacity.wait import wait_base

from agent.config import RetryConfig
from agent.delivery.pace import Pace
from agent.delivery.policy import Decision, Health
from agent.delivery.wakeup import Wakeup

log = logging.getLogger(__name__)

SHARED_FROM: Final = 2  # failures in a row from which every sender waits
LOG_EVERY_S: Final = 60.0
RECHECK_S: Final = 1.0  # a sender waiting for a place looks again at least this often


def backoff_strategy(retry: RetryConfig) -> wait_base:
    """Seconds to wait after the n-th failure in a row, as tenacity computes them."""
    kind = wait_random_exponential if retry.jitter else wait_exponential
    return kind(
        multiplier=retry.initial_backoff_s, max=retry.max_backoff_s, exp_base=retry.multiplier
    )


class Gate:
    def __init__(
        self,
        max_concurrency: int,
        retry: RetryConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max = max_concurrency
        self.circuit_failures = retry.circuit_failures
        self.pace = Pace(max_concurrency, clock=clock)
        self.in_flight = 0
        self.paused_until = 0.0  # no send starts before this (backoff or Retry-After)
        self.failures_in_a_row = 0
        self.degraded = ""
        self._clock = clock
        self._strategy = backoff_strategy(retry)
        self._attempt = RetryCallState(AsyncRetrying(), None, (), {})
        self._round = 0  # grows with each counted failure; a send carries the round it began in
        self._turns = Wakeup()  # senders waiting for a place or for a pause to end
        self._waiting = 0
        self._logged_at = -LOG_EVERY_S
        self._failing_since: float | None = None  # when the circuit opened or degraded began
        self.waiting_records: Callable[[], int] = lambda: 0  # for the recovery's log line

    @property
    def limit(self) -> float:
        """Sends allowed in flight now, by the pace (the circuit and degraded aside)."""
        return self.pace.limit

    @property
    def circuit_open(self) -> bool:
        return self.failures_in_a_row >= self.circuit_failures

    @property
    def capacity(self) -> int:
        if self.circuit_open or self.degraded:
            return 1
        return max(1, int(self.limit))

    @property
    def ticket(self) -> int:
        """The round a send that begins now belongs to (what `acquire` returns)."""
        return self._round

    def paused_for(self) -> float:
        return max(0.0, self.paused_until - self._clock())

    async def acquire(self) -> int:
        """Wait until a send may start: not paused, and under the current capacity. The
        ticket returned goes back with the send's outcome (`record`)."""
        if self.in_flight < self.capacity and self.paused_until <= self._clock():
            self.in_flight += 1  # the usual case, decided without a suspension point
            self.pace.sent(self.in_flight)
            return self._round
        self._waiting += 1
        try:
            await self._wait_turn()
        finally:
            self._waiting -= 1
        return self._round

    async def _wait_turn(self) -> None:
        while True:
            wait = self.paused_until - self._clock()
            if wait > 0:
                await self._turns.wait(wait)
                continue
            if self.in_flight < self.capacity:
                self.in_flight += 1
                self.pace.sent(self.in_flight)
                return
            await self._turns.wait(RECHECK_S)  # (the pace may also grow without a release)

    def release(self) -> None:
        """A send ended: wake as many waiting senders as there are places now (not every
        waiter: with hundreds of senders and a pace below them, waking all on each release
        cost more CPU than the sends)."""
        self.in_flight -= 1
        free = self.capacity - self.in_flight
        if self._waiting and free > 0:
            self._turns.notify(free)

    def wake_all(self) -> None:
        """Let every waiting sender look again (at stop)."""
        self._turns.notify_all()

    def record(self, decision: Decision, ticket: int) -> None:
        """Take what one answer says about the upstream as a whole."""
        health = decision.health
        if health is Health.HEALTHY:
            self.succeeded()
        elif health is Health.FAILING:
            self.failed(ticket, overload=False, unanswered=True)
        elif health is Health.OVERLOADED:
            self.failed(ticket, overload=True)
            if decision.pause_s:
                self.pause(decision.pause_s)
        elif health is Health.MISCONFIGURED:
            self.config_problem(decision.reason, ticket)

    def succeeded(self) -> None:
        if self.degraded:
            log.warning("delivery recovered from: %s", self.degraded)
        if self._failing_since is not None:
            log.warning(
                "upstream recovered after %.0f s, %d records waiting",
                self._clock() - self._failing_since,
                self.waiting_records(),
            )
            self._failing_since = None
        if self.circuit_open:
            self.pace.restart()  # after an outage: slow start from a jittered limit
        self.failures_in_a_row = 0
        self.degraded = ""
        self.pace.succeeded()

    def failed(self, ticket: int, *, overload: bool, unanswered: bool = False) -> None:
        """A send that began in round `ticket` failed; `overload` (429, 5xx) also halves
        the pace, `unanswered` (no answer) cuts it by a quarter. Only a send of the current
        round counts as a new failure in a row."""
        if ticket != self._round:
            return  # it began before the backoff now in force: already counted
        self._round += 1
        self.failures_in_a_row += 1
        if overload:
            self.pace.overloaded()
        elif unanswered:
            self.pace.unanswered()
        if self.failures_in_a_row >= SHARED_FROM:
            wait = self.backoff_s(self.failures_in_a_row - SHARED_FROM + 1)
            self.paused_until = max(self.paused_until, self._clock() + wait)
        if self.failures_in_a_row == self.circuit_failures:
            self._failing_since = self._clock()
            log.warning(
                "upstream failing: %d failures in a row; probing one at a time",
                self.failures_in_a_row,
            )

    def backoff_s(self, failures: int) -> float:
        """Seconds to wait after `failures` failures in a row (one record's, or everyone's)."""
        self._attempt.attempt_number = max(1, failures)
        return float(self._strategy(self._attempt))

    def pause(self, seconds: float) -> None:
        until = self._clock() + seconds
        if until > self.paused_until:
            self.paused_until = until
            log.warning("upstream asked to wait %.1f s: every sender pauses", seconds)

    def config_problem(self, reason: str, ticket: int) -> None:
        """Delivery cannot work until a person fixes something; nothing is dropped, and
        the probes back off like any failure."""
        self.degraded = reason
        self.failed(ticket, overload=False)
        if self._failing_since is None:
            self._failing_since = self._clock()
        now = self._clock()
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.error("delivery degraded, records kept in the spool: %s", reason)
