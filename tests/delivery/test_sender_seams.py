"""The sender against fakes at its seams (the upstream and the token source) and a real
spool: exact, fast specifications of what it does with each answer, and of stopping."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.config import RetryConfig, SpoolConfig, UpstreamConfig
from agent.delivery import deadletter
from agent.delivery.deadletter import DeadLetterFile
from agent.delivery.exits import Exits
from agent.delivery.intake import MAX_WAIT_S
from agent.delivery.ledger import Ledger, read_deliveries
from agent.delivery.sender import IDLE_WAIT_S, Sender
from agent.delivery.uplink import LookupFailed, Reply
from agent.records import encode_envelopes
from agent.spool import Spool
from tests.conftest import eventually, record

Answer = Callable[[list[dict[str, Any]], str], Reply]


@dataclass
class Post:
    body: bytes
    records: list[dict[str, Any]]
    token: str
    started: float


@dataclass
class FakeUpstream:
    """Answers each post with `answer(records, token)` after `delay_s`; `held` is what
    a read of the upstream finds (the records as sent, any window)."""

    answer: Answer
    delay_s: float = 0.0
    posts: list[Post] = field(default_factory=list)
    held: list[dict[str, Any]] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)  # the token of each read
    refuse_reads_with: set[str] = field(default_factory=set)  # tokens the read API refuses

    async def post(self, body: bytes, token: str, invoice: bool, *, array: bool = False) -> Reply:
        loaded = orjson.loads(body)
        records = loaded if array else [loaded]
        self.posts.append(Post(body, records, token, time.monotonic()))
        await asyncio.sleep(self.delay_s)
        return self.answer(records, token)

    async def read_usage(
        self, read_base: str, token: str, customer: str, window: tuple[datetime, datetime]
    ) -> list[dict[str, Any]]:
        self.reads.append(token)
        if token in self.refuse_reads_with:
            raise LookupFailed("the read API answered 401", 401)
        return [
            {"dimensionId": r["dimensionId"], "usage": [r]}
            for r in self.held
            if r["customerId"] == customer
        ]


class FakeTokens:
    def __init__(self) -> None:
        self.issued = 0
        self._current = ""

    async def get(self) -> str:
        if not self._current:
            self.issued += 1
            self._current = f"token-{self.issued}"
        return self._current

    def invalidate(self, value: str) -> None:
        if value == self._current:
            self._current = ""


@dataclass
class Rig:
    spool: Spool
    upstream: FakeUpstream
    tokens: FakeTokens
    sender: Sender
    dir: Path

    async def post(self, records: list[dict[str, Any]]) -> None:
        payloads = encode_envelopes([orjson.dumps(r) for r in records], 0, False, "")
        await self.spool.append(payloads)


RigFactory = Callable[..., "asyncio.Future[Rig]"]
FAST = RetryConfig(initial_backoff_s=0.01, max_backoff_s=0.05, circuit_failures=3)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    made: list[tuple[Rig, Ledger]] = []

    async def factory(
        answer: Answer, *, retry: RetryConfig = FAST, delay_s: float = 0.0, **upstream: Any
    ) -> Rig:
        spool_config = SpoolConfig(dir=str(tmp_path), min_free_bytes=0, fsync="off")
        spool = Spool(spool_config)
        spool.open()
        await spool.start()
        ledger = Ledger(spool_config, 1 << 20)
        await ledger.start()
        config = UpstreamConfig(**{"unknown_settle_s": 0.0, "park_retry_s": 0.2, **upstream})
        fake = FakeUpstream(answer, delay_s)
        tokens = FakeTokens()
        dead = DeadLetterFile(deadletter.path_in(tmp_path))
        exits = Exits(spool, ledger, dead, config.id_key)
        sender = Sender(spool, fake, tokens, exits, ledger, upstream=config, retry=retry)
        await sender.start()
        built = Rig(spool, fake, tokens, sender, tmp_path)
        made.append((built, ledger))
        return built

    yield factory
    for built, ledger in made:
        await built.sender.stop(0.5)
        await ledger.stop()
        await built.spool.close()


def ok(records: list[dict[str, Any]], token: str) -> Reply:
    return Reply(201, b'{"message": "Success"}')


def always(status: int) -> Answer:
    return lambda records, token: Reply(status, b'{"message": "no"}')


async def test_no_send_starts_once_stop_has_begun(rig: Callable[..., Any]):
    built: Rig = await rig(ok, delay_s=0.2, concurrency=8)
    await built.post([record(n) for n in range(200)])
    await eventually(lambda: len(built.upstream.posts) >= 4, what="sends under way")
    began = time.monotonic()
    await built.sender.stop(1.0)
    late = [p for p in built.upstream.posts if p.started > began]
    assert late == []
    assert built.sender.gate.in_flight == 0


async def test_stop_ends_within_its_grace_even_with_sends_that_never_answer(
    rig: Callable[..., Any],
):
    built: Rig = await rig(ok, delay_s=3600, concurrency=32)
    await built.post([record(n) for n in range(500)])
    await eventually(lambda: len(built.upstream.posts) >= 4, what="sends under way")
    began = time.monotonic()
    await built.sender.stop(0.3)
    assert time.monotonic() - began < 0.3 + 2.5  # the grace, then cancel with its deadline


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_token_is_refreshed_once_and_then_backs_off(
    rig: Callable[..., Any], status: int
):
    built: Rig = await rig(always(status), retry=RetryConfig(initial_backoff_s=0.2))
    await built.post([record(n) for n in range(100)])
    await asyncio.sleep(3.0)
    posts = built.upstream.posts
    # the first round: the initial pace (4) twice, each with a fresh token; then one probe
    # (and its refresh) per shared backoff of 0.2, 0.4, 0.8, 1.6 s (full jitter: less)
    assert len(posts) <= 8 + 2 * 8
    last_second = [p for p in posts if p.started > time.monotonic() - 1.0]
    assert len(last_second) <= 4
    first = [p.token for p in posts if p.records[0]["recordValue"] == "0"]
    assert first[:2] == ["token-1", "token-2"]  # the second send used a fresh token
    assert built.sender.status().degraded
    assert built.spool.backlog == 100  # nothing dead-lettered, nothing dropped


async def test_a_403_for_an_expired_token_is_delivered_after_one_refresh(
    rig: Callable[..., Any],
):
    def gateway(records: list[dict[str, Any]], token: str) -> Reply:
        return Reply(201) if token != "token-1" else Reply(403, b'{"message": "Forbidden"}')

    built: Rig = await rig(gateway)
    await built.post([record(1)])
    await eventually(lambda: built.spool.backlog == 0, what="delivery")
    assert [p.token for p in built.upstream.posts] == ["token-1", "token-2"]
    assert not deadletter.path_in(built.dir).exists()


@pytest.mark.parametrize("delivery", ["at-least-once", "effectively-once"])
async def test_a_resend_is_byte_identical_to_the_first_send_stamp_included(
    rig: Callable[..., Any], delivery: str
):
    answers = iter([Reply(503), Reply(0, error="reset"), Reply(502)])

    def fail_three_times(records: list[dict[str, Any]], token: str) -> Reply:
        return next(answers, Reply(201))

    built: Rig = await rig(fail_three_times, delivery=delivery)
    await built.post([record(1, metadata={"b": 1, "a": {"z": [1, 2]}})])
    await eventually(lambda: built.spool.backlog == 0, what="delivery")
    bodies = {post.body for post in built.upstream.posts}
    assert len(built.upstream.posts) == 4 and len(bodies) == 1
    [sent] = built.upstream.posts[0].records
    stamp = f"{built.spool.spool_id}-1"  # the spool's id and the record's sequence number
    assert sent["metadata"] == {"b": 1, "a": {"z": [1, 2]}, "usageAgentRecordId": stamp}


async def test_a_record_goes_again_as_soon_as_its_backoff_is_over(rig: Callable[..., Any]):
    """Idle senders wait for work to be announced rather than polling (`IDLE_WAIT_S` is a
    backstop): the end of a record's backoff is announced, so the resend follows it."""
    answers = iter([Reply(503), Reply(503)])
    built: Rig = await rig(lambda records, token: next(answers, Reply(201)))
    await built.post([record(1)])
    await eventually(lambda: built.spool.backlog == 0, what="delivery")
    starts = [post.started for post in built.upstream.posts]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert len(starts) == 3 and max(gaps) < IDLE_WAIT_S / 5  # FAST backs off 0.05 s at most


async def test_with_the_window_full_a_lane_goes_again_as_soon_as_its_backoff_is_over(
    rig: Callable[..., Any],
):
    """All the intake holds is one lane, held for a backoff, and no sender has work: the
    intake, which alone offers the lane again, waits for room no longer than that hold."""
    answers = iter([Reply(503)])
    built: Rig = await rig(
        lambda records, token: next(answers, Reply(201)), concurrency=1, delivery="at-least-once"
    )
    await built.post([record(n, customerId="one") for n in range(1500)])  # window: 1,000
    await eventually(lambda: len(built.upstream.posts) >= 2, what="the resend")
    first, second = built.upstream.posts[:2]
    assert second.started - first.started < MAX_WAIT_S / 4  # FAST backs off 0.05 s at most


async def test_a_401_from_the_read_api_refreshes_the_token(rig: Callable[..., Any]):
    answers = iter([Reply(504)])  # the first send's outcome is unknown; then all 201

    def first_unknown(records: list[dict[str, Any]], token: str) -> Reply:
        return next(answers, Reply(201))

    built: Rig = await rig(first_unknown)
    built.upstream.refuse_reads_with = {"token-1"}
    await built.post([record(1)])
    await eventually(lambda: built.spool.backlog == 0, what="delivery")
    assert built.upstream.reads[:2] == ["token-1", "token-2"]


async def test_a_record_found_at_paigo_leaves_and_is_in_the_deliveries_file(
    rig: Callable[..., Any],
):
    def stored_then_lost_answer(records: list[dict[str, Any]], token: str) -> Reply:
        built.upstream.held.append(records[0])
        return Reply(0, error="reset")  # stored, but the answer never came

    built: Rig = await rig(stored_then_lost_answer)
    await built.post([record(1)])
    await eventually(lambda: built.spool.backlog == 0, what="resolved")
    assert len(built.upstream.posts) == 1  # found, never sent again
    assert built.sender.status().left["found"] == 1
    await built.sender.stop(0.1)
    [line] = read_deliveries(built.dir).lines
    assert line["k"] == built.upstream.held[0]["metadata"]["usageAgentRecordId"]


async def test_a_404_for_a_whole_array_splits_and_parks_only_the_unknown_pair(
    rig: Callable[..., Any], caplog: pytest.LogCaptureFixture
):
    def no_arrays_with_x(records: list[dict[str, Any]], token: str) -> Reply:
        if any(r["customerId"] == "x" for r in records):
            return Reply(404, b'{"message": "Not Found"}')
        return Reply(201)

    built: Rig = await rig(no_arrays_with_x, mode="array", batch_max_records=50, linger_ms=0)
    good = [record(n) for n in range(60)]
    await built.post([*good, record(99, customerId="x", dimensionId="storage")])
    await eventually(lambda: built.spool.backlog == 1, what="all but the unknown pair")
    status = built.sender.status()
    assert status.parked_pairs == [("x", "storage")]
    assert not status.degraded
    assert "customer 'x' dimension 'storage'" in caplog.text


async def test_sends_that_all_fail_with_503_back_off_together(rig: Callable[..., Any]):
    retry = RetryConfig(initial_backoff_s=0.2, max_backoff_s=5, jitter=False)
    built: Rig = await rig(always(503), retry=retry, concurrency=32)
    await built.post([record(n) for n in range(500)])
    await asyncio.sleep(2.0)
    # 0.2 + 0.4 + 0.8: about four rounds in 2 s, each at most the (halving) pace
    assert len(built.upstream.posts) <= 4 + 2 + 1 + 1 + 1
    assert built.spool.backlog == 500


async def test_a_record_the_upstream_keeps_failing_waits_its_own_backoff_while_others_flow(
    rig: Callable[..., Any],
):
    def one_bad_customer(records: list[dict[str, Any]], token: str) -> Reply:
        return Reply(503) if records[0]["customerId"] == "bad" else Reply(201)

    retry = RetryConfig(initial_backoff_s=0.2, max_backoff_s=5, jitter=False)
    built: Rig = await rig(one_bad_customer, retry=retry, delivery="at-least-once")
    await built.post([record(1, customerId="bad")])
    for n in range(20):
        await built.post([record(n)])
        await asyncio.sleep(0.1)
    await eventually(lambda: built.spool.backlog == 1, what="the others")
    bad = [p for p in built.upstream.posts if p.records[0]["customerId"] == "bad"]
    assert 3 <= len(bad) <= 6  # 0.2 + 0.4 + 0.8 + 1.6 s of its own backoff in about 2 s
    assert not built.sender.status().degraded
