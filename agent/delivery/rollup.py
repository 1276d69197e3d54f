"""Rollups: one record per group of records instead of one per record.

Paigo defines a record's timestamp as "the time the usage occurred, or the end of the usage
period", so one record may carry a period's total. For a dimension whose aggregation is
`sum`, `max`, `min` or `last` (Paigo's catalog says, `agent.catalog`) and that
`[rollup] dimensions` names (or every such one, with `auto = true`), the intake gives the
records to `Rollups` instead of sending each. Never rolled up: `count` and `average`
dimensions (a rollup would change them), a dimension whose aggregation is not known, and
records with `invoice=true`.

A *group* is (customerId, dimensionId, the `window_s` window of the timestamp, metadata).
Windows are aligned to the Unix epoch and `window_s` divides 900, so a window never
straddles a quarter hour, where hours, days, months and billing periods begin. A group
closes `LINGER_S` after its window ends (or after it opened, for a window already past:
then a late record for a closed window forms its own rollup in the same window). Its record:

| field         | value                                                                       |
|---------------|-----------------------------------------------------------------------------|
| `recordValue` | `sum`: the exact decimal sum (no floats); `max`/`min`: that member's value; |
|               | `last`: the value with the latest timestamp (ties: the later accepted)      |
| `timestamp`   | the latest member's, as that member wrote it (ties: the later accepted)     |
| `metadata`    | the group's, plus the stamp and `usageAgentRecords`: how many it holds      |

Effectively-once holds for rollups. A rollup's membership is written durably to the
ledger (`Formation`, one JSON object in the marks spool) before its first send:

    {"r": rollup id, "b": the exact JSON body sent, "s": [member seqs],
     "k": {"<seq>": the member's idempotency key, for members that had one}}

and the formation is the rollup's mark: after a crash its members, still in the usage
spool, come back as the same rollup, never as a second one under another identity
(effectively-once: checked before it is sent again; at-least-once: sent again
byte-identical, and Paigo's store overwrites an identical point). The raw records stay in
the usage spool until their rollup leaves; the deliveries file lists each rollup's
members' ids (`"m"`), so `reconcile` can explain a sum. A rollup's id is
`<spool id>-<first member's seq>-rollup`.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow
from typing import Any, Final

import orjson

from agent.config import RollupConfig
from agent.delivery.reads import instant
from agent.records import Envelope, Record

AGGREGATIONS: Final = frozenset({"sum", "max", "min", "last"})  # exact when rolled up
LINGER_S: Final = 1.0  # a group waits this long after its window ends for late members
MAX_OPEN_RECORDS: Final = 1_000_000  # members of open groups: the intake waits beyond it
CATALOG_WAIT_S: Final = 30.0  # at start, how long records wait for a catalog never read yet
COUNT_KEY: Final = "usageAgentRecords"
EXACT: Final = Context(prec=1000, traps=[Inexact, InvalidOperation, Overflow])

GroupKey = tuple[str, str, int, bytes]  # customerId, dimensionId, window index, metadata


@dataclass(frozen=True, slots=True)
class Formation:
    """A rollup as the ledger keeps it: its id, the body sent, and its members."""

    id: str
    body: bytes
    seqs: list[int]
    keys: dict[int, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        keys = {str(seq): key for seq, key in self.keys.items()}
        return orjson.dumps({"r": self.id, "b": self.body.decode(), "s": self.seqs, "k": keys})

    @classmethod
    def decode(cls, data: dict[str, Any]) -> Formation:
        keys = {int(seq): str(key) for seq, key in data["k"].items()}
        return cls(str(data["r"]), str(data["b"]).encode(), [int(s) for s in data["s"]], keys)

    def member_ids(self, spool_id: str) -> list[str]:
        """Each member's stable id (`agent.records.stable_id`), in spool order."""
        prefix = f"{spool_id}-"
        return [self.keys.get(seq) or prefix + str(seq) for seq in self.seqs]

    def record(self, id_key: str) -> Record:
        """The rollup's record without its stamp (as a raw record is before it is sent)."""
        record: Record = orjson.loads(self.body)
        metadata = dict(record["metadata"])  # type: ignore[call-overload]
        metadata.pop(id_key, None)
        return {**record, "metadata": metadata}


@dataclass(slots=True)
class Group:
    """An open group: what its rollup will say so far."""

    aggregation: str
    first: Record  # the first member: customer, dimension, metadata
    close_at: float
    seqs: list[int] = field(default_factory=list)
    keys: dict[int, str] = field(default_factory=dict)
    total: Decimal = Decimal(0)
    chosen: str = ""  # max, min, last: the chosen member's value
    chosen_rank: tuple[Any, ...] = ()  # what chose it: (value or instant, seq)
    latest: tuple[datetime, int] | None = None
    latest_text: str = ""

    def add(self, seq: int, record: Record, moment: datetime, key: str) -> None:
        """Take a member. ArithmeticError (before anything changed) when its value cannot
        be added exactly."""
        value = str(record["recordValue"])
        number = Decimal(value)
        aggregation = self.aggregation
        if aggregation == "sum":
            self.total = EXACT.add(self.total, number)
        else:
            if aggregation == "last":
                rank: tuple[Any, ...] = (moment, seq)
            elif aggregation == "max":
                rank = (number, seq)
            else:  # min: the least value; of equal ones, the later accepted
                rank = (-number, seq)
            if not self.chosen_rank or rank >= self.chosen_rank:
                self.chosen, self.chosen_rank = value, rank
        self.seqs.append(seq)
        if key:
            self.keys[seq] = key
        if self.latest is None or (moment, seq) >= self.latest:
            self.latest, self.latest_text = (moment, seq), str(record["timestamp"])

    def form(self, spool_id: str, id_key: str) -> Formation:
        rollup_id = f"{spool_id}-{self.seqs[0]}-rollup"
        value = format(self.total, "f") if self.aggregation == "sum" else self.chosen
        metadata = dict(self.first.get("metadata") or {})  # type: ignore[call-overload]
        metadata[COUNT_KEY] = len(self.seqs)
        metadata[id_key] = rollup_id
        record = {
            "timestamp": self.latest_text,
            "customerId": self.first["customerId"],
            "dimensionId": self.first["dimensionId"],
            "recordValue": value,
            "metadata": metadata,
        }
        return Formation(rollup_id, orjson.dumps(record), self.seqs, self.keys)


@dataclass
class RollupStatus:
    open_groups: int = 0
    open_records: int = 0  # records waiting in open windows
    formed: int = 0  # rollups formed since start
    records_rolled_up: int = 0  # the records they hold

    def as_dict(self) -> dict[str, object]:
        return dict(vars(self))


class Rollups:
    def __init__(
        self,
        config: RollupConfig,
        aggregation: Callable[[str], str | None],
        spool_id: str,
        id_key: str,
        *,
        clock: Callable[[], float] = time.time,
        catalog_read: Callable[[], bool] = lambda: True,
    ) -> None:
        """`aggregation`: a dimension's aggregation in Paigo's catalog (None: not known);
        `catalog_read`: whether the catalog was ever read (this run, or kept by the last)."""
        self._catalog_read = catalog_read
        self._waits_until = clock() + CATALOG_WAIT_S
        self._named = frozenset(config.dimensions)
        self._auto = config.auto
        self._window = config.window_s
        self._aggregation = aggregation
        self._spool_id = spool_id
        self._id_key = id_key
        self._clock = clock
        self._groups: dict[GroupKey, Group] = {}
        self._closing: list[tuple[float, int, GroupKey]] = []  # a heap: (close_at, n, key)
        self._count = itertools.count()
        self.status = RollupStatus()

    @property
    def full(self) -> bool:
        return self.status.open_records >= MAX_OPEN_RECORDS

    @property
    def waiting_for_catalog(self) -> bool:
        """At the first start the catalog is not known yet; the intake waits for it a
        while (the records would go one by one), then goes on without."""
        return not self._catalog_read() and self._clock() < self._waits_until

    def aggregation_of(self, dimension: str) -> str | None:
        """How `dimension` is rolled up; None: it is not."""
        if not self._auto and dimension not in self._named:
            return None
        aggregation = self._aggregation(dimension)
        return aggregation if aggregation in AGGREGATIONS else None

    def add(self, seq: int, envelope: Envelope, record: Record, aggregation: str) -> None:
        """A member for its group (opened when needed). ValueError or ArithmeticError when
        it cannot be rolled up (then nothing changed): it is sent on its own. So is a record
        whose metadata has `COUNT_KEY` of its own, which a rollup would overwrite."""
        metadata = record.get("metadata")
        if metadata and COUNT_KEY in metadata:  # type: ignore[operator]
            raise ValueError(f"its metadata has {COUNT_KEY} of its own")
        timestamp = str(record["timestamp"])
        moment = instant(timestamp)
        window = int(moment.timestamp() // self._window)
        meta_key = orjson.dumps(metadata, option=orjson.OPT_SORT_KEYS) if metadata else b""
        key = (str(record["customerId"]), str(record["dimensionId"]), window, meta_key)
        group = self._groups.get(key)
        if group is None:
            group = Group(aggregation, record, 0.0)
            group.add(seq, record, moment, envelope.key)
            self._open(key, group, (window + 1) * self._window)
        else:
            group.add(seq, record, moment, envelope.key)
        self.status.open_records += 1

    def _open(self, key: GroupKey, group: Group, ends: float) -> None:
        """A new group, closing LINGER_S after its window ends; a window already past (a
        late record, a backlog) or far ahead (a skewed clock) at most `window_s` from now."""
        now = self._clock()
        group.close_at = min(max(ends, now), now + self._window) + LINGER_S
        self._groups[key] = group
        heapq.heappush(self._closing, (group.close_at, next(self._count), key))
        self.status.open_groups += 1

    def due(self) -> list[Formation]:
        """The rollups of the groups whose time has come, closed."""
        now = self._clock()
        closing = []
        while self._closing and self._closing[0][0] <= now:
            closing.append(heapq.heappop(self._closing)[2])
        return self._close(closing)

    def next_due_s(self) -> float:
        """Seconds until the next group closes (1 when none is open)."""
        if not self._closing:
            return 1.0
        return max(0.0, self._closing[0][0] - self._clock())

    def _close(self, keys: Iterable[GroupKey]) -> list[Formation]:
        formed = []
        for key in keys:
            group = self._groups.pop(key)
            formed.append(group.form(self._spool_id, self._id_key))
            self.status.open_groups -= 1
            self.status.open_records -= len(group.seqs)
            self.status.formed += 1
            self.status.records_rolled_up += len(group.seqs)
        return formed
