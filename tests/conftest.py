"""Shared fixtures: each test gets its own directory; spools are closed after the test."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from agent.config import DEFAULT_ID_KEY, Config, SpoolConfig, from_mapping
from agent.credentials import resolve_secrets
from agent.records import decode_envelope
from agent.service import Service
from agent.spool import Spool
from agent.testing.fake_paigo import FakePaigo

SpoolFactory = Callable[..., Spool]


@pytest.fixture
def spool_config(tmp_path: Path) -> SpoolConfig:
    return SpoolConfig(dir=str(tmp_path / "spool"), min_free_bytes=0, cursor_interval_ms=10)


@pytest.fixture
async def open_spool(spool_config: SpoolConfig) -> AsyncIterator[SpoolFactory]:
    """Open (and start) a spool on the test's directory; closed at the end of the test."""
    opened: list[Spool] = []

    async def factory(**overrides: Any) -> Spool:
        spool = Spool(replace(spool_config, **overrides))
        spool.open()
        await spool.start()
        opened.append(spool)
        return spool

    yield factory  # type: ignore[misc]
    for spool in opened:
        if spool.writable != "closing":
            await spool.close()


# --- a running agent, in this process, on real sockets ------------------------------------


def agent_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    """A Config for tests: loopback port 0, a unix socket and a spool under tmp_path."""
    data: dict[str, Any] = {
        "spool": {"dir": str(tmp_path / "spool"), "min_free_bytes": 0, "cursor_interval_ms": 10},
        "ingest": {"listen": "127.0.0.1:0", "unix_socket": str(tmp_path / "run" / "ingest.sock")},
        "upstream": {"enabled": False},  # ingest tests read the spool themselves
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return resolve_secrets(from_mapping(data, "test"), {})


class RunningAgent:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.url = service.addresses[0]
        self.unix_socket = service.config.ingest.unix_socket
        self.http = aiohttp.ClientSession()
        self.unix = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.unix_socket))

    async def post(
        self, body: object, *, raw: bytes | None = None, via_unix: bool = False, **kwargs: Any
    ) -> tuple[int, dict[str, Any], Any]:
        session, base = (self.unix, "http://agent") if via_unix else (self.http, self.url)
        headers = kwargs.pop("headers", {})
        data = kwargs.pop("data", None) or (raw if raw is not None else orjson.dumps(body))
        headers.setdefault("Content-Type", "application/json")
        async with session.post(f"{base}/usage", data=data, headers=headers, **kwargs) as resp:
            payload = await resp.read()
            parsed = orjson.loads(payload) if resp.content_type == "application/json" else payload
            return resp.status, dict(resp.headers), parsed

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(f"{self.url}{path}") as resp:
            body = await resp.read()
            return resp.status, orjson.loads(
                body
            ) if resp.content_type == "application/json" else body

    async def stored(self) -> list[dict[str, Any]]:
        """Every record the spool holds and has not handed out, in order."""
        found = []
        while entries := await self.service.spool.read(10_000):
            found.extend(orjson.loads(decode_envelope(e.payload).record_json) for e in entries)
        return found

    async def close(self) -> None:
        await self.http.close()
        await self.unix.close()
        await self.service.stop()


AgentFactory = Callable[..., Awaitable[RunningAgent]]


@pytest.fixture
async def start_agent(tmp_path: Path) -> AsyncIterator[AgentFactory]:
    running: list[RunningAgent] = []

    async def factory(config: Config | None = None, **sections: dict[str, Any]) -> RunningAgent:
        service = Service(config or agent_config(tmp_path, **sections))
        await service.start()
        agent = RunningAgent(service)
        running.append(agent)
        return agent

    yield factory
    for agent in running:
        await agent.close()


def mount_tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` at `directory` (needs root: CI runs as root); unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    directory.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(directory)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB filesystem of its own."""
    yield from mount_tmpfs(tmp_path / "small", "512k")


def record(n: int = 0, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "timestamp": "2026-11-25T10:00:00Z",
        "customerId": f"customer-{n % 7}",
        "dimensionId": "api-calls",
        "recordValue": str(n),
    }
    body.update(changes)
    return body


# --- delivery: the Paigo stand-in and an agent that delivers to it ------------------------


@pytest.fixture
async def paigo() -> AsyncIterator[FakePaigo]:
    fake = FakePaigo()
    await fake.start()
    yield fake
    await fake.stop()


def delivering(paigo: FakePaigo, **upstream: Any) -> dict[str, Any]:
    """Config sections for an agent that delivers to `paigo`, with fast retries."""
    return {
        "upstream": {
            "enabled": True,
            "url": paigo.usage_url,
            "token_url": paigo.token_url,
            "client_id": paigo.client_id,
            "client_secret": paigo.client_secret,
            **upstream,
        },
        "retry": {"initial_backoff_s": 0.02, "max_backoff_s": 0.2},
    }


async def eventually(check: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


def as_sent(records: list[dict[str, Any]], id_key: str = DEFAULT_ID_KEY) -> list[dict[str, Any]]:
    """Records as the app sent them: without the stable id the agent adds to metadata."""
    plain = []
    for received in records:
        metadata = {k: v for k, v in (received.get("metadata") or {}).items() if k != id_key}
        body = {k: v for k, v in received.items() if k != "metadata"}
        if metadata:
            body["metadata"] = metadata
        plain.append(body)
    return plain
