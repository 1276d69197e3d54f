"""Rollups with the agent as a real process: kill -9 three times, 20 % unknown outcomes."""

from __future__ import annotations

import signal
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from agent.delivery.reads import instant
from agent.delivery.rollup import COUNT_KEY
from agent.testing.fake_paigo import FakePaigo
from tests.integration.agent_process import AgentProcess
from tests.integration.fake_thread import fake_paigo_thread
from tests.integration.test_delivery_process import delivering_to, wait_until

AGGREGATIONS = {"bytes": "sum", "peak": "max", "low": "min", "seats": "last"}
NEVER = {"calls": "count", "latency": "average"}  # a rollup would change these
DIMENSIONS = [*AGGREGATIONS, *NEVER]
CATALOG = [{"dimensionId": d, "aggregationMethod": a} for d, a in {**AGGREGATIONS, **NEVER}.items()]
START = datetime(2026, 11, 25, 10, 59, 50, tzinfo=UTC)  # the records straddle 11:00
PHASES, PER_PHASE = 3, 1500


def usage(n: int) -> dict[str, Any]:
    """Record n: 5 customers, the six dimensions, 10 ms apart across the hour's turn; values
    with decimals that floats would not add exactly. Each phase covers the same 15 s again
    (1 ms later), so its records are late for the windows the phase before rolled up."""
    phase, index = divmod(n, PER_PHASE)
    moment = START + timedelta(milliseconds=10 * index + phase)
    return {
        "timestamp": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "customerId": f"customer-{n % 5}",
        "dimensionId": DIMENSIONS[n // 5 % len(DIMENSIONS)],
        "recordValue": f"{n % 97}.{n % 10}1",
        "metadata": {"region": "eu"} if n % 3 else {},
    }


def test_rollups_through_three_kills_and_unknown_outcomes_hold_every_total_exactly(
    tmp_path, agents: list[AgentProcess]
):
    """Per (customer, dimension, hour) what Paigo holds aggregates to what was accepted:
    the sum exactly, and the max, min and last; count and average dimensions are never
    rolled up. A rollup formed before a kill comes back as the same rollup; 20 % of sends
    end without an answer (half of them stored) and are checked before being sent again."""
    with fake_paigo_thread(seed=5, dimensions=CATALOG) as paigo:
        paigo.faults.store_then_drop_rate = 0.1
        paigo.faults.lose_504_rate = 0.1
        sections = {
            **delivering_to(paigo, concurrency=16, unknown_settle_s=0.2),
            "rollup": {"dimensions": DIMENSIONS, "window_s": 5},
        }
        agent = AgentProcess(tmp_path, **sections).start()
        agents.append(agent)
        posted = [usage(n) for n in range(PHASES * PER_PHASE)]
        for phase in range(PHASES):
            batch = posted[phase * PER_PHASE : (phase + 1) * PER_PHASE]
            for first in range(0, PER_PHASE, 500):
                assert agent.post(batch[first : first + 500])[0] == 202
            seen = rollups_received(paigo)  # kill while this phase's rollups go out
            wait_until(lambda seen=seen: rollups_received(paigo) >= seen + 10, timeout=60)  # type: ignore[misc]
            agent.signal(signal.SIGKILL)
            agent.wait()
            agent.start()
        wait_until(lambda: agent.get("/status")[1]["spool"]["backlog_records"] == 0, timeout=120)
        held = paigo.stored()
        assert totals(held) == totals(posted)
        rolled = [r for r in held if COUNT_KEY in r["metadata"]]
        assert {r["dimensionId"] for r in rolled} == set(AGGREGATIONS)
        assert sum(r["metadata"][COUNT_KEY] for r in rolled) == sum(
            1 for r in posted if r["dimensionId"] in AGGREGATIONS
        )
        assert len(rolled) < len(posted) // 10
        never = [r for r in held if r["dimensionId"] in NEVER]
        assert len(never) == sum(1 for r in posted if r["dimensionId"] in NEVER)
        assert not any(COUNT_KEY in r["metadata"] for r in never)


def rollups_received(paigo: FakePaigo) -> int:
    return sum(1 for r in list(paigo.received) if COUNT_KEY in r.record.get("metadata", {}))


def totals(records: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], str]:
    """Each (customer, dimension, hour, metadata)'s aggregate, as Paigo would bill it."""
    groups: dict[tuple[str, str, str, str], list[tuple[Any, Decimal]]] = defaultdict(list)
    for r in records:
        metadata = {k: v for k, v in r.get("metadata", {}).items() if k == "region"}
        hour = instant(r["timestamp"]).strftime("%Y-%m-%dT%H")
        key = (r["customerId"], r["dimensionId"], hour, str(sorted(metadata.items())))
        groups[key].append((instant(r["timestamp"]), Decimal(r["recordValue"])))
    out = {}
    for key, points in groups.items():
        values = [value for _, value in points]
        aggregation = {**AGGREGATIONS, **NEVER}[key[1]]
        if aggregation == "sum":
            out[key] = str(sum(values))
        elif aggregation in ("max", "min"):
            out[key] = str((max if aggregation == "max" else min)(values))
        elif aggregation == "last":
            out[key] = str(max(points)[1])
        else:
            out[key] = f"{len(values)} records"
    return out
