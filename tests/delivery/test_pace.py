"""The pace: sends in flight grow while they bind and the upstream answers well, shrink on
push-back (429/5xx, no answer, a rising round trip), and restart jittered after an outage."""

from __future__ import annotations

import asyncio
import random

import pytest

from agent.delivery.pace import INITIAL_LIMIT, Pace
from agent.testing.fake_paigo import FakePaigo
from tests.conftest import AgentFactory, delivering, eventually, record


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def full_round(pace: Pace) -> None:
    """A round trip of a busy pipeline: as many answers as sends allowed, each 2xx and
    each followed by a new send that takes the freed place (in flight at the limit)."""
    for _ in range(int(pace.limit)):
        pace.sent(int(pace.limit))
        pace.succeeded()


def test_slow_start_doubles_each_round_up_to_the_ceiling():
    pace = Pace(256)
    limits = []
    for _ in range(8):
        full_round(pace)
        limits.append(pace.limit)
    assert limits[:6] == [8, 16, 32, 64, 128, 256]
    assert pace.limit == 256  # never past the ceiling


def test_after_push_back_it_grows_by_about_one_a_round():
    pace = Pace(256)
    for _ in range(4):
        full_round(pace)
    pace.overloaded()
    assert pace.limit == 32 and not pace.slow_start
    full_round(pace)
    assert 32 < pace.limit <= 33.1


def test_it_grows_only_when_the_limit_binds():
    pace = Pace(256)
    for _ in range(10_000):
        pace.sent(1)  # one send out at a time: the rate needs no more
        pace.succeeded()
    assert pace.limit == INITIAL_LIMIT


def test_slow_start_grows_to_twice_the_sends_the_rate_needs_and_no_further():
    """As TCP's slow start: a window half used is used (the sends of a round do not all
    start at once), so growth stops at twice the most seen in flight."""
    pace = Pace(256)
    for _ in range(10_000):
        pace.sent(10)
        pace.succeeded()
    assert pace.limit == 20


def test_after_push_back_it_grows_only_when_a_send_reaches_the_limit():
    pace = Pace(256)
    for _ in range(4):
        full_round(pace)
    pace.overloaded()
    for _ in range(10_000):
        pace.sent(20)  # under the limit of 32
        pace.succeeded()
    assert pace.limit == 32


@pytest.mark.parametrize(("push_back", "factor"), [("overloaded", 0.5), ("unanswered", 0.75)])
def test_push_back_shrinks_it_to_no_less_than_one(push_back: str, factor: float):
    pace = Pace(64)
    for _ in range(4):
        full_round(pace)
    before = pace.limit
    getattr(pace, push_back)()
    assert pace.limit == before * factor
    for _ in range(50):
        getattr(pace, push_back)()
    assert pace.limit == 1.0


def test_a_rising_round_trip_shrinks_it_once_per_round_trip_and_a_steady_one_never():
    clock = Clock()
    pace = Pace(256, clock=clock)
    for _ in range(5):
        full_round(pace)
    for _ in range(500):  # a steady 80 ms: no cut however long
        pace.observe_rtt(0.080)
        clock.now += 0.001
    assert pace.limit == 128
    cuts = 0
    for _ in range(30):  # the upstream queues: 400 ms, 30 answers within 30 ms
        before = pace.limit
        pace.observe_rtt(0.400)
        clock.now += 0.001
        cuts += pace.limit < before
    assert cuts == 1 and pace.limit == pytest.approx(128 * 0.9)
    clock.now += 1.0  # a round trip later, still slow: another cut
    pace.observe_rtt(0.400)
    assert pace.limit == pytest.approx(128 * 0.81)


def test_after_an_outage_it_restarts_slow_from_a_jittered_limit():
    limits = set()
    for seed in range(20):
        pace = Pace(256, rng=random.Random(seed))
        for _ in range(6):
            full_round(pace)
        pace.overloaded()
        pace.restart()
        assert pace.slow_start and INITIAL_LIMIT * 0.5 <= pace.limit <= INITIAL_LIMIT * 1.5
        limits.add(round(pace.limit, 3))
    assert len(limits) > 10  # agents that saw the same outage do not come back in step


async def test_against_a_slow_healthy_stand_in_it_reaches_the_ceiling_then_yields_to_429s(
    start_agent: AgentFactory, paigo: FakePaigo
):
    """50 ms a request: the sends in flight grow to the ceiling of 64 and the drain runs
    near 64 / 50 ms; a burst of 429s then halves the pace."""
    paigo.faults.delay_s = 0.05
    agent = await start_agent(
        **delivering(paigo, concurrency=64, delivery="at-least-once", dimensions="off")
    )
    sender = agent.service.sender
    assert sender is not None
    for first in range(0, 4000, 1000):
        assert (await agent.post([record(n) for n in range(first, first + 1000)]))[0] == 202
    peak = peak_limit = 0.0
    started = asyncio.get_running_loop().time()
    while len(paigo.records) < 3000:
        peak = max(peak, sender.gate.in_flight)
        peak_limit = max(peak_limit, sender.gate.limit)
        await asyncio.sleep(0.005)
    rate = 3000 / (asyncio.get_running_loop().time() - started)
    assert peak >= 60 and peak_limit == 64
    assert rate > 0.5 * 64 / 0.05  # within a factor of 2 of the bound, on a shared machine
    paigo.fail_next(200, 429)
    await eventually(lambda: sender.gate.limit <= 32, what="the pace to halve on 429s")


async def test_a_rising_round_trip_brings_the_pace_down_without_an_error(
    start_agent: AgentFactory, paigo: FakePaigo
):
    paigo.faults.delay_s = 0.02
    agent = await start_agent(
        **delivering(paigo, concurrency=64, delivery="at-least-once", dimensions="off")
    )
    sender = agent.service.sender
    assert sender is not None
    assert (await agent.post([record(n) for n in range(3000)]))[0] == 202
    await eventually(lambda: sender.gate.limit == 64, what="the ceiling")
    assert (await agent.post([record(n) for n in range(3000, 9000)]))[0] == 202
    paigo.faults.delay_s = 0.25  # the upstream starts queueing
    await eventually(lambda: sender.gate.limit < 60, what="the pace to come down")
    assert paigo.statuses[429] == 0 and paigo.statuses[503] == 0
