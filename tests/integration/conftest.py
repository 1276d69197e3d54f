"""Fixtures for tests that run the agent as a real process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.agent_process import AgentProcess


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    """Agents started by a test; killed (if still running) when it ends."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()
