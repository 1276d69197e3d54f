"""The client for apps, against a running agent: TCP and the unix socket, retries, errors."""

from __future__ import annotations

import ast
import asyncio
import sys
from pathlib import Path

import pytest

from agent.client import AgentUnavailable, UsageClient, UsageRejected
from tests.conftest import AgentFactory, RunningAgent, record


def client_for(agent: RunningAgent, **options: object) -> UsageClient:
    return UsageClient(agent.service.addresses[0], **options)  # type: ignore[arg-type]


async def test_records_are_posted_over_tcp_and_the_unix_socket(
    start_agent: AgentFactory, tmp_path: Path
):
    agent = await start_agent()
    over_tcp = client_for(agent)
    over_unix = UsageClient(unix_socket=str(tmp_path / "run" / "ingest.sock"))
    ids = await asyncio.to_thread(over_tcp.post, record(1))
    ids += await asyncio.to_thread(over_unix.post, [record(2), record(3)])
    assert len(ids) == 3 and len(set(ids)) == 3
    assert [r["recordValue"] for r in await agent.stored()] == ["1", "2", "3"]


async def test_a_refusal_carries_the_agents_per_record_errors(start_agent: AgentFactory):
    agent = await start_agent()
    client = client_for(agent)
    with pytest.raises(UsageRejected) as caught:
        await asyncio.to_thread(client.post, [record(1), record(2, recordValue="1e3")])
    assert caught.value.status == 400
    [problem] = caught.value.errors
    assert (problem["index"], problem["field"]) == (1, "recordValue")
    assert 'write "1000"' in problem["message"]
    assert agent.service.spool.backlog == 0


async def test_a_retry_with_the_same_key_is_stored_once(start_agent: AgentFactory):
    agent = await start_agent()
    client = client_for(agent)
    first = await asyncio.to_thread(client.post, record(1), idempotency_key="order-7")
    again = await asyncio.to_thread(client.post, record(1), idempotency_key="order-7")
    assert first == again and agent.service.spool.backlog == 1


async def test_503_is_retried_after_retry_after_until_the_agent_takes_the_records(
    start_agent: AgentFactory,
):
    agent = await start_agent(ingest={"retry_after_s": 1})
    state = agent.service.state
    assert state is not None
    state.shutting_down = True  # answers 503 with Retry-After: 1
    client = client_for(agent, deadline_s=10.0)
    posting = asyncio.create_task(asyncio.to_thread(client.post, record(1)))
    await asyncio.sleep(0.5)
    assert not posting.done()
    state.shutting_down = False
    ids = await asyncio.wait_for(posting, 10)
    assert len(ids) == 1 and agent.service.spool.backlog == 1


async def test_an_agent_that_is_not_there_is_unavailable_by_the_deadline(tmp_path: Path):
    client = UsageClient(unix_socket=str(tmp_path / "nobody.sock"), deadline_s=0.5)
    with pytest.raises(AgentUnavailable) as caught:
        await asyncio.to_thread(client.post, record(1))
    assert "gave up after 0.5 s" in str(caught.value)


def test_the_client_needs_only_the_standard_library():
    tree = ast.parse((Path(__file__).parents[1] / "agent" / "client.py").read_text())
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
        )
        if name
    }
    assert imported - {"__future__"} <= sys.stdlib_module_names
