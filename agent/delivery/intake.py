"""Intake: entries from the spool into the lanes, a bounded window of them at a time.

The intake holds at most `window` records that can be sent; the records of a held lane
(parked, or settling) do not count, so a parked customer never starves the rest. An entry
that is not a readable record leaves at once through `Exits.unreadable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from agent.config import UpstreamConfig
from agent.delivery.exits import Exits
from agent.delivery.item import Item, make_item
from agent.delivery.lanes import Lanes
from agent.delivery.recheck import Resolver
from agent.spool.reader import Entry

IDLE_POLL_S: Final = 0.05
READ_BATCH: Final = 1000  # records per spool read: about a millisecond of the event loop


class SpoolOut(Protocol):
    """What the sender needs of the spool."""

    spool_id: str

    @property
    def saved_cursor(self) -> int: ...

    async def read(self, max_records: int) -> list[Entry]: ...

    async def wait_for_data(self, timeout: float) -> None: ...

    def ack(self, seqs: Sequence[int]) -> None: ...


class Intake:
    def __init__(
        self,
        spool: SpoolOut,
        lanes: Lanes[Item],
        exits: Exits,
        resolver: Resolver | None,
        config: UpstreamConfig,
        *,
        window: int,
        work: asyncio.Event,
        catalog_order: Callable[[], frozenset[str]] = frozenset,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`catalog_order`: the dimensions delivered in order besides the configured ones
        (the catalog's `last` dimensions)."""
        self._spool = spool
        self._lanes = lanes
        self._exits = exits
        self._resolver = resolver
        self._id_key = config.id_key
        self._configured_order = frozenset(config.ordered_dimensions)
        self._catalog_order = catalog_order
        self._window = window
        self._work = work  # set when records were added
        self._clock = clock
        self.room = asyncio.Event()  # set by the senders when records left or went back
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True
        self.room.set()

    async def run(self) -> None:
        while not self._stopping:
            now = self._clock()
            self._lanes.release_held(now)
            room = self._window - (self._lanes.buffered - self._lanes.held_items(now))
            if room <= 0:
                self.room.clear()
                await wait_for(self.room, 1.0)
                continue
            entries = await self._spool.read(min(room, READ_BATCH))
            if not entries:
                await self._spool.wait_for_data(IDLE_POLL_S)
                continue
            await asyncio.sleep(0)  # reads do not suspend: let ingest and sends run between
            ordered = self._configured_order | self._catalog_order()
            for entry in entries:
                await self._admit(entry, now, ordered)
            self._work.set()

    async def _admit(self, entry: Entry, now: float, ordered: frozenset[str]) -> None:
        try:
            key, item = make_item(
                entry.seq, entry.payload, self._spool.spool_id, self._id_key, ordered
            )
        except (ValueError, KeyError, TypeError) as exc:  # not a record we can send
            await self._exits.unreadable(entry.seq, entry.payload, exc)  # else: kept, read
            return  # again after a restart
        if self._resolver is not None and self._resolver.starts_unknown(entry.seq):
            item.unknown_since, item.marked = now, True
            self._exits.undecided.add(item.id)
        self._lanes.add(key, item, now)


async def wait_for(event: asyncio.Event, timeout: float) -> None:
    """Wait for `event` at most `timeout` seconds. (asyncio.timeout, not wait_for: on
    Python 3.11 wait_for can swallow a cancellation that arrives as the event is set,
    and a task that swallows its cancellation never ends.)"""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
