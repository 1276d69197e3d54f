"""Rollups: which records are rolled up, into which group, and what each rollup says."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.config import RollupConfig
from agent.delivery.ledger import read_deliveries
from agent.delivery.rollup import COUNT_KEY, LINGER_S, Formation, Rollups
from agent.records import Envelope
from agent.testing.fake_paigo import FakePaigo
from tests.conftest import AgentFactory, agent_config, delivering, eventually, record

AGGREGATIONS = {"bytes": "sum", "peak": "max", "low": "min", "seats": "last", "calls": "count"}
AGGREGATIONS["avg"] = "average"
ID_KEY = "usageAgentRecordId"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def at(text: str) -> float:
    from agent.delivery.reads import instant

    return instant(text).timestamp()


def rollups(clock: Clock, **config: Any) -> Rollups:
    settings = {"dimensions": tuple(AGGREGATIONS), **config}
    return Rollups(RollupConfig(**settings), AGGREGATIONS.get, "spool", ID_KEY, clock=clock)


def usage(value: str, timestamp: str = "2026-11-25T10:00:01Z", **fields: Any) -> dict[str, Any]:
    return {
        "timestamp": timestamp,
        "customerId": "c1",
        "dimensionId": "bytes",
        "recordValue": value,
        **fields,
    }


def feed(r: Rollups, records: list[dict[str, Any]], first_seq: int = 0) -> None:
    for seq, one in enumerate(records, first_seq):
        aggregation = r.aggregation_of(one["dimensionId"])
        assert aggregation is not None
        r.add(seq, Envelope(orjson.dumps(one), 0), one, aggregation)


def closed(r: Rollups, clock: Clock, window_s: int = 10) -> list[Formation]:
    """The rollups once every open group's time has come."""
    clock.now += window_s + LINGER_S
    return r.due()


def formed(formation: Formation) -> dict[str, Any]:
    record: dict[str, Any] = orjson.loads(formation.body)
    return record


def test_only_sum_max_min_and_last_dimensions_named_or_auto_are_rolled_up():
    clock = Clock(0)
    named = rollups(clock, dimensions=("bytes", "calls", "avg", "nowhere"))
    assert named.aggregation_of("bytes") == "sum"
    assert named.aggregation_of("peak") is None  # not named
    assert named.aggregation_of("calls") is None  # count: a rollup would change it
    assert named.aggregation_of("avg") is None  # average: likewise
    assert named.aggregation_of("nowhere") is None  # aggregation not known
    auto = rollups(clock, dimensions=(), auto=True)
    assert [d for d in AGGREGATIONS if auto.aggregation_of(d)] == ["bytes", "peak", "low", "seats"]


def test_a_sum_is_exact_in_decimal_and_the_rollup_carries_the_latest_timestamp_and_count():
    clock = Clock(at("2026-11-25T10:00:30Z"))
    r = rollups(clock)
    values = ["0.1", "0.2", "10", "0.000000000000000000000000000001", "-3"]
    stamps = ["2026-11-25T10:00:01Z", "2026-11-25T10:00:03.5+00:00", "2026-11-25 10:00:02Z"]
    stamps += ["2026-11-25T10:00:00Z", "2026-11-25T10:00:09.999Z"]
    feed(r, [usage(v, t) for v, t in zip(values, stamps, strict=True)])
    [formation] = closed(r, clock)
    record = formed(formation)
    assert record["recordValue"] == "7.300000000000000000000000000001"  # 31 digits: a float
    assert sum(Decimal(v) for v in values) == Decimal("7.3")  # or Python's default decimal
    # context, would have dropped the last one
    assert record["timestamp"] == "2026-11-25T10:00:09.999Z"
    assert record["metadata"] == {COUNT_KEY: 5, ID_KEY: "spool-0-rollup"}
    assert formation.seqs == [0, 1, 2, 3, 4]
    assert formation.id == "spool-0-rollup"


@pytest.mark.parametrize(
    ("dimension", "expected"),
    [("peak", "9.0"), ("low", "1"), ("seats", "5")],
)
def test_max_min_and_last_choose_a_members_value_ties_going_to_the_later_accepted(
    dimension: str, expected: str
):
    clock = Clock(at("2026-11-25T11:00:00Z"))
    r = rollups(clock)
    rows = [("1.0", "10:00:01"), ("9", "10:00:02"), ("1", "10:00:00"), ("9.0", "10:00:00")]
    rows += [("7", "10:00:09"), ("5", "10:00:09")]  # both latest: the later accepted wins
    feed(r, [usage(v, f"2026-11-25T{t}Z", dimensionId=dimension) for v, t in rows])
    [formation] = closed(r, clock)
    assert formed(formation)["recordValue"] == expected


def test_groups_split_by_customer_dimension_window_and_metadata_and_never_straddle_an_hour():
    clock = Clock(at("2026-11-25T12:00:00Z"))
    r = rollups(clock, window_s=900)
    feed(
        r,
        [
            usage("1", "2026-11-25T10:59:59.999Z"),
            usage("1", "2026-11-25T11:00:00Z"),  # the next hour: its own window
            usage("1", "2026-11-25T11:14:59Z"),
            usage("1", "2026-11-25T11:05:00Z", customerId="c2"),
            usage("1", "2026-11-25T11:05:00Z", metadata={"region": "eu", "tier": 1}),
            usage("1", "2026-11-25T11:06:00Z", metadata={"tier": 1, "region": "eu"}),
            usage("1", "2026-11-25T11:05:00Z", dimensionId="peak"),
        ],
    )
    groups = sorted((f.seqs, formed(f)["metadata"][COUNT_KEY]) for f in closed(r, clock, 900))
    assert groups == [([0], 1), ([1, 2], 2), ([3], 1), ([4, 5], 2), ([6], 1)]
    assert r.status.open_records == 0 and r.status.records_rolled_up == 7


def test_a_group_closes_a_linger_after_its_window_and_a_late_record_forms_its_own_rollup():
    clock = Clock(at("2026-11-25T10:00:05Z"))
    r = rollups(clock)
    feed(r, [usage("1", "2026-11-25T10:00:01Z"), usage("2", "2026-11-25T10:00:04Z")])
    assert r.status.open_records == 2
    assert r.next_due_s() == pytest.approx(5 + LINGER_S)
    clock.now = at("2026-11-25T10:00:10Z") + LINGER_S - 0.01
    assert r.due() == []
    clock.now += 0.02
    [first] = r.due()
    assert formed(first)["recordValue"] == "3"
    feed(r, [usage("4", "2026-11-25T10:00:02Z")], first_seq=2)  # late: that window closed
    assert r.due() == []  # it lingers too, for other late ones
    clock.now += LINGER_S
    [late] = r.due()
    assert formed(late)["recordValue"] == "4" and formed(late)["timestamp"].endswith("02Z")
    assert late.id != first.id


def test_a_timestamp_far_ahead_of_the_clock_waits_at_most_a_window():
    clock = Clock(at("2026-11-25T10:00:00Z"))
    r = rollups(clock)
    feed(r, [usage("1", "2026-11-26T10:00:00Z")])
    assert r.next_due_s() == pytest.approx(10 + LINGER_S)


def test_a_value_too_long_to_sum_exactly_changes_nothing():
    clock = Clock(0)
    r = rollups(clock)
    feed(r, [usage("1")])
    huge = "8" * 2000  # more digits than a rollup keeps
    with pytest.raises(ArithmeticError):
        feed(r, [usage(huge)], first_seq=1)
    [formation] = closed(r, clock)  # still only the first member
    assert formation.seqs == [0] and formed(formation)["recordValue"] == "1"


def test_a_record_with_a_count_of_its_own_is_not_rolled_up_so_its_count_is_kept():
    clock = Clock(0)
    r = rollups(clock)
    feed(r, [usage("1", metadata={"region": "eu"})])
    with pytest.raises(ValueError, match=COUNT_KEY):  # the intake then sends it on its own
        feed(r, [usage("2", metadata={"region": "eu", COUNT_KEY: 40})], first_seq=1)
    [formation] = closed(r, clock)
    assert formation.seqs == [0] and formed(formation)["metadata"][COUNT_KEY] == 1


def test_a_formation_round_trips_and_names_its_members():
    clock = Clock(at("2026-11-25T11:00:00Z"))
    r = rollups(clock)
    for seq, key in enumerate(["", "app-key:0", ""]):
        one = usage(str(seq))
        r.add(seq, Envelope(orjson.dumps(one), 0, key=key), one, "sum")
    [formation] = closed(r, clock)
    again = Formation.decode(orjson.loads(formation.encode()))
    assert again == formation
    assert again.member_ids("spool") == ["spool-0", "app-key:0", "spool-2"]
    assert again.record(ID_KEY)["metadata"] == {COUNT_KEY: 3}


# --- an agent that rolls up, delivering to the stand-in -----------------------------------

CATALOG = [
    {"dimensionId": "bytes", "aggregationMethod": "sum"},
    {"dimensionId": "seats", "aggregationMethod": "last"},
    {"dimensionId": "calls", "aggregationMethod": "count"},
]


async def test_an_agent_sends_one_record_per_group_with_exact_sums_and_counts_untouched(
    start_agent: AgentFactory, tmp_path: Path
):
    paigo = FakePaigo(dimensions=CATALOG)
    await paigo.start()
    try:
        rollup = {"dimensions": ["bytes", "seats", "calls"], "window_s": 5}
        agent = await start_agent(**delivering(paigo), rollup=rollup)
        posted = [
            record(n, dimensionId="bytes", recordValue=f"{n}.25", timestamp=f"{stamp(n)}")
            for n in range(700)
        ]
        posted += [record(n, dimensionId="calls", recordValue="1") for n in range(50)]
        posted += [record(n, dimensionId="seats", timestamp=stamp(n)) for n in range(70)]
        for first in range(0, len(posted), 100):
            assert (await agent.post(posted[first : first + 100]))[0] == 202
        await eventually(lambda: agent.service.spool.backlog == 0, what="all delivered")
        held = paigo.stored()
        rollups = [r for r in held if COUNT_KEY in r["metadata"]]
        assert {r["dimensionId"] for r in rollups} == {"bytes", "seats"}
        assert sum(r["metadata"][COUNT_KEY] for r in rollups) == 770
        assert len(rollups) <= 2 * 7 * 2  # (customer, window) pairs, a few split by a linger
        calls = [r for r in held if r["dimensionId"] == "calls"]
        assert len(calls) == 50 and not any(COUNT_KEY in r["metadata"] for r in calls)
        assert sums(held, "bytes") == sums(posted, "bytes")
        status = (await agent.get("/status"))[1]["delivery"]
        assert status["rollup"]["records_rolled_up"] == 770 and status["delivered"] == 820
        spool_dir = tmp_path / "spool"
        await eventually(lambda: len(members(spool_dir)) == 770, what="the deliveries file")
        assert len(set(members(spool_dir))) == 770  # each record in one rollup
    finally:
        await paigo.stop()


async def test_only_rollups_whose_send_began_are_checked_after_a_restart(
    start_agent: AgentFactory, tmp_path: Path
):
    """A rollup's formation is written just before its first send: a rollup formed but
    never sent leaves no mark, so after a restart its records form it again and it is sent
    without a read; only the rollups whose send began come back possibly sent, and each is
    checked at Paigo before it is sent again."""
    paigo = FakePaigo(dimensions=CATALOG)
    await paigo.start()
    try:
        paigo.fail_next(10**6, 429, retry_after="600")  # the first answers pause every send
        sections = {**delivering(paigo), "rollup": {"dimensions": ["bytes"], "window_s": 5}}
        agent = await start_agent(**sections)
        posted = [
            record(n, dimensionId="bytes", recordValue="1.5", timestamp=stamp(n))
            for n in range(140)
        ]
        assert (await agent.post(posted))[0] == 202
        groups = 14  # 7 customers x 2 windows, 10 records each

        def formed_all() -> bool:
            sender = agent.service.sender
            rollup = sender.status().rollup if sender is not None else None
            return rollup is not None and rollup.formed == groups

        await eventually(formed_all, what="every rollup formed")
        await asyncio.sleep(0.3)
        await agent.close()
        began = sum(paigo.usage_requests.values())  # each answered 429, then the pause
        assert 0 < began < groups and paigo.reads == []

        paigo.fail_next(0)
        await start_agent(agent_config(tmp_path, **sections))
        await eventually(lambda: len(paigo.stored()) == groups, what="every rollup delivered")
        await asyncio.sleep(0.3)
        assert len(paigo.reads) == began  # the unsent ones went without a check
        held = paigo.stored()
        assert len(held) == groups
        assert all(r["metadata"][COUNT_KEY] == 10 and r["recordValue"] == "15.0" for r in held)
    finally:
        await paigo.stop()


def stamp(n: int) -> str:
    """Two windows of five seconds, apart."""
    return f"2026-11-25T10:00:0{n % 2 * 5 + n % 5}.{n:03d}Z"


def sums(records: list[dict[str, Any]], dimension: str) -> dict[tuple[str, str], Decimal]:
    """The total per (customer, hour) of `dimension`."""
    out: dict[tuple[str, str], Decimal] = {}
    for r in records:
        if r["dimensionId"] == dimension:
            key = (r["customerId"], r["timestamp"][:13])
            out[key] = out.get(key, Decimal(0)) + Decimal(r["recordValue"])
    return out


def members(spool_dir: Path) -> list[str]:
    """The ids of the records the rollups in the deliveries file hold (read as `reconcile`
    reads it: the agent may be appending a line at that moment)."""
    lines = read_deliveries(spool_dir).lines
    return [str(rid) for line in lines for rid in line.get("m", ())]
