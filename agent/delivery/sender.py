"""The delivery loop: records from the spool to the upstream, acknowledged only after a 2xx.

* A reader task takes entries from the spool into lanes (`agent.delivery.lanes`), holding at most
  `window` records that can be sent; a parked pair's records do not count against it.
* `upstream.concurrency` workers take records lane by lane and send them through the gate
  (`agent.delivery.gate`), one per request (`"single"`) or as arrays of unordered records
  (`"array"`); ordered records always go one at a time.
* Each send is retried with tenacity: exponential backoff with full jitter capped at
  `retry.max_backoff_s`, without limit of attempts or time: an outage never drops billing
  data. A record leaves the agent in exactly two ways: a 2xx (acknowledged in the spool),
  or a permanent refusal of that record (400, 422, or 413 for one record; written durably
  to the dead-letter file first, then acknowledged). Any other answer keeps the record.
* `upstream.delivery = "effectively-once"` (default): a record is marked in the ledger
  before its first send, and a send with an unknown outcome is resolved by asking Paigo
  before any resend (`agent.delivery.recheck`). `"at-least-once"`: a crash or an unknown outcome
  re-sends, so duplicates are bounded by `upstream.concurrency` requests (times the batch
  size in array mode) plus the acknowledgements of the last `spool.cursor_interval_ms`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_never,
    wait_exponential,
    wait_random_exponential,
)

from agent.config import RetryConfig, UpstreamConfig
from agent.delivery.auth import TokenError, TokenManager
from agent.delivery.deadletter import DeadLetter, DeadLetterFile
from agent.delivery.gate import Gate
from agent.delivery.item import Item, make_item, stable_id
from agent.delivery.lanes import Lane, Lanes
from agent.delivery.ledger import Ledger
from agent.delivery.recheck import Resolver
from agent.delivery.uplink import Outcome, Reply, Uplink
from agent.spool import Spool

log = logging.getLogger(__name__)

WRONG_URL_PAIRS: Final = 3  # distinct pairs answered 404 in a row: the URL is wrong
IDLE_POLL_S: Final = 0.05
READ_BATCH: Final = 1000  # records per spool read: about a millisecond of the event loop


class _SendAgain(Exception):
    """This send did not deliver; tenacity waits and tries again."""


class Sender:
    def __init__(
        self,
        spool: Spool,
        uplink: Uplink,
        tokens: TokenManager,
        dead_letters: DeadLetterFile,
        ledger: Ledger,
        *,
        upstream: UpstreamConfig,
        retry: RetryConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spool = spool
        self._uplink = uplink
        self._tokens = tokens
        self._dead = dead_letters
        self._config = upstream
        self._retry = retry
        self._clock = clock
        self.gate = Gate(upstream.concurrency, retry.circuit_failures, clock=clock)
        self._ledger = ledger
        self._resolver = (
            Resolver(uplink, ledger, upstream, clock)
            if upstream.delivery == "effectively-once"
            else None
        )
        self._lanes: Lanes[Item] = Lanes()
        self._ordered_dims = frozenset(upstream.ordered_dimensions)
        self._id_key = upstream.id_key
        self._window = max(4 * upstream.concurrency * self._batch_size, 1000)
        self._room = asyncio.Event()
        self._work = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._not_found_pairs: set[tuple[str, str]] = set()
        self.delivered = 0
        self.last_result: dict[str, object] = {}
        self.on_reply: Callable[[Reply, float], None] = lambda reply, seconds: None

    @property
    def _batch_size(self) -> int:
        return self._config.batch_max_records if self._config.mode == "array" else 1

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._read_loop(), name="sender-reader"),
            asyncio.create_task(self._housekeeping(), name="sender-ledger"),
        ]
        for number in range(self._config.concurrency):
            self._tasks.append(asyncio.create_task(self._work_loop(), name=f"sender-{number}"))

    async def stop(self, grace_s: float) -> None:
        """Stop reading; give sends under way `grace_s` to finish; abandon the rest (they
        stay unacknowledged in the spool and are sent again after a restart)."""
        reader, workers = self._tasks[:2], self._tasks[2:]
        for task in reader:
            task.cancel()
        deadline = self._clock() + grace_s
        while self.gate.in_flight and self._clock() < deadline:
            await asyncio.sleep(0.01)
        for task in workers:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._ledger.flush()
        if self.gate.in_flight:
            log.warning(
                "abandoned %d sends at shutdown; they will be sent again", self.gate.in_flight
            )
        self._tasks = []

    async def _housekeeping(self) -> None:
        """Write the deliveries file and drop ledger marks behind the persisted cursor."""
        while True:
            await asyncio.sleep(0.2)
            await self._ledger.flush()
            self._ledger.forget_through(self._spool.saved_cursor)

    # --- reading from the spool -----------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            now = self._clock()
            self._lanes.unpark(now)
            room = self._window - (self._lanes.buffered - self._lanes.parked_items(now))
            if room <= 0:
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), 1.0)
                continue
            entries = await self._spool.read(min(room, READ_BATCH))
            if not entries:
                await self._spool.wait_for_data(IDLE_POLL_S)
                continue
            await asyncio.sleep(0)  # reads do not suspend: let ingest and sends run between
            for entry in entries:
                try:
                    self._admit(entry.seq, entry.payload, now)
                except (ValueError, KeyError, TypeError) as exc:  # not a record we can send
                    await self._unreadable(entry.seq, entry.payload, exc)
            self._work.set()

    def _admit(self, seq: int, payload: bytes, now: float) -> None:
        agent_id = self._spool.record_id(seq) if self._id_key else ""
        key, item = make_item(seq, payload, agent_id, self._id_key, self._ordered_dims)
        if self._resolver is not None and self._resolver.starts_unknown(seq):
            item.unknown_since, item.marked = now, True
        self._lanes.add(key, item, now)

    async def _unreadable(self, seq: int, payload: bytes, exc: Exception) -> None:
        """An entry that is not a readable envelope (a bug, or a newer agent's format):
        kept in the dead-letter file as it is, never silently dropped."""
        letter = DeadLetter(
            self._spool.record_id(seq), {"raw": payload.hex()}, False, 0, f"unreadable: {exc}", 0
        )
        try:
            await self._dead.append([letter])
        except OSError as error:  # kept unacknowledged: read again after a restart
            log.error("spool entry %d is unreadable and could not be dead-lettered: %s", seq, error)
            return
        self._spool.ack([seq])
        log.error("spool entry %d is not a readable record: dead-lettered as is", seq)

    # --- sending --------------------------------------------------------------------------

    async def _work_loop(self) -> None:
        while True:
            taken = self._take()
            if not taken:
                self._work.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._work.wait(), IDLE_POLL_S * 4)
                continue
            batch = await self._linger(taken)
            for _, item in batch:
                item.held = True
            try:
                await self._deliver(batch)
            except Exception:  # a bug or an unforeseen error must not stop delivery
                log.exception(
                    "delivery of %d record(s) failed; they will be sent again", len(batch)
                )
                self._release(batch)
                await asyncio.sleep(1.0)
            finally:
                self._room.set()
                self._work.set()

    def _release(self, batch: list[tuple[Lane[Item], Item]]) -> None:
        """Give the records still held back to their lanes, to be sent again."""
        now = self._clock()
        for lane, item in batch:
            if item.held:
                item.held = False
                self._lanes.put_back(lane, item, now)

    def _take(self) -> list[tuple[Lane[Item], Item]]:
        first = self._lanes.take(self._clock())
        if first is None:
            return []
        return self._fill_batch([first])

    def _fill_batch(self, taken: list[tuple[Lane[Item], Item]]) -> list[tuple[Lane[Item], Item]]:
        """In array mode, add unordered records up to the batch limits."""
        config = self._config
        if config.mode != "array" or taken[0][0].ordered:
            return taken
        return self._lanes.fill(
            taken,
            self._clock(),
            config.batch_max_records,
            config.batch_max_bytes,
            lambda item: len(item.body) + 1,
        )

    async def _linger(self, taken: list[tuple[Lane[Item], Item]]) -> list[tuple[Lane[Item], Item]]:
        """A batch that is not full waits `upstream.linger_ms` once for more records."""
        config = self._config
        if config.mode != "array" or len(taken) >= config.batch_max_records or not config.linger_ms:
            return taken
        if taken[0][0].ordered:
            return taken
        await asyncio.sleep(config.linger_ms / 1000)
        return self._fill_batch(taken)

    def _waits(self) -> AsyncRetrying:
        retry = self._retry
        wait = (
            wait_random_exponential(
                multiplier=retry.initial_backoff_s,
                max=retry.max_backoff_s,
                exp_base=retry.multiplier,
            )
            if retry.jitter
            else wait_exponential(
                multiplier=retry.initial_backoff_s,
                max=retry.max_backoff_s,
                exp_base=retry.multiplier,
            )
        )
        return AsyncRetrying(
            wait=wait, retry=retry_if_exception_type(_SendAgain), stop=stop_never, reraise=True
        )

    async def _deliver(self, batch: list[tuple[Lane[Item], Item]]) -> None:
        """Send until every record of `batch` is delivered, dead-lettered or parked."""
        pending = await self._attempt(batch)  # the usual case: no retry machinery needed
        if not pending:
            return
        async for attempt in self._waits():
            with attempt:
                pending = await self._attempt(pending)
                if pending:
                    raise _SendAgain

    async def _attempt(self, batch: list[tuple[Lane[Item], Item]]) -> list[tuple[Lane[Item], Item]]:
        """One send of `batch` (split when needed); the records still to send."""
        resolver = self._resolver
        if resolver is not None and (wait := resolver.settle_wait([i for _, i in batch])) > 0:
            await asyncio.sleep(wait)
        await self.gate.acquire()
        try:
            try:
                token = await self._tokens.get()
            except TokenError as exc:
                if exc.permanent:
                    self.gate.config_problem(str(exc))
                else:
                    self.gate.failed(overload=False)
                return batch
            if resolver is not None:
                batch, complete = await self._resolve_unknown(resolver, batch, token)
                if not batch or not complete:
                    return batch
                await resolver.mark([item for _, item in batch])
            return await self._send(batch, token)
        finally:
            await self.gate.release()

    async def _resolve_unknown(
        self, resolver: Resolver, batch: list[tuple[Lane[Item], Item]], token: str
    ) -> tuple[list[tuple[Lane[Item], Item]], bool]:
        """Acknowledge the unknown records Paigo already holds; the rest, and whether
        every unknown record could be checked."""
        if all(item.unknown_since is None for _, item in batch):
            return batch, True
        found, complete = await resolver.check([item for _, item in batch], token)
        if not complete:
            self.gate.failed(overload=False)
        if found:
            held = [batch[index] for index in found]
            self._finish(held, self._clock())
            self.delivered += len(held)
            gone = set(found)
            batch = [pair for index, pair in enumerate(batch) if index not in gone]
        return batch, complete

    async def _send(
        self, batch: list[tuple[Lane[Item], Item]], token: str
    ) -> list[tuple[Lane[Item], Item]]:
        items = [item for _, item in batch]
        invoice = items[0].envelope.invoice
        is_array = self._config.mode == "array" and len(items) > 1  # one goes as Paigo's own
        body = b"[" + b",".join(i.body for i in items) + b"]" if is_array else items[0].body
        started = time.perf_counter()
        reply = await self._uplink.post(body, token, invoice, array=is_array)
        self.on_reply(reply, time.perf_counter() - started)
        for item in items:
            item.attempts += 1
        self.last_result = {"status": reply.status, "error": reply.error, "at": time.time()}
        statuses = reply.per_record(len(items)) if is_array else None
        if statuses is None or all(200 <= status < 300 for status in statuses):
            return await self._settle(batch, reply, token)
        delivered = [p for p, status in zip(batch, statuses, strict=True) if 200 <= status < 300]
        rest = await self._settle(delivered, reply, token) if delivered else []
        for pair, status in zip(batch, statuses, strict=True):
            if not 200 <= status < 300:
                rest += await self._settle([pair], Reply(status, reply.body), token)
        return rest

    async def _settle(
        self, batch: list[tuple[Lane[Item], Item]], reply: Reply, token: str
    ) -> list[tuple[Lane[Item], Item]]:
        """Act on one reply for `batch`; the records still to send."""
        outcome = reply.outcome
        now = self._clock()
        if outcome is Outcome.DELIVERED:
            self.gate.succeeded()
            self._not_found_pairs.clear()
            self._finish(batch, now)
            self._note_deliveries(batch)
            self.delivered += len(batch)
            return []
        if self._resolver is not None and reply.outcome_unknown:
            self._resolver.became_unknown([item for _, item in batch])
            self.gate.failed(overload=reply.status != 0)
            return batch
        if len(batch) > 1 and outcome in (Outcome.TOO_LARGE, Outcome.REJECTED):
            half = len(batch) // 2  # find the record at fault: halves, down to one
            first = await self._send(batch[:half], token)
            return first + await self._send(batch[half:], token)
        if outcome is Outcome.THROTTLED:
            self.gate.pause(reply.retry_after or 0.0)
            self.gate.failed(overload=True)
        elif outcome is Outcome.TRANSIENT:
            self.gate.failed(overload=reply.status != 0)
        elif outcome is Outcome.UNAUTHORIZED:
            self._tokens.invalidate(token)
            item = batch[0][1]
            if not item.fresh_token_tried:
                item.fresh_token_tried = True
                try:
                    return await self._send(batch, await self._tokens.get())
                except TokenError as exc:
                    self.gate.failed(overload=False)
                    log.warning("token refresh after a 401 failed: %s", exc)
                    return batch
            self.gate.config_problem("the upstream answers 401 even with a fresh token")
        elif outcome is Outcome.FORBIDDEN:
            self.gate.config_problem("the upstream answers 403: the credentials lack permission")
        elif outcome is Outcome.NOT_FOUND:
            return self._not_found(batch, now)
        elif outcome is Outcome.PERMANENT:  # 405, 409, 501 ...: not about one record
            self.gate.config_problem(f"the upstream answers {reply.status}: check upstream.url")
        else:
            await self._dead_letter(batch, reply)
            self._finish(batch, now)
            return []
        return batch

    def _not_found(
        self, batch: list[tuple[Lane[Item], Item]], now: float
    ) -> list[tuple[Lane[Item], Item]]:
        lane, _ = batch[0]
        self._not_found_pairs.add(lane.key[:2])
        if len(self._not_found_pairs) >= WRONG_URL_PAIRS:
            self.gate.config_problem(
                f"{len(self._not_found_pairs)} different customers get 404 and none succeeds: "
                "check upstream.url"
            )
            return batch
        for lane, item in batch:  # park this pair; the rest flows
            item.held = False
            self._lanes.put_back(lane, item, now, now + self._config.park_retry_s)
        log.warning(
            "upstream 404 for customer %r dimension %r: parked for %.0f s",
            *lane.key[:2],
            self._config.park_retry_s,
        )
        return []

    def _note_deliveries(self, batch: list[tuple[Lane[Item], Item]]) -> None:
        if self._id_key:  # without a stable id upstream there is nothing to reconcile by
            self._ledger.note([(item.rid, item.fields) for _, item in batch])

    def _finish(self, batch: list[tuple[Lane[Item], Item]], now: float) -> None:
        self._spool.ack(item.seq for _, item in batch)
        for lane, item in batch:
            item.held = False
            self._lanes.done(lane, now)

    async def _dead_letter(self, batch: list[tuple[Lane[Item], Item]], reply: Reply) -> None:
        letters = [
            DeadLetter(
                stable_id(item.envelope, self._spool.record_id(item.seq)),
                item.fields,
                item.envelope.invoice,
                reply.status,
                reply.body.decode(errors="replace"),
                item.attempts,
            )
            for _, item in batch
        ]
        await self._dead.append(letters)
        log.error(
            "upstream refused %d record(s) with %d: dead-lettered", len(letters), reply.status
        )

    # --- state ----------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        now = self._clock()
        gate = self.gate
        return {
            "degraded": bool(gate.degraded),
            "reason": gate.degraded,
            "paused_for_s": round(max(0.0, gate.paused_until - now), 3),
            "circuit_open": gate.circuit_open,
            "concurrency_limit": round(gate.limit, 2),
            "in_flight": gate.in_flight,
            "buffered_records": self._lanes.buffered,
            "parked_pairs": [
                {"customerId": c, "dimensionId": d} for c, d, _ in self._lanes.parked(now)
            ],
            "delivered": self.delivered,
            "dead_lettered": self._dead.count,
            "mode": self._config.delivery,
            "unknown_outcomes": self._resolver.unknown_outcomes if self._resolver else 0,
            "duplicates_prevented": self._resolver.duplicates_prevented if self._resolver else 0,
            "last_result": self.last_result,
        }
