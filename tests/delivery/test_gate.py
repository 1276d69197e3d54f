"""Backing off as one client: shared backoff, pause, circuit, pace and the degraded reason."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent.config import RetryConfig
from agent.delivery.gate import Gate
from agent.delivery.pace import INITIAL_LIMIT
from agent.delivery.policy import Action, Decision, Health

NO_JITTER = RetryConfig(initial_backoff_s=0.5, max_backoff_s=60, jitter=False, circuit_failures=5)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_pace_grows_while_it_binds_and_halves_on_overload():
    gate = Gate(64, NO_JITTER)
    assert gate.limit == INITIAL_LIMIT
    for _ in range(500):  # a busy pipeline: each answer frees a place a new send takes
        while gate.in_flight < int(gate.limit):
            await gate.acquire()
        gate.succeeded()
        gate.release()
    assert gate.limit == 64
    gate.failed(gate.ticket, overload=True)
    assert gate.limit == 32
    for _ in range(20):
        gate.failed(gate.ticket, overload=True)
    assert gate.limit == 1.0


def test_a_success_that_did_not_need_the_limit_does_not_raise_it():
    gate = Gate(64, NO_JITTER)
    for _ in range(1000):
        gate.succeeded()  # nothing else in flight: one send at a time is all it needs
    assert gate.limit == INITIAL_LIMIT


def test_failures_in_a_row_open_the_circuit_and_a_success_closes_it():
    gate = Gate(64, RetryConfig(circuit_failures=3))
    for _ in range(50):
        gate.succeeded()
    gate.failed(gate.ticket, overload=False)
    gate.failed(gate.ticket, overload=False)
    assert not gate.circuit_open and gate.capacity > 1
    gate.failed(gate.ticket, overload=False)
    assert gate.circuit_open and gate.capacity == 1
    gate.succeeded()
    assert not gate.circuit_open


def test_failures_in_a_row_make_every_sender_wait_longer_up_to_the_cap():
    clock = Clock()
    gate = Gate(8, NO_JITTER, clock=clock)
    waits = []
    for _ in range(12):
        gate.failed(gate.ticket, overload=False)
        waits.append(gate.paused_for())
        clock.now = max(clock.now, gate.paused_until)
    assert waits[:5] == [0.0, 0.5, 1.0, 2.0, 4.0]  # a lone failure pauses nobody
    assert waits[-1] == 60.0  # retry.max_backoff_s
    gate.succeeded()
    gate.failed(gate.ticket, overload=False)
    assert gate.paused_for() == 0.0  # a success starts the count again


def test_the_end_of_an_outage_is_logged_with_its_length_and_what_waits(
    caplog: pytest.LogCaptureFixture,
):
    clock = Clock()
    gate = Gate(64, RetryConfig(circuit_failures=3), clock=clock)
    gate.waiting_records = lambda: 1234
    for _ in range(3):
        gate.failed(gate.ticket, overload=False)
    clock.now += 42
    with caplog.at_level(logging.WARNING):
        gate.succeeded()
        gate.succeeded()
    recovered = [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()]
    assert recovered == ["upstream recovered after 42 s, 1234 records waiting"]


def test_a_lone_failure_among_successes_pauses_nobody():
    gate = Gate(8, NO_JITTER)
    for _ in range(100):
        gate.succeeded()
        gate.failed(gate.ticket, overload=False)  # a 1-in-2 error rate, never two in a row
        assert gate.paused_for() == 0.0
    assert gate.backoff_s(3) == 2.0  # what a record that failed 3 times waits on its own


def test_sends_that_fail_together_count_as_one_failure():
    clock = Clock()
    gate = Gate(32, NO_JITTER, clock=clock)
    tickets = [gate.ticket for _ in range(32)]  # 32 sends began in one round
    for ticket in tickets:
        gate.failed(ticket, overload=False)
    assert gate.failures_in_a_row == 1
    gate.failed(gate.ticket, overload=False)  # a send of the next round fails too
    assert gate.failures_in_a_row == 2
    assert gate.paused_for() == 0.5


def test_with_jitter_the_wait_is_never_over_the_exponential_bound():
    clock = Clock()
    gate = Gate(8, RetryConfig(initial_backoff_s=0.5, max_backoff_s=8), clock=clock)
    for failure in range(1, 10):
        gate.failed(gate.ticket, overload=False)
        assert 0 <= gate.paused_for() <= min(8, 0.5 * 2 ** (failure - 2))
        clock.now = max(clock.now, gate.paused_until)


def test_a_config_problem_degrades_until_a_success_and_backs_off():
    gate = Gate(8, NO_JITTER)
    for _ in range(2):
        gate.record(Decision(Action.RETRY, Health.MISCONFIGURED, reason="bad"), gate.ticket)
    assert gate.degraded == "bad" and gate.capacity == 1
    assert gate.paused_for() > 0
    gate.record(Decision(Action.DONE, Health.HEALTHY), gate.ticket)
    assert gate.degraded == ""


def test_an_answer_that_says_nothing_of_the_upstream_changes_nothing():
    gate = Gate(8, NO_JITTER)
    gate.record(Decision(Action.DEAD_LETTER), gate.ticket)
    assert gate.failures_in_a_row == 0 and gate.paused_for() == 0


async def test_a_pause_holds_every_sender():
    clock = Clock()
    gate = Gate(8, NO_JITTER, clock=clock)
    gate.pause(0.2)
    waiting = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    clock.now += 0.2
    await asyncio.wait_for(waiting, 1)
    assert gate.in_flight == 1


async def test_capacity_bounds_sends_in_flight():
    gate = Gate(8, NO_JITTER)
    for _ in range(int(INITIAL_LIMIT)):
        await gate.acquire()
    blocked = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0.02)
    assert not blocked.done()
    gate.release()
    await asyncio.wait_for(blocked, 1)
