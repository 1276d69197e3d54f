"""Verified delivery: some minutes after a 2xx, read the record back from Paigo.

Paigo writes after its 201, asynchronously, and a failed write is only logged on its side
(`../shared/PAIGO.md`): a 201 does not prove storage. So with `[verify] mode = "all"`
(`"sample"`: a share of records, chosen by their id) a delivered record is not forgotten at
its 2xx. It goes into the *verify spool* (`<spool.dir>/verify/`, a side spool: fsynced,
checksummed, recovered like the usage spool), and only once it is there durably is it
acknowledged in the usage spool. So a record delivered before a crash is verified after it:
either its entry was written, or the record is still in the usage spool and is delivered
(or found) again. An entry is one JSON object:

    {"k": stable id, "c": customerId, "d": dimensionId, "t": timestamp, "v": recordValue,
     "i": invoice, "at": Unix time of delivery, "b": the exact JSON body that was sent}

`verify.delay_s` (300 s) after delivery, the entries are read back by customer and by
`upstream.read_chunk_s` window, by the read rules and the `verdict` that `usage-agent
reconcile` uses (`agent.delivery.reads`):

* verified: the entry is acknowledged (forgotten);
* missing: the body is sent again, byte-identical (Paigo's store overwrites an identical
  point, so a resend of a record stored late cannot double it), counted as repaired, and
  the record is verified again after another delay;
* doubled: counted and reported (log, `/status`), never touched: Paigo has no delete API;
* differs (held with another value or instant): reported like a double;
* not readable yet (its instant is not past): verified again after another delay;
* missing, but still *undecided* in the usage spool (a crash came between its verify entry
  and its acknowledgement, `agent.delivery.exits`): dropped here. The usage spool's
  effectively-once check finds or sends it, and it comes back for verification when it
  leaves; a repair from here as well could send it twice.

Cost is bounded: one read at a time, at most `verify.max_reads_per_s`; reads back off on
failure (with `retry.*`) and wait while delivery itself is backing off, so verification
never takes sends' place. The verify spool holds at most `verify.max_bytes` (counted in
`spool.max_bytes`, and keeping the ingest reserve free): beyond it, delivered records are
acknowledged unverified and counted (`skipped`), never held back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final

import orjson

from agent.config import Config
from agent.delivery.auth import TokenError, Tokens
from agent.delivery.deadletter import DeadLetter, DeadLetterFile
from agent.delivery.item import Item
from agent.delivery.reads import Verdict, by_stamp, instant, latest_end, verdict
from agent.delivery.uplink import (
    REFUSED_TOKEN,
    LookupFailed,
    Outcome,
    Reply,
    Upstream,
    read_usage_refreshing,
)
from agent.errors import SpoolError
from agent.logs import Throttled
from agent.spool.side import side_spool

log = logging.getLogger(__name__)

FLUSH_S: Final = 0.05  # how often delivered records are written to the verify spool
READ_AHEAD: Final = 20_000  # entries held in memory (about 10 MB), waiting for their delay
BATCH: Final = 20_000  # entries verified in one round: the more, the more records a read holds
MAX_GATHER_S: Final = 60.0  # a due entry waits at most this long for others to join it
REPORTED_IDS: Final = 20  # the latest doubled ids kept for /status
ONE_MS: Final = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class Delivered:
    """One entry of the verify spool."""

    id: str
    customer: str
    dimension: str
    timestamp: str
    value: str
    invoice: bool
    at: float
    body: bytes

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "k": self.id,
                "c": self.customer,
                "d": self.dimension,
                "t": self.timestamp,
                "v": self.value,
                "i": self.invoice,
                "at": self.at,
                "b": self.body.decode(),
            }
        )

    @classmethod
    def decode(cls, payload: bytes) -> Delivered:
        e = orjson.loads(payload)
        return cls(e["k"], e["c"], e["d"], e["t"], e["v"], e["i"], e["at"], e["b"].encode())

    @classmethod
    def of(cls, item: Item, at: float) -> Delivered:
        fields = item.fields
        return cls(
            item.id,
            item.customer,
            item.dimension,
            str(fields["timestamp"]),
            str(fields["recordValue"]),
            item.envelope.invoice,
            at,
            item.body,
        )

    def again(self, at: float) -> Delivered:
        return Delivered(
            self.id, self.customer, self.dimension, self.timestamp, self.value, self.invoice,
            at, self.body,
        )  # fmt: skip


@dataclass
class VerifyStatus:
    mode: str
    unverified: int = 0  # entries in the verify spool
    oldest_unverified_age_s: float | None = None
    verified: int = 0
    repaired: int = 0
    doubles_detected: int = 0
    differing: int = 0
    skipped: int = 0  # delivered, but not queued: the verify spool was full or failed
    left_to_check: int = 0  # missing, still undecided in the usage spool: left to its check
    reads: int = 0
    reads_failed: int = 0
    doubled_ids: list[str] = field(default_factory=list)
    last_error: str = ""

    def as_dict(self) -> dict[str, object]:
        out = dict(vars(self))
        out["records_per_read"] = round(self.verified / self.reads, 1) if self.reads else None
        return out


class VerifyFailed(Exception):
    """A round could not finish (a read or a resend failed): back off, then again."""


class Verifier:
    def __init__(
        self,
        config: Config,
        uplink: Upstream,
        tokens: Tokens,
        dead_letters: DeadLetterFile,
        *,
        mode: str,
        reserve: int,
        ack: Callable[[Sequence[int]], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`ack`: acknowledges records in the usage spool; `reserve`: the ingest reserve
        the verify spool leaves. Set after: `blocked`, delivery is backing off and
        verification waits; `undecided`, a record's id is still undecided in the usage
        spool."""
        self._spool = side_spool(config.spool, "verify", config.verify.max_bytes, reserve=reserve)
        self._config = config.verify
        self._upstream = config.upstream
        self._retry = config.retry
        self._uplink = uplink
        self._tokens = tokens
        self._dead_letters = dead_letters
        self._ack_delivered = ack
        self.blocked: Callable[[], bool] = lambda: False
        self.undecided: Callable[[str], bool] = lambda record_id: False
        self._clock = clock
        self._fraction = 1.0 if mode == "all" else config.verify.sample_fraction
        self._pending: list[tuple[list[int], Delivered | None]] = []  # (usage seqs, entry)
        self._queue: deque[tuple[int, Delivered]] = deque()  # (verify seq, entry), in order
        self._next_read = 0.0
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.status = VerifyStatus(mode)
        self._doubled: deque[str] = deque(maxlen=REPORTED_IDS)
        self._failed = Throttled(log, "verification could not finish a round")
        self._skipped = Throttled(log, "delivered records could not be queued for verification")

    @property
    def bytes_used(self) -> int:
        return self._spool.bytes_used

    async def start(self) -> None:
        self._spool.open()
        await self._spool.start()
        self._tasks = [
            asyncio.create_task(self._verify_loop(), name="verify"),
            asyncio.create_task(self._flush_loop(), name="verify-flush"),
        ]

    async def stop(self) -> None:
        """Write what was delivered (and acknowledge it), then close the verify spool. A
        round under way is cancelled: what it had not finished is verified after the next
        start. A flush is never cancelled (its records would stay unacknowledged)."""
        self._stopping = True
        verifying, flushing = self._tasks
        verifying.cancel()
        await asyncio.gather(verifying, flushing, return_exceptions=True)
        self._tasks = []
        await self._flush()
        await self._spool.close()

    # --- taking delivered records ---------------------------------------------------------

    def note(self, items: Sequence[Item]) -> None:
        """Records delivered (or found): kept for verification, then acknowledged in the
        usage spool by the next flush (the others of a sample, at once)."""
        now = self._clock()
        for item in items:
            entry = Delivered.of(item, now) if self._chosen(item.id) else None
            self._pending.append((item.seqs, entry))

    def _chosen(self, record_id: str) -> bool:
        return self._fraction >= 1.0 or zlib.crc32(record_id.encode()) < self._fraction * 2**32

    async def _flush_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(FLUSH_S)
            await self._flush()

    async def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        entries = [entry.encode() for _, entry in pending if entry is not None]
        if entries:
            try:
                await self._spool.append(entries)
            except SpoolError as exc:  # delivered all the same: never held back for this
                self.status.skipped += len(entries)
                self._skipped.warning("%s; %d delivered unverified", exc, len(entries))
        self._ack_delivered([seq for seqs, _ in pending for seq in seqs])

    # --- verifying ------------------------------------------------------------------------

    async def _verify_loop(self) -> None:
        failures = 0
        while True:
            if self.blocked():  # delivery is backing off: so do reads
                await asyncio.sleep(1.0)
                continue
            due = await self._due()
            if not due:
                await asyncio.sleep(self._wait_s())
                continue
            try:
                await self._round(due)
            except VerifyFailed as exc:
                failures += 1
                self.status.reads_failed += 1
                self.status.last_error = str(exc)
                self._failed.warning("%s; %d records wait", exc, self.status.unverified)
                await asyncio.sleep(self._backoff_s(failures))
                continue
            failures = 0
            self.status.last_error = ""

    def _backoff_s(self, failures: int) -> float:
        retry = self._retry
        return float(
            min(retry.max_backoff_s, retry.initial_backoff_s * retry.multiplier ** (failures - 1))
        )

    def _wait_s(self) -> float:
        if not self._queue:
            return 1.0
        return min(1.0, max(0.05, self._queue[0][1].at + self._config.delay_s - self._clock()))

    async def _due(self) -> list[tuple[int, Delivered]]:
        """The entries whose delay has passed, oldest first (at most BATCH): once BATCH
        are due, or the oldest has waited a quarter of the delay more (at most a minute),
        so that one read holds many records of a customer."""
        if len(self._queue) < READ_AHEAD:
            for found in await self._spool.read(READ_AHEAD - len(self._queue)):
                self._queue.append((found.seq, Delivered.decode(found.payload)))
        self._update_status()
        delay = self._config.delay_s
        horizon = self._clock() - delay
        queue = self._queue
        gathered = bool(queue) and queue[0][1].at <= horizon - min(delay / 4, MAX_GATHER_S)
        full = len(queue) >= BATCH and queue[BATCH - 1][1].at <= horizon
        if not gathered and not full:
            return []
        due: list[tuple[int, Delivered]] = []
        while queue and len(due) < BATCH and queue[0][1].at <= horizon:
            due.append(queue.popleft())
        return due

    def _update_status(self) -> None:
        self.status.unverified = self._spool.backlog
        oldest = self._queue[0][1].at if self._queue else None
        self.status.oldest_unverified_age_s = (
            None if oldest is None else max(0.0, self._clock() - oldest)
        )

    async def _round(self, due: list[tuple[int, Delivered]]) -> None:
        """Verify `due`: group by customer and read window, read, judge, act. On failure
        the entries not finished go back to the front of the queue."""
        groups: dict[tuple[str, int], list[tuple[int, Delivered]]] = {}
        chunk = self._upstream.read_chunk_s
        latest = latest_end(self._clock())
        later = []
        for seq, entry in due:
            moment = instant(entry.timestamp)
            if moment + ONE_MS > latest:
                later.append((seq, entry))  # its instant cannot be read yet
                continue
            key = (entry.customer, int(moment.timestamp() // chunk))
            groups.setdefault(key, []).append((seq, entry))
        finished: set[int] = set()
        try:
            await self._again(later)
            finished.update(seq for seq, _ in later)
            for group in groups.values():
                await self._judge(group, finished)
        except VerifyFailed:
            self._queue.extendleft(reversed([pair for pair in due if pair[0] not in finished]))
            raise

    async def _judge(self, group: list[tuple[int, Delivered]], finished: set[int]) -> None:
        """Read one customer's window back and act on each entry's verdict; the seqs of
        the entries dealt with go into `finished`."""
        moments = [instant(entry.timestamp) for _, entry in group]
        window = (min(moments), max(moments) + ONE_MS)
        undecided = {entry.id for _, entry in group if self.undecided(entry.id)}
        await self._pace()
        try:
            read = await read_usage_refreshing(
                self._uplink, self._tokens, self._upstream.read_base, group[0][1].customer, window
            )
        except (LookupFailed, TokenError) as exc:
            raise VerifyFailed(f"reading back {group[0][1].customer!r}: {exc}") from None
        self.status.reads += 1
        held = by_stamp(read, self._upstream.id_key)
        repair = []
        for seq, entry in group:
            sent = {"timestamp": entry.timestamp, "recordValue": entry.value}
            judged = verdict(sent, held.get(entry.id, []))
            if judged is not Verdict.MISSING:
                self._count(entry, judged)
            elif entry.id in undecided or self.undecided(entry.id):  # (before or after the read)
                self.status.left_to_check += 1
            else:
                repair.append((seq, entry))
                continue
            self._spool.ack([seq])
            finished.add(seq)
        for seq, entry in repair:
            await self._repair(seq, entry)
            finished.add(seq)

    def _count(self, entry: Delivered, judged: Verdict) -> None:
        if judged is Verdict.VERIFIED:
            self.status.verified += 1
            return
        if judged is Verdict.DOUBLED:
            self.status.doubles_detected += 1
        else:
            self.status.differing += 1
        self._doubled.append(entry.id)
        self.status.doubled_ids = list(self._doubled)
        log.error(
            "record %s (customer %r, dimension %r) is %s at Paigo; it is left as it is",
            entry.id,
            entry.customer,
            entry.dimension,
            "held more than once" if judged is Verdict.DOUBLED else "held with other fields",
        )

    async def _repair(self, seq: int, entry: Delivered) -> None:
        """Send a missing record again, byte-identical; it is verified again later."""
        reply = await self._resend(entry)
        if 200 <= reply.status < 300:
            self.status.repaired += 1
            log.warning("record %s was missing at Paigo after its 2xx: sent again", entry.id)
        elif reply.outcome in (Outcome.REJECTED, Outcome.TOO_LARGE):
            await self._refused(seq, entry, reply)
            return
        elif not reply.outcome_unknown:  # not stored: try again after a backoff
            raise VerifyFailed(f"repairing {entry.id}: {reply.status or reply.error}")
        await self._again([(seq, entry)])  # stored or not, the next round will tell

    async def _resend(self, entry: Delivered) -> Reply:
        try:
            token = await self._tokens.get()
            reply = await self._uplink.post(entry.body, token, entry.invoice)
            if reply.status in REFUSED_TOKEN:  # one refresh, as for every call
                self._tokens.invalidate(token)
                reply = await self._uplink.post(entry.body, await self._tokens.get(), entry.invoice)
        except TokenError as exc:
            raise VerifyFailed(f"repairing {entry.id}: {exc}") from None
        return reply

    async def _refused(self, seq: int, entry: Delivered, reply: Reply) -> None:
        """Paigo refuses the resend of a record it once took: kept as a dead letter."""
        record = orjson.loads(entry.body)
        letter = DeadLetter(
            entry.id, record, entry.invoice, reply.status, reply.body.decode(errors="replace"), 0
        )
        try:
            await self._dead_letters.append([letter])
        except OSError as exc:
            raise VerifyFailed(f"the dead-letter file: {exc}") from None
        log.error(
            "record %s, missing at Paigo, was refused when sent again (%d): dead-lettered",
            entry.id,
            reply.status,
        )
        self._spool.ack([seq])

    async def _again(self, pairs: list[tuple[int, Delivered]]) -> None:
        """Verify these entries again after another delay: a new entry, then the old one
        acknowledged (a crash in between verifies twice, harmlessly)."""
        if not pairs:
            return
        now = self._clock()
        try:
            await self._spool.append([entry.again(now).encode() for _, entry in pairs])
        except SpoolError as exc:
            raise VerifyFailed(f"the verify spool: {exc}") from None
        self._spool.ack([seq for seq, _ in pairs])

    async def _pace(self) -> None:
        now = self._clock()
        wait = self._next_read - now
        if wait > 0:
            await asyncio.sleep(wait)
        self._next_read = max(now, self._next_read) + 1 / self._config.max_reads_per_s

    def snapshot(self) -> VerifyStatus:
        self._update_status()
        return self.status
