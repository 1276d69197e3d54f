"""Intake: entries from the spool into the lanes, a bounded window of them at a time.

The intake holds at most `window` records that can be sent; the records of a lane held
apart (parked, or settling) do not count, up to another `window` of them. Beyond that,
the records at the back of those lanes that were never sent are given back to the spool
(`Spool.release`), and so is every later record of those lanes; once one of them has
sent the records it kept (its pair is back), the spool reads again from the first record
given back (`Spool.rewind`), in order. So a parked customer never starves the rest,
whatever its backlog, and memory stays bounded. Records held for a retry's backoff count:
during an outage the intake reads no further than its window. An entry that is not a
readable record leaves at once through `Exits.unreadable`.

With rollups (`agent.delivery.rollup`), the records of rolled-up dimensions go to their
groups instead, and a closed group's rollup enters a lane (the sender writes its formation
to the ledger before its first send). After a restart, a record that belongs to a formation
in the ledger brings back that rollup (once, as possibly sent) instead of joining a new
group; a record of a rollup that was never sent joins a new group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final, Protocol

from agent.config import UpstreamConfig
from agent.delivery.exits import Exits
from agent.delivery.item import Item, item_of, rollup_item
from agent.delivery.lanes import LaneKey, Lanes
from agent.delivery.recheck import Resolver
from agent.delivery.rollup import Formation, Rollups
from agent.delivery.wakeup import Wakeup
from agent.ingest_first import SLICE_RECORDS, IngestFirst
from agent.records import Envelope, Record, decode_envelope
from agent.spool.reader import Entry

log = logging.getLogger(__name__)

CATALOG_POLL_S: Final = 0.05  # rollups wait for the catalog: how often the intake looks
MAX_WAIT_S: Final = 1.0  # the intake looks again at least this often
READ_BATCH: Final = 1000  # records per spool read (fewer while apps post: agent.ingest_first)


class SpoolOut(Protocol):
    """What the sender needs of the spool."""

    spool_id: str

    def consumed_durably(self, seqs: Sequence[int]) -> bool: ...

    async def read(self, max_records: int) -> list[Entry]: ...

    async def wait_for_data(self, timeout: float) -> None: ...

    def ack(self, seqs: Sequence[int]) -> None: ...

    def release(self, seqs: Iterable[int]) -> None: ...

    def rewind(self) -> None: ...


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
        work: Wakeup,
        batch: int = 1,
        catalog_order: Callable[[], frozenset[str]] = frozenset,
        rollups: Rollups | None = None,
        formed: dict[int, Formation] | None = None,
        first: IngestFirst | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`catalog_order`: the dimensions delivered in order besides the configured ones
        (the catalog's `last` dimensions); `rollups`: the groups of rolled-up records;
        `formed`: the rollups in the ledger from before a restart, by member seq; `first`:
        the apps' requests, which go first (`agent.ingest_first`)."""
        self._spool = spool
        self._lanes = lanes
        self._exits = exits
        self._resolver = resolver
        self._id_key = config.id_key
        self._configured_order = frozenset(config.ordered_dimensions)
        self._catalog_order = catalog_order
        self._window = window
        self._work = work  # notified when records were added
        self._batch = batch  # records a sender takes at a time, at most
        self._clock = clock
        self._first = first or IngestFirst()
        self.room = asyncio.Event()  # set by the senders when records left or went back
        self._stopping = False
        self._rollups = rollups
        self._formed = formed if formed is not None else {}
        self._brought_back: set[str] = set()  # rollups formed before the restart, in lanes
        self._given_back: set[LaneKey] = set()  # lanes whose later records go back too
        self.records_given_back = 0

    def stop(self) -> None:
        self._stopping = True
        self.room.set()

    async def run(self) -> None:
        while not self._stopping:
            now = self._clock()
            if self._rollups is not None:
                self._form(self._rollups, now)
            apart = self._lanes.held_apart(now)
            if self._given_back:
                self._rewind_if_free()
            if apart > self._window:
                apart -= self._give_back(now)
            room = self._window - (self._lanes.buffered - min(self._window, apart))
            if self._rollups is not None and self._rollups.waiting_for_catalog:
                await asyncio.sleep(CATALOG_POLL_S)
                continue
            if room <= 0 or (self._rollups is not None and self._rollups.full):
                self.room.clear()
                await wait_for(self.room, self._quiet_s())
                continue
            await self._first.turn()  # the apps' requests first (reads do not suspend)
            most = SLICE_RECORDS if self._first.apps_posting else READ_BATCH
            entries = await self._spool.read(min(room, most))
            if not entries:
                await self._spool.wait_for_data(self._quiet_s())
                continue
            ordered = self._configured_order | self._catalog_order()
            before = self._lanes.buffered
            admit = self._admit  # (a plain call per record: no coroutine for each)
            errors = [(entry, admit(entry, now, ordered)) for entry in entries]
            self._work.notify_for(self._lanes.buffered - before, self._batch)
            for entry, error in errors:
                if error is not None:  # a dead letter; if it cannot be written, read again
                    await self._exits.unreadable(entry.seq, entry.payload, error)  # at restart

    def _admit(self, entry: Entry, now: float, ordered: frozenset[str]) -> Exception | None:
        """The entry into a lane, a group or (a rollup's member from before a restart) its
        rollup; the error when it is not a record we can send."""
        seq = entry.seq
        if self._formed and (formation := self._formed.pop(seq, None)) is not None:
            self._bring_back(formation, now, ordered)
            return None
        try:
            envelope = decode_envelope(entry.payload)
            record = envelope.record()
            unknown = self._resolver is not None and self._resolver.starts_unknown(seq)
            rollups = self._rollups
            if rollups is not None and not unknown and not envelope.invoice:
                aggregation = rollups.aggregation_of(str(record["dimensionId"]))
                if aggregation is not None and rolled_up(
                    rollups, seq, envelope, record, aggregation
                ):
                    return None
            key, item = item_of(
                seq,
                envelope,
                record,
                spool_id=self._spool.spool_id,
                id_key=self._id_key,
                ordered_dims=ordered,
            )
        except (ValueError, KeyError, TypeError) as exc:  # not a record we can send
            return exc
        if self._given_back and key in self._given_back:  # its lane's others wait in the
            self._spool.release((seq,))  # spool: so does it, to keep their order
            self.records_given_back += 1
            return None
        if unknown:
            self._possibly_sent(item, now)
        self._lanes.add(key, item, now)
        return None

    def _possibly_sent(self, item: Item, now: float) -> None:
        item.unknown_since, item.marked = now, True
        self._exits.undecided.add(item.id)

    # --- lanes held apart beyond the window ---------------------------------------------

    def _give_back(self, now: float) -> int:
        """The never-sent records at the back of the lanes held apart, back to the spool:
        how many."""
        given = self._lanes.give_back(now, self._can_go_back)
        seqs = [item.seq for items in given.values() for item in items]
        self._spool.release(seqs)
        self._given_back.update(given)
        self.records_given_back += len(seqs)
        if seqs:
            log.info(
                "%d records of %d lanes held apart (parked or settling) given back to the "
                "spool, to be read again when their pair is back",
                len(seqs),
                len(given),
            )
        return len(seqs)

    def _can_go_back(self, key: LaneKey, item: Item) -> bool:
        """`_never_sent`, and not in an ordered lane that rollups also enter (a rollup
        formed meanwhile would go before the records given back)."""
        _, dimension, ordered = key
        if ordered and self._rollups is not None and self._rollups.aggregation_of(dimension):
            return False
        return _never_sent(item)

    def _rewind_if_free(self) -> None:
        """Once a lane that gave records back has sent what it kept (its pair is back),
        read them again. (The other lanes' too: one still held gives them back again.)"""
        if all(self._lanes.holds(key) for key in self._given_back):
            return
        self._given_back.clear()
        self._spool.rewind()

    # --- rollups ----------------------------------------------------------------------------

    def _form(self, rollups: Rollups, now: float) -> None:
        """Close the groups whose time has come: their rollups into the lanes. (A rollup's
        formation is written to the ledger by the sender, before its first send.)"""
        formations = rollups.due()
        if not formations:
            return
        ordered = self._configured_order | self._catalog_order()
        received_ms = int(time.time() * 1000)
        for formation in formations:
            key, item = rollup_item(formation, self._id_key, received_ms, ordered)
            self._lanes.add(key, item, now)
        self._work.notify(len(formations))

    def _bring_back(self, formation: Formation, now: float, ordered: frozenset[str]) -> None:
        """A member of a rollup formed before the restart: that rollup, once, possibly sent."""
        if formation.id in self._brought_back:
            return
        self._brought_back.add(formation.id)
        key, item = rollup_item(formation, self._id_key, int(time.time() * 1000), ordered)
        item.marked = True
        if self._resolver is not None:
            self._possibly_sent(item, now)
        self._lanes.add(key, item, now)

    def _quiet_s(self) -> float:
        """How long the intake may wait for data, or for room (every sender sets it when
        records leave or go back, and when held lanes are released): until the next group
        closes, and at most `MAX_WAIT_S`."""
        rollup_s = self._rollups.next_due_s() if self._rollups is not None else MAX_WAIT_S
        return max(0.0, min(MAX_WAIT_S, rollup_s))


def _never_sent(item: Item) -> bool:
    """A record that can go back to the spool: one of its own, never sent, nothing known of
    it that the spool does not keep."""
    never = item.attempts == 0 and not item.marked and item.unknown_since is None
    return never and item.rollup is None


def rolled_up(
    rollups: Rollups, seq: int, envelope: Envelope, record: Record, aggregation: str
) -> bool:
    """Whether the record joined its group. One that cannot join (a value with more digits
    than a rollup keeps, an instant it cannot place) is sent on its own: it was accepted,
    so it is never a dead letter for this."""
    try:
        rollups.add(seq, envelope, record, aggregation)
    except (ArithmeticError, ValueError):
        return False
    return True


async def wait_for(event: asyncio.Event, timeout: float) -> None:
    """Wait for `event` at most `timeout` seconds. (asyncio.timeout, not wait_for: on
    Python 3.11 wait_for can swallow a cancellation that arrives as the event is set,
    and a task that swallows its cancellation never ends.)"""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
