"""Backing off as one client: pause, circuit, pace and the degraded reason."""

from __future__ import annotations

import asyncio

from agent.delivery.gate import INITIAL_LIMIT, Gate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_pace_grows_on_success_and_halves_on_overload():
    gate = Gate(64, 5)
    assert gate.limit == INITIAL_LIMIT
    for _ in range(100):
        gate.succeeded()
    grown = gate.limit
    assert grown > 10
    gate.failed(overload=True)
    assert gate.limit == grown / 2
    for _ in range(20):
        gate.failed(overload=True)
    assert gate.limit == 1.0
    for _ in range(10_000):
        gate.succeeded()
    assert gate.limit == 64


def test_failures_in_a_row_open_the_circuit_and_a_success_closes_it():
    gate = Gate(64, 3)
    for _ in range(50):
        gate.succeeded()
    gate.failed(overload=False)
    gate.failed(overload=False)
    assert not gate.circuit_open and gate.capacity > 1
    gate.failed(overload=False)
    assert gate.circuit_open and gate.capacity == 1
    gate.succeeded()
    assert not gate.circuit_open


def test_a_config_problem_degrades_until_a_success():
    gate = Gate(8, 5)
    gate.config_problem("bad credentials")
    assert gate.degraded == "bad credentials" and gate.capacity == 1
    gate.succeeded()
    assert gate.degraded == ""


async def test_a_pause_holds_every_sender():
    clock = Clock()
    gate = Gate(8, 5, clock=clock)
    gate.pause(0.2)
    waiting = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    clock.now += 0.2
    await asyncio.wait_for(waiting, 1)
    assert gate.in_flight == 1


async def test_capacity_bounds_sends_in_flight():
    gate = Gate(8, 5)
    for _ in range(int(INITIAL_LIMIT)):
        await gate.acquire()
    blocked = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0.02)
    assert not blocked.done()
    await gate.release()
    await asyncio.wait_for(blocked, 1)
