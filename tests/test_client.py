"""The client for apps, against a running agent: TCP and the unix socket, retries, errors."""

from __future__ import annotations

import ast
import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.client import AgentUnavailable, AsyncUsageClient, UsageClient, UsageRejected
from tests.conftest import AgentFactory, RunningAgent, record
from tests.integration.agent_process import AgentProcess
from tests.integration.fake_thread import fake_paigo_thread
from tests.integration.test_delivery_process import delivering_to


class Posting:
    """Either client, awaited alike: the sync one in a thread."""

    def __init__(self, kind: str, url: str = "http://127.0.0.1:7411", **options: Any) -> None:
        self.kind = kind
        self.client = (AsyncUsageClient if kind == "async" else UsageClient)(url, **options)

    async def post(self, records: Any, **options: Any) -> list[str]:
        if isinstance(self.client, AsyncUsageClient):
            return await self.client.post(records, **options)
        return await asyncio.to_thread(self.client.post, records, **options)


KINDS = pytest.mark.parametrize("kind", ["sync", "async"])


def client_for(agent: RunningAgent, kind: str, **options: Any) -> Posting:
    return Posting(kind, agent.service.addresses[0], **options)


@KINDS
async def test_records_are_posted_over_tcp_and_the_unix_socket(
    start_agent: AgentFactory, tmp_path: Path, kind: str
):
    agent = await start_agent()
    over_tcp = client_for(agent, kind)
    over_unix = Posting(kind, unix_socket=str(tmp_path / "run" / "ingest.sock"))
    ids = await over_tcp.post(record(1))
    ids += await over_unix.post([record(2), record(3)])
    assert len(ids) == 3 and len(set(ids)) == 3
    assert [r["recordValue"] for r in await agent.stored()] == ["1", "2", "3"]


@KINDS
async def test_a_refusal_carries_the_agents_per_record_errors(start_agent: AgentFactory, kind: str):
    agent = await start_agent()
    with pytest.raises(UsageRejected) as caught:
        await client_for(agent, kind).post([record(1), record(2, recordValue="1e3")])
    assert caught.value.status == 400
    [problem] = caught.value.errors
    assert (problem["index"], problem["field"]) == (1, "recordValue")
    assert 'write "1000"' in problem["message"]
    assert agent.service.spool.backlog == 0


@KINDS
async def test_a_retry_with_the_same_key_is_stored_once(start_agent: AgentFactory, kind: str):
    agent = await start_agent()
    client = client_for(agent, kind)
    first = await client.post(record(1), idempotency_key="order-7")
    again = await client.post(record(1), idempotency_key="order-7")
    assert first == again and agent.service.spool.backlog == 1


@KINDS
async def test_503_is_retried_after_retry_after_until_the_agent_takes_the_records(
    start_agent: AgentFactory, kind: str
):
    agent = await start_agent(ingest={"retry_after_s": 1})
    state = agent.service.state
    assert state is not None
    state.shutting_down = True  # answers 503 with Retry-After: 1
    client = client_for(agent, kind, deadline_s=10.0)
    posting = asyncio.create_task(client.post(record(1)))
    await asyncio.sleep(0.5)
    assert not posting.done()
    state.shutting_down = False
    ids = await asyncio.wait_for(posting, 10)
    assert len(ids) == 1 and agent.service.spool.backlog == 1


@KINDS
async def test_an_agent_that_is_not_there_is_unavailable_by_the_deadline(tmp_path: Path, kind: str):
    client = Posting(kind, unix_socket=str(tmp_path / "nobody.sock"), deadline_s=0.5)
    with pytest.raises(AgentUnavailable) as caught:
        await client.post(record(1))
    assert "gave up after 0.5 s" in str(caught.value)


def test_507_is_retried_until_delivery_frees_space_and_the_key_keeps_it_once(tmp_path: Path):
    """The spool is full while Paigo is down; the client keeps the same Idempotency-Key
    across its retries, and its records are stored once as soon as delivery frees space."""
    with fake_paigo_thread() as paigo:
        paigo.fail_next(10**9, 503)
        sections = delivering_to(paigo, dimensions="off", delivery="at-least-once")
        sections["spool"] = {"max_bytes": 512 * 1024, "segment_bytes": 64 * 1024}
        sections["ingest"] = {"retry_after_s": 1}
        agent = AgentProcess(tmp_path, **sections).start()
        try:
            pad = {"pad": "x" * 1000}
            for n in range(10_000):
                if agent.post(record(n, metadata=pad))[0] == 507:
                    break
            held = n
            client = UsageClient(agent.url, deadline_s=60.0)
            outcome: list[object] = []
            posting = threading.Thread(
                target=lambda: outcome.append(
                    client.post(record(-1, metadata=pad), idempotency_key="late-1")
                )
            )
            posting.start()
            time.sleep(2.5)  # two or three 507s, each after Retry-After
            assert posting.is_alive() and not outcome
            paigo.fail_next(0)  # Paigo is back: delivery drains the spool, space returns
            posting.join(60)
            assert len(outcome) == 1 and len(outcome[0]) == 1  # type: ignore[arg-type]
            deadline = time.monotonic() + 60
            while len(paigo.records) < held + 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            values = [r["recordValue"] for r in paigo.stored()]
        finally:
            agent.kill()
        assert values.count("-1") == 1 and len(values) == held + 1


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
