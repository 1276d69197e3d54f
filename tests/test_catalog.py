"""The dimension catalog: refusals while it is fresh, never a block while Paigo is away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.catalog import FILE_NAME, Catalog, CatalogUnavailable
from agent.testing.fake_paigo import FakePaigo
from tests.conftest import AgentFactory, RunningAgent, delivering, eventually, record

DIMENSIONS = [
    {"dimensionId": "api-calls", "aggregationMethod": "sum"},
    {"dimensionId": "storage", "aggregationMethod": "max"},
    {"dimensionId": "seats", "aggregationMethod": "last", "paymentSchedule": "upfront"},
]


@pytest.fixture
async def paigo() -> AsyncIterator[FakePaigo]:
    fake = FakePaigo(dimensions=DIMENSIONS)
    await fake.start()
    yield fake
    await fake.stop()


async def catalog_status(agent: RunningAgent) -> dict[str, Any]:
    status, body = await agent.get("/status")
    assert status == 200
    catalog: dict[str, Any] = body["catalog"]
    return catalog


async def fresh_agent(start_agent: AgentFactory, paigo: FakePaigo, **upstream: Any) -> Any:
    agent = await start_agent(**delivering(paigo, **upstream))
    await until_catalog(agent, lambda catalog: catalog["fresh"])
    return agent


async def until_catalog(agent: RunningAgent, check: Callable[[dict[str, Any]], bool]) -> None:
    for _ in range(200):
        if check(await catalog_status(agent)):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the catalog never got there: {await catalog_status(agent)}")


async def test_an_unknown_dimension_is_refused_with_the_nearest_names(
    start_agent: AgentFactory, paigo: FakePaigo
):
    agent = await fresh_agent(start_agent, paigo)
    status, _, body = await agent.post([record(1), record(2, dimensionId="api-call")])
    assert status == 400
    [problem] = body["errors"]
    assert (problem["index"], problem["field"]) == (1, "dimensionId")
    assert "Paigo has no dimension 'api-call'; did you mean 'api-calls'?" in problem["message"]
    assert agent.service.spool.backlog == 0  # nothing of the request was stored
    assert (await agent.post(record(3, dimensionId="storage")))[0] == 202


async def test_the_catalog_is_shown_in_status(start_agent: AgentFactory, paigo: FakePaigo):
    agent = await fresh_agent(start_agent, paigo)
    catalog = await catalog_status(agent)
    assert catalog["dimensions"] == {"api-calls": "sum", "storage": "max", "seats": "last"}
    assert catalog["age_s"] < 60 and catalog["last_error"] == ""


async def test_a_miss_refreshes_the_catalog_once_before_refusing(
    start_agent: AgentFactory, paigo: FakePaigo
):
    agent = await fresh_agent(start_agent, paigo)
    paigo.dimensions.append({"dimensionId": "gpu-hours", "aggregationMethod": "sum"})
    reads = paigo.dimension_reads
    assert (await agent.post(record(1, dimensionId="gpu-hours")))[0] == 202  # made minutes ago
    assert paigo.dimension_reads == reads + 1
    assert (await agent.post(record(2, dimensionId="nope")))[0] == 400
    assert paigo.dimension_reads == reads + 1  # at most one refresh for misses in 10 s


async def test_unknown_dimensions_are_accepted_while_the_catalog_cannot_be_read(
    start_agent: AgentFactory, paigo: FakePaigo
):
    paigo.faults.dimensions_fail = 503
    agent = await start_agent(**delivering(paigo))
    await until_catalog(agent, lambda catalog: "503" in catalog["last_error"])
    assert (await agent.post(record(1, dimensionId="never-heard-of-it")))[0] == 202
    assert (await catalog_status(agent))["fresh"] is False


async def test_an_empty_catalog_refuses_nothing(start_agent: AgentFactory):
    empty = FakePaigo()
    await empty.start()
    try:
        agent = await start_agent(**delivering(empty))
        assert (await agent.post(record(1, dimensionId="anything")))[0] == 202
    finally:
        await empty.stop()


async def test_invoice_true_only_for_upfront_dimensions_with_last_aggregation(
    start_agent: AgentFactory, paigo: FakePaigo
):
    agent = await fresh_agent(start_agent, paigo)
    status, _, body = await agent.post(record(1), params={"invoice": "true"})
    assert status == 400
    assert body["errors"][0]["message"].endswith(
        "Paigo invoices only upfront dimensions with last aggregation, and it is arrear with sum"
    )
    seats = record(2, dimensionId="seats")
    assert (await agent.post(seats, params={"invoice": "true"}))[0] == 202
    assert (await agent.post(record(3), params={"invoice": "false"}))[0] == 202  # never sent


async def test_a_restart_without_paigo_keeps_the_catalog_from_disk(
    start_agent: AgentFactory, paigo: FakePaigo, tmp_path: Path
):
    agent = await fresh_agent(start_agent, paigo)
    spool_dir = agent.service.spool.dir
    kept = orjson.loads((spool_dir / FILE_NAME).read_bytes())
    assert [d["dimensionId"] for d in kept["data"]] == ["api-calls", "storage", "seats"]
    await agent.close()
    paigo.faults.dimensions_fail = 503
    again = await start_agent(**delivering(paigo))
    assert (await again.post(record(1, dimensionId="api-call")))[0] == 400
    assert (await catalog_status(again))["fresh"] is True


async def test_the_catalog_goes_stale_after_two_refresh_periods(tmp_path: Path):
    now = [1000.0]
    answers: list[list[dict[str, Any]]] = [DIMENSIONS]

    async def fetch() -> list[dict[str, Any]]:
        if not answers:
            raise CatalogUnavailable("Paigo is away")
        return answers.pop()

    catalog = Catalog(tmp_path, 300.0, fetch, clock=lambda: now[0])
    assert await catalog.refresh()
    assert await catalog.problems(["nope"], False) != []
    now[0] += 600
    assert catalog.fresh
    now[0] += 1
    assert not catalog.fresh and await catalog.problems(["nope"], False) == []
    assert catalog.last_error == "Paigo is away"  # the miss tried once more
    assert catalog.last_dimensions == {"seats"}


async def test_last_dimensions_arrive_in_order_per_customer_without_configuration(
    start_agent: AgentFactory, paigo: FakePaigo
):
    agent = await fresh_agent(start_agent, paigo)
    ordered = [record(n, customerId="acme", dimensionId="seats") for n in range(1000)]
    others = [record(n, customerId=f"other-{n % 5}") for n in range(1000)]
    mixed = [r for pair in zip(ordered, others, strict=True) for r in pair]
    for start in range(0, 2000, 500):
        assert (await agent.post(mixed[start : start + 500]))[0] == 202
    await eventually(lambda: len(paigo.records) >= 2000, timeout=60, what="delivery")
    got = [r["recordValue"] for r in paigo.records if r["dimensionId"] == "seats"]
    assert got == [str(n) for n in range(1000)]
