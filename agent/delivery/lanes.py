"""Which record goes next: one lane per (customerId, dimensionId, ordered), served in turn.

Order changes the bill for Paigo's `last` aggregation and for `invoice=true` (both charge
the difference from the previous value), so such records travel in an *ordered* lane: one
in flight at a time, in the order they were accepted. Every other record travels in an
unordered lane, with no limit per lane. Lanes with work are served round-robin, so one busy
pair never holds up the rest. A lane can be *held* until a given time, its records waiting
while the others flow: for a retry's backoff; and *apart*, when its records wait for a
reason of their own and must not take the others' place in the intake's window: *parked*
when the upstream said 404 for its customer or dimension, or while a record's unknown
outcome settles before it can be checked. The records at the back of lanes held apart can
be given back (`give_back`): the intake hands them to the spool, to read again later, when
they would fill its window.

Pure bookkeeping: no I/O, no clock of its own (times are passed in).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

LaneKey = tuple[str, str, bool]  # customerId, dimensionId, ordered
T = TypeVar("T")


@dataclass(eq=False, slots=True)
class Lane(Generic[T]):
    key: LaneKey
    items: deque[T] = field(default_factory=deque)
    in_flight: int = 0
    held_until: float = 0.0
    parked: bool = False  # held because the upstream does not know the pair (404)
    apart: bool = False  # held for a reason of its own records (parked, settling)
    queued: bool = False  # in the round-robin queue
    ordered: bool = field(init=False)  # (key[2], kept apart: it is asked for every record)

    def __post_init__(self) -> None:
        self.ordered = self.key[2]

    def eligible(self, now: float) -> bool:
        if not self.items or now < self.held_until:
            return False
        return not self.ordered or self.in_flight == 0


class Lanes(Generic[T]):
    def __init__(self) -> None:
        self._lanes: dict[LaneKey, Lane[T]] = {}
        self._ready: deque[Lane[T]] = deque()
        self._held: dict[LaneKey, Lane[T]] = {}
        self.buffered = 0  # items held, in flight or not

    @property
    def ready(self) -> bool:
        """Whether a lane may have an item to take (one offered, not yet looked at)."""
        return bool(self._ready)

    def add(self, key: LaneKey, item: T, now: float) -> None:
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = Lane(key)
        lane.items.append(item)
        self.buffered += 1
        self._offer(lane, now)

    def take(self, now: float, *, unordered_only: bool = False) -> tuple[Lane[T], T] | None:
        """The next item to send, from the next eligible lane in turn; None when none is."""
        for _ in range(len(self._ready)):
            lane = self._ready.popleft()
            lane.queued = False
            if not lane.eligible(now):
                continue
            if unordered_only and lane.ordered:
                self._offer(lane, now, force=True)
                continue
            item = lane.items.popleft()
            lane.in_flight += 1
            self._offer(lane, now)
            return lane, item
        return None

    def fill(
        self,
        taken: list[tuple[Lane[T], T]],
        now: float,
        max_items: int,
        max_size: int,
        size_of: Callable[[T], int],
    ) -> list[tuple[Lane[T], T]]:
        """Add items of unordered lanes to `taken`, in turn, while they fit the limits."""
        size = sum(size_of(item) for _, item in taken)
        while len(taken) < max_items:
            more = self.take(now, unordered_only=True)
            if more is None:
                break
            lane, item = more
            while True:  # the rest of this lane's run at once: one turn, not one per item
                size += size_of(item)
                if size > max_size:
                    self.put_back(lane, item, now)
                    return taken
                taken.append((lane, item))
                if len(taken) >= max_items or not lane.items:
                    break
                item = lane.items.popleft()
                lane.in_flight += 1
        return taken

    def done_all(self, lanes: Iterable[Lane[T]], now: float) -> None:
        """An item taken from each of `lanes` is finished (delivered or dead-lettered):
        a batch's, in one call."""
        for lane in lanes:
            lane.in_flight -= 1
            self.buffered -= 1
            self._offer(lane, now)
            if not lane.items and lane.in_flight == 0:
                self._lanes.pop(lane.key, None)

    def put_back(
        self,
        lane: Lane[T],
        item: T,
        now: float,
        *,
        until: float = 0.0,
        parked: bool = False,
        apart: bool = False,
    ) -> None:
        """The item goes back to the front of its lane (to be sent again, first); with
        `until`, the lane is held until then (`parked`: because of a 404, and so `apart`)."""
        lane.in_flight -= 1
        lane.items.appendleft(item)
        if until > lane.held_until:
            lane.held_until = until
            lane.parked = lane.parked or parked
            lane.apart = lane.apart or apart or parked
            self._held[lane.key] = lane
        self._offer(lane, now)

    def release_held(self, now: float) -> int:
        """Offer again the lanes whose holding time is over (only held lanes are looked
        at: there may be a lane per customer); the items they offer."""
        released = 0
        for key, lane in list(self._held.items()):
            if lane.held_until <= now:
                lane.held_until = 0.0
                lane.parked = lane.apart = False
                del self._held[key]
                self._offer(lane, now)
                released += len(lane.items)
        return released

    def next_release_s(self, now: float) -> float:
        """Seconds until the first held lane's time is over (inf when no lane is held)."""
        return min((lane.held_until for lane in self._held.values()), default=math.inf) - now

    def parked(self, now: float) -> list[LaneKey]:
        return [k for k, lane in self._held.items() if lane.parked and lane.held_until > now]

    def held_apart(self, now: float) -> int:
        """Records that wait for a reason of their own: their lane is held apart."""
        return sum(
            len(lane.items) for lane in self._held.values() if lane.apart and lane.held_until > now
        )

    def holds(self, key: LaneKey) -> bool:
        """Whether the lane has items, waiting or in flight."""
        lane = self._lanes.get(key)
        return lane is not None and (bool(lane.items) or lane.in_flight > 0)

    def give_back(self, now: float, can_go: Callable[[LaneKey, T], bool]) -> dict[LaneKey, list[T]]:
        """Take out the items at the back of every lane held apart, as far back as
        `can_go` allows and never the first (the lane stays until it is sent): by lane,
        in lane order."""
        given: dict[LaneKey, list[T]] = {}
        for key, lane in self._held.items():
            if not (lane.apart and lane.held_until > now):
                continue
            items: list[T] = []
            while len(lane.items) > 1 and can_go(key, lane.items[-1]):
                items.append(lane.items.pop())
            if items:
                items.reverse()
                given[key] = items
                self.buffered -= len(items)
        return given

    def _offer(self, lane: Lane[T], now: float, *, force: bool = False) -> None:
        if not lane.queued and (force or lane.eligible(now)):
            lane.queued = True
            self._ready.append(lane)
