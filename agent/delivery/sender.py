"""The delivery loop: records from the spool to the upstream, and out through one exit.

* The intake (`agent.delivery.intake`) takes entries from the spool into lanes
  (`agent.delivery.lanes`), holding at most `window` records that can be sent: four
  batches per sender, at least 1,000 records, at most `MAX_WINDOW`.
* `upstream.concurrency` workers each take a batch from the lanes (one record in
  `"single"` mode; unordered records up to the batch limits in `"array"` mode), pass the
  gate (`agent.delivery.gate`: shared backoff, pause, circuit, pace), send, and carry out
  what `agent.delivery.policy.decide` makes of the answer. A record that is not finished
  goes back to the front of its lane; a worker never sleeps holding records.
* A record leaves the agent's care only through `agent.delivery.exits`.
* `upstream.delivery = "effectively-once"` (default): a record is marked in the ledger
  before its first send, and a send with an unknown outcome is resolved by asking Paigo
  before any resend (`agent.delivery.recheck`). `"at-least-once"`: a crash or an unknown
  outcome re-sends, so duplicates are bounded by `upstream.concurrency` requests (times the
  batch size in array mode) plus the acknowledgements of the last `spool.cursor_interval_ms`.

Stopping: once `stop` begins no new send starts; sends under way may finish within the
grace, then every task is cancelled and awaited (with a deadline of its own), and what was
not acknowledged stays in the spool for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Final

from agent.config import RetryConfig, UpstreamConfig
from agent.delivery.auth import TokenError, Tokens
from agent.delivery.exits import Exits, Reason
from agent.delivery.gate import Gate
from agent.delivery.intake import Intake, SpoolOut
from agent.delivery.item import Item
from agent.delivery.lanes import Lane, Lanes
from agent.delivery.ledger import Ledger
from agent.delivery.policy import Action, Decision, Health, decide
from agent.delivery.recheck import Resolver
from agent.delivery.rollup import Rollups
from agent.delivery.status import DeliveryStatus, LastResult
from agent.delivery.uplink import Reply, Upstream
from agent.delivery.wakeup import Wakeup
from agent.errors import SpoolError
from agent.ingest_first import IngestFirst
from agent.logs import Throttled

log = logging.getLogger(__name__)

WRONG_URL_PAIRS: Final = 3  # distinct pairs answered 404 in a row: the URL is wrong

CANCEL_DEADLINE_S: Final = 2.0  # cancelled tasks that do not end by then are reported
IDLE_WAIT_S: Final = 5.0  # an idle sender looks again (work is announced: this is a backstop)
# records the intake holds in memory, at most (1 to 2 KB each): in array mode the window
# would otherwise be 4 x 256 senders x 500 records, over half a gigabyte; 40 batches of 500
# in flight still carry 250,000 records/s across 80 ms
MAX_WINDOW: Final = 20_000

Taken = list[tuple[Lane[Item], Item]]


class Sender:
    def __init__(
        self,
        spool: SpoolOut,
        uplink: Upstream,
        tokens: Tokens,
        exits: Exits,
        ledger: Ledger,
        *,
        upstream: UpstreamConfig,
        retry: RetryConfig,
        catalog_order: Callable[[], frozenset[str]] = frozenset,
        rollups: Rollups | None = None,
        first: IngestFirst | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`first`: the apps' requests, which go before bulk work (`agent.ingest_first`)."""
        self._spool = spool
        self._first = first or IngestFirst()
        self._rollups = rollups
        self._uplink = uplink
        self._tokens = tokens
        self._exits = exits
        self._ledger = ledger
        self._config = upstream
        self._retry = retry
        self._clock = clock
        self.gate = Gate(upstream.concurrency, retry, clock=clock)
        self._resolver = (
            Resolver(uplink, tokens, ledger, upstream)
            if upstream.delivery == "effectively-once"
            else None
        )
        self._lanes: Lanes[Item] = Lanes()
        self._work = Wakeup()
        window = min(max(4 * upstream.concurrency * self._batch_size, 1000), MAX_WINDOW)
        self._intake = Intake(
            spool,
            self._lanes,
            exits,
            self._resolver,
            upstream,
            window=window,
            work=self._work,
            batch=self._batch_size,
            catalog_order=catalog_order,
            rollups=rollups,
            formed=ledger.formed,
            first=self._first,
            clock=clock,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._not_found_pairs: set[tuple[str, str]] = set()
        self._last: LastResult | None = None
        self._release: asyncio.TimerHandle | None = None  # the next release of held lanes
        self._release_due = 0.0
        self._mark_failed = Throttled(log, "could not mark records in the ledger before sending")
        self.on_reply: Callable[[Reply, float], None] = lambda reply, seconds: None

    @property
    def _batch_size(self) -> int:
        return self._config.batch_max_records if self._config.mode == "array" else 1

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._intake.run(), name="sender-intake"),
            asyncio.create_task(self._housekeeping(), name="sender-ledger"),
        ]
        for number in range(self._config.concurrency):
            self._tasks.append(asyncio.create_task(self._work_loop(), name=f"sender-{number}"))

    async def stop(self, grace_s: float) -> None:
        """No new send starts from now on; sends under way have `grace_s` to finish; then
        every task is cancelled and awaited. What is not acknowledged stays in the spool."""
        self._stopping = True
        self._intake.stop()
        if self._release is not None:
            self._release.cancel()
        self._work.notify_all()
        self.gate.wake_all()
        deadline = self._clock() + grace_s
        while self.gate.in_flight and self._clock() < deadline:
            await asyncio.sleep(0.01)
        abandoned = self.gate.in_flight
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=CANCEL_DEADLINE_S)
            for task in stuck:
                log.error("delivery task %s did not end when cancelled", task.get_name())
        self._tasks = []
        await self._ledger.flush()
        if abandoned:
            log.warning("abandoned %d sends at shutdown; they will be sent again", abandoned)

    async def _housekeeping(self) -> None:
        """Write the deliveries file and drop ledger marks behind the persisted cursor."""
        while True:
            await asyncio.sleep(0.2)
            await self._ledger.flush()
            await self._ledger.forget(self._spool.consumed_durably)

    # --- sending --------------------------------------------------------------------------

    async def _work_loop(self) -> None:
        bulk = self._batch_size > 1
        while not self._stopping:
            if bulk:  # taking a batch is bulk work: the apps' requests first
                await self._first.turn()
            taken = self._take()
            if not taken:
                await self._work.wait(IDLE_WAIT_S)
                continue
            if self._batch_size > 1 and self._lanes.ready:
                self._work.notify()  # more than this batch is ready (one wake per batch)
            await self._turn(taken)
            # (no batch is held here while this sender waits: 256 idle senders that kept
            # their last 500-record batch held 128,000 records that had left, 200 MB)

    async def _turn(self, taken: Taken) -> None:
        """One batch, from `taken` and what lingering adds, delivered or put back."""
        batch = await self._linger(taken)
        for _, item in batch:
            item.held = True
        try:
            await self._deliver(batch)
        except Exception:  # a bug or an unforeseen error must not stop delivery
            log.exception("delivery of %d record(s) failed; they go back", len(batch))
            self._put_back([pair for pair in batch if pair[1].held])
            await asyncio.sleep(1.0)
        finally:
            self._intake.room.set()  # (this sender takes the next record itself)

    def _take(self) -> Taken:
        first = self._lanes.take(self._clock())
        if first is None:
            return []
        return self._fill_batch([first])

    def _fill_batch(self, taken: Taken) -> Taken:
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

    async def _linger(self, taken: Taken) -> Taken:
        """A batch that is not full waits `upstream.linger_ms` once for more records."""
        config = self._config
        if config.mode != "array" or len(taken) >= config.batch_max_records or not config.linger_ms:
            return taken
        if taken[0][0].ordered:
            return taken
        await asyncio.sleep(config.linger_ms / 1000)
        return self._fill_batch(taken)

    async def _deliver(self, batch: Taken) -> None:
        """One turn for `batch`: through the gate, then checked, marked and sent; every
        record is finished or back in its lane when this returns."""
        ticket = await self.gate.acquire()
        try:
            if self._stopping:
                self._put_back(batch)
                return
            try:
                token = await self._tokens.get()
            except TokenError as exc:
                self._token_failed(exc, ticket)
                self._retry_later(batch)
                return
            if self._resolver is not None:
                batch = await self._resolve_unknown(self._resolver, batch, ticket)
                if not batch:
                    return
            try:
                await self._mark([item for _, item in batch])
            except SpoolError as exc:  # no mark, no send: a full disk waits for room
                self._mark_failed.error("%s; the records wait in the spool", exc)
                self.gate.failed(ticket, overload=False)
                self._retry_later(batch)
                return
            await self._send(batch, token, ticket, token_refreshed=False)
        finally:
            self.gate.release()

    async def _mark(self, items: list[Item]) -> None:
        """Note in the ledger, durably and before their first send, what may reach the
        upstream: each rollup's formation (in either delivery mode: its membership, so that
        a crash brings back the same rollup) and, effectively-once, each record. Marks are
        written only for a send about to begin: what was never sent comes back after a
        stop as new, not as possibly sent."""
        if self._resolver is None and self._rollups is None:
            return  # at-least-once without rollups: nothing is marked
        new = [item for item in items if not item.marked]
        formations = [item.rollup for item in new if item.rollup is not None]
        seqs = [item.seq for item in new if item.rollup is None] if self._resolver else []
        if not formations and not seqs:
            return
        await self._ledger.mark(seqs, formations)
        for item in new:
            item.marked = item.rollup is not None or bool(seqs)

    def _token_failed(self, exc: TokenError, ticket: int) -> None:
        if exc.permanent:
            self.gate.config_problem(str(exc), ticket)
        else:
            self.gate.failed(ticket, overload=False)

    async def _resolve_unknown(self, resolver: Resolver, batch: Taken, ticket: int) -> Taken:
        """Let the unknown records Paigo already holds leave; the rest of `batch` to send
        (nothing when some could not be checked: they all go back, to be checked again,
        after a backoff if the read failed, or once their instant can be read)."""
        if all(item.unknown_since is None for _, item in batch):
            return batch
        check = await resolver.check([item for _, item in batch])
        if check.found:
            gone = set(check.found)
            self._leave([batch[i] for i in check.found], Reason.FOUND)
            batch = [pair for index, pair in enumerate(batch) if index not in gone]
        if check.complete:
            return batch
        if check.token_refused:
            reason = "the read API answers 401/403 even with a fresh token: check the credentials"
            self.gate.config_problem(reason, ticket)
            self._retry_later(batch)
        elif check.failed:
            self.gate.failed(ticket, overload=False)
            self._retry_later(batch)
        else:
            self._put_back(batch, until=self._clock() + check.wait_s, apart=True)
        return []

    async def _send(self, batch: Taken, token: str, ticket: int, *, token_refreshed: bool) -> None:
        """Post `batch` once and carry out what the answer means."""
        if self._stopping:
            self._put_back(batch)
            return
        items = [item for _, item in batch]
        invoice = items[0].envelope.invoice
        is_array = self._config.mode == "array" and len(items) > 1  # one goes as Paigo's own
        body = b"[" + b",".join([i.body for i in items]) + b"]" if is_array else items[0].body
        started = time.perf_counter()
        reply = await self._uplink.post(body, token, invoice, array=is_array)
        seconds = time.perf_counter() - started
        if is_array:  # settling a batch is bulk work too
            await self._first.turn()
        self.on_reply(reply, seconds)
        if reply.status:
            self.gate.pace.observe_rtt(seconds)
        self._last = LastResult(reply.status, reply.error, time.time())
        for item in items:
            item.attempts += 1
        statuses = reply.per_record(len(items)) if is_array else None
        if statuses is None:
            await self._settle(batch, reply, token, ticket, token_refreshed)
            return
        for status, pairs in _by_status(batch, statuses).items():
            if 200 <= status < 300:
                await self._settle(pairs, reply, token, ticket, token_refreshed)
                continue
            for pair in pairs:  # each record answered on its own: nothing to split
                await self._settle(
                    [pair], Reply(status, reply.body), token, ticket, token_refreshed
                )

    async def _settle(
        self, batch: Taken, reply: Reply, token: str, ticket: int, token_refreshed: bool
    ) -> None:
        decision = decide(
            reply,
            records=len(batch),
            token_refreshed=token_refreshed,
            check_unknown=self._resolver is not None,
        )
        if decision.action is Action.PARK:
            decision = self._park_or_blame_url(batch, decision)
            if decision.action is Action.PARK:
                return
        action = decision.action
        self.gate.record(decision, ticket)
        if action is Action.DONE:
            self._not_found_pairs.clear()
            self._leave(batch, Reason.DELIVERED)
        elif action is Action.DEAD_LETTER:
            if await self._exits.dead_letter([item for _, item in batch], reply):
                self._done(batch)
            else:
                self._put_back(batch, until=self._clock() + self._retry.max_backoff_s)
        elif action is Action.SPLIT:
            half = len(batch) // 2  # find the records at fault: halves, down to one
            await self._send(batch[:half], token, ticket, token_refreshed=token_refreshed)
            await self._send(batch[half:], token, ticket, token_refreshed=token_refreshed)
        elif action is Action.REFRESH_TOKEN:
            await self._send_with_fresh_token(batch, token, ticket)
        elif action is Action.CHECK:
            assert self._resolver is not None
            self._resolver.became_unknown([item for _, item in batch], self._clock())
            self._put_back(batch, until=self._clock() + self._config.unknown_settle_s, apart=True)
        else:
            self._retry_later(batch)

    async def _send_with_fresh_token(self, batch: Taken, refused: str, ticket: int) -> None:
        self._tokens.invalidate(refused)
        try:
            token = await self._tokens.get()
        except TokenError as exc:
            log.warning("token refresh after a refusal failed: %s", exc)
            self._token_failed(exc, ticket)
            self._retry_later(batch)
            return
        await self._send(batch, token, ticket, token_refreshed=True)

    def _park_or_blame_url(self, batch: Taken, decision: Decision) -> Decision:
        """A 404 for one record: park its pair, unless several pairs in a row got 404 and
        none succeeded, which says the URL is wrong (then a configuration problem)."""
        item = batch[0][1]
        pair = (item.customer, item.dimension)
        self._not_found_pairs.add(pair)
        if len(self._not_found_pairs) >= WRONG_URL_PAIRS:
            reason = (
                f"{len(self._not_found_pairs)} different customers get 404 and none "
                "succeeds: check upstream.url"
            )
            return Decision(Action.RETRY, Health.MISCONFIGURED, reason=reason)
        self._put_back(batch, until=self._clock() + self._config.park_retry_s, parked=True)
        log.warning(
            "upstream 404 for customer %r dimension %r: parked for %.0f s",
            *pair,
            self._config.park_retry_s,
        )
        return decision

    # --- carrying out ---------------------------------------------------------------------

    def _leave(self, batch: Taken, reason: Reason) -> None:
        self._exits.leave([item for _, item in batch], reason)
        self._done(batch)

    def _done(self, batch: Taken) -> None:
        """The records have left: their lanes let the next ones go."""
        for _, item in batch:
            item.held = False
        self._lanes.done_all([lane for lane, _ in batch], self._clock())

    def _retry_later(self, batch: Taken) -> None:
        """A send that failed: its records wait out their own backoff, growing with their
        failures in a row, so a record the upstream keeps failing is never sent in a loop
        while the others succeed."""
        failures = 0
        for _, item in batch:
            item.failures += 1
            failures = max(failures, item.failures)
        self._put_back(batch, until=self._clock() + self.gate.backoff_s(failures))

    def _put_back(
        self, batch: Taken, *, until: float = 0.0, parked: bool = False, apart: bool = False
    ) -> None:
        """The records go back to the front of their lanes, in their order, to be sent
        again (not before `until`)."""
        now = self._clock()
        for lane, item in reversed(batch):
            item.held = False
            self._lanes.put_back(lane, item, now, until=until, parked=parked, apart=apart)
        if until > now:
            self._release_at(until)
        else:
            self._work.notify_for(len(batch), self._batch_size)

    def _release_at(self, when: float) -> None:
        """Offer the held lanes again at `when` (one timer, for the first lane held to be
        released): nothing polls for the end of a backoff, a park or a settling time."""
        if self._release is not None and self._release_due <= when:
            return
        if self._release is not None:
            self._release.cancel()
        self._release_due = when
        delay = max(0.0, when - self._clock())
        self._release = asyncio.get_running_loop().call_later(delay, self._release_held)

    def _release_held(self) -> None:
        self._release = None
        now = self._clock()
        if released := self._lanes.release_held(now):
            self._work.notify_for(released, self._batch_size)
        if (wait_s := self._lanes.next_release_s(now)) != math.inf:
            self._release_at(now + wait_s)

    # --- state ----------------------------------------------------------------------------

    def status(self) -> DeliveryStatus:
        now = self._clock()
        gate, resolver = self.gate, self._resolver
        return DeliveryStatus(
            mode=self._config.delivery,
            degraded=gate.degraded,
            paused_for_s=gate.paused_for(),
            circuit_open=gate.circuit_open,
            concurrency_limit=gate.limit,
            in_flight=gate.in_flight,
            buffered_records=self._lanes.buffered,
            parked_pairs=[(c, d) for c, d, _ in self._lanes.parked(now)],
            left={reason.value: self._exits.counts[reason] for reason in Reason},
            unknown_outcomes=resolver.unknown_outcomes if resolver else 0,
            duplicates_prevented=resolver.duplicates_prevented if resolver else 0,
            deliveries_not_recorded=self._ledger.not_recorded,
            last_result=self._last,
            rollup=self._rollups.status if self._rollups is not None else None,
            records_given_back=self._intake.records_given_back,
        )


def _by_status(batch: Taken, statuses: list[int]) -> dict[int, Taken]:
    """The records of an array answered per record, by the status each got."""
    if len(set(statuses)) == 1:  # (the common case, at C speed: one answer for all)
        return {statuses[0]: batch}
    grouped: dict[int, Taken] = {}
    for pair, status in zip(batch, statuses, strict=True):
        grouped.setdefault(status, []).append(pair)
    return grouped
