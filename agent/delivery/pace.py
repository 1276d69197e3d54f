"""The pace: how many sends may be in flight, adapted to what the upstream shows it takes.

Across a network one record per request is bound by sends in flight / round-trip time, so
the pace must grow to what the rate needs, and shrink when the upstream pushes back:

* **Grows only when it binds** (an agent that needs 10 sends in flight keeps about 10, not
  `upstream.concurrency`: a fleet is not a stampede). In *slow start* (from the first send,
  and again after an outage) each success adds one while the limit is under twice the
  most sends seen in flight, so it doubles each round trip (as TCP's slow start, which
  counts a window as used when half of it is); after the first push-back, a success adds
  one per round of successes (additive), and only if a send has started at the limit
  since it last changed.
* **Shrinks on push-back**: a 429 or 5xx halves it, a send without an answer (timeout,
  reset) takes a quarter off, and a round trip well above the unloaded one (the recent
  average over `RTT_TOLERANCE` times the least round trip of the last minute or so, plus
  `MIN_RISE_S`) takes a tenth off, at most once per round trip: queues building up (at
  the upstream, or in the agent's own event loop) show in the latency before they show
  in errors, and sends beyond what the round trip allows only add to the queue.
* **Ceiling** `upstream.concurrency`; floor 1.
* After an outage it restarts in slow start from a jittered limit, so that agents which
  saw the same outage do not come back in step.

Pure: the clock and the random source are passed in; the gate calls it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Final

INITIAL_LIMIT: Final = 4.0
RTT_TOLERANCE: Final = 2.0  # a round trip this many times the long-run average is push-back
FAST_WEIGHT: Final = 0.1  # EWMA weight of a new round trip in the recent average
BASE_WINDOW_S: Final = 30.0  # the unloaded round trip: the least of this window and the last
WARM_UP: Final = 20  # round trips measured before latency may shrink the pace
MIN_RISE_S: Final = 0.05  # a rise smaller than this is noise (a busy event loop, jitter)


class Pace:
    def __init__(
        self,
        ceiling: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.ceiling = float(ceiling)
        self.limit = min(INITIAL_LIMIT, self.ceiling)
        self.slow_start = True
        self.rtt_fast = 0.0
        self._base_now = float("inf")  # the least round trip of this window
        self._base_before = float("inf")  # ... and of the window before
        self._window_ends = 0.0
        self._samples = 0
        self._clock = clock
        self._rng = rng or random.Random()
        self._last_cut = float("-inf")
        self._bound = False  # a send started at the limit since it last changed
        self._peak = 0  # the most sends in flight seen (slow start grows to twice it)

    def sent(self, in_flight: int) -> None:
        """A send started; `in_flight` sends (itself included) are out now."""
        if in_flight >= int(self.limit):
            self._bound = True
        self._peak = max(self._peak, in_flight)

    def succeeded(self) -> None:
        """A send was answered 2xx: one more is allowed if the limit was binding."""
        if self.slow_start:
            if self.limit < 2 * self._peak:
                self._set(min(self.ceiling, self.limit + 1.0))
            return
        if not self._bound:
            return  # the rate did not need the sends allowed: no reason to allow more
        self._set(min(self.ceiling, self.limit + 1.0 / self.limit))

    def overloaded(self) -> None:
        """A 429 or a 5xx: halve."""
        self._cut(0.5)

    def unanswered(self) -> None:
        """No answer (timeout, reset, refused): take a quarter off."""
        self._cut(0.75)

    @property
    def rtt_base(self) -> float:
        """The unloaded round trip: the least seen in the last one or two windows."""
        return min(self._base_now, self._base_before)

    def observe_rtt(self, seconds: float) -> None:
        """One answered send took `seconds`: a round trip rising over the unloaded one is
        push-back."""
        now = self._clock()
        if now >= self._window_ends:
            self._base_before, self._base_now = self._base_now, float("inf")
            self._window_ends = now + BASE_WINDOW_S
        self._base_now = min(self._base_now, seconds)
        self.rtt_fast = seconds if self._samples == 0 else self.rtt_fast
        self._samples += 1
        self.rtt_fast += FAST_WEIGHT * (seconds - self.rtt_fast)
        if (
            self._samples > WARM_UP
            and self.rtt_fast > RTT_TOLERANCE * self.rtt_base + MIN_RISE_S
            and now - self._last_cut >= self.rtt_fast
        ):
            self._cut(0.9)

    def restart(self) -> None:
        """After an outage: slow start again, from a jittered limit."""
        self._set(min(self.ceiling, INITIAL_LIMIT * self._rng.uniform(0.5, 1.5)))
        self.slow_start = True
        self._peak = 0

    def _cut(self, factor: float) -> None:
        self._set(max(1.0, self.limit * factor))
        self.slow_start = False
        self._last_cut = self._clock()

    def _set(self, limit: float) -> None:
        if int(limit) != int(self.limit):
            self._bound = False  # to grow again, a send must reach the new limit
        self.limit = limit
