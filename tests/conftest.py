"""Shared fixtures: each test gets its own directory; spools are closed after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.config import SpoolConfig
from agent.spool import Spool

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


@pytest.fixture
def no_leaked_spools() -> Iterator[None]:
    yield
