"""One typed view of delivery, read by `/status`, `/readyz` and the metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from agent.delivery.exits import Reason
from agent.delivery.rollup import RollupStatus


@dataclass(slots=True)  # not frozen: one is made per send, and a frozen init costs twice
class LastResult:
    status: int
    error: str
    at: float  # Unix time


@dataclass(frozen=True)
class DeliveryStatus:
    """What delivery is doing, and what has left the agent's care."""

    mode: str
    degraded: str  # why delivery cannot work until a person acts ("" when it can)
    paused_for_s: float
    circuit_open: bool
    concurrency_limit: float
    in_flight: int
    buffered_records: int
    parked_pairs: list[tuple[str, str]]
    left: dict[str, int]  # records that left the agent's care, by reason
    unknown_outcomes: int
    duplicates_prevented: int
    deliveries_not_recorded: int
    last_result: LastResult | None
    rollup: RollupStatus | None = None
    records_given_back: int = 0  # by lanes held apart, to be read again (`intake`)

    def as_dict(self) -> dict[str, object]:
        return {
            "degraded": bool(self.degraded),
            "reason": self.degraded,
            "paused_for_s": round(self.paused_for_s, 3),
            "circuit_open": self.circuit_open,
            "concurrency_limit": round(self.concurrency_limit, 2),
            "in_flight": self.in_flight,
            "buffered_records": self.buffered_records,
            "parked_pairs": [{"customerId": c, "dimensionId": d} for c, d in self.parked_pairs],
            "delivered": self.left.get(Reason.DELIVERED.value, 0),
            "dead_lettered": self.left.get(Reason.DEAD_LETTERED.value, 0),
            "left": self.left,
            "mode": self.mode,
            "unknown_outcomes": self.unknown_outcomes,
            "duplicates_prevented": self.duplicates_prevented,
            "deliveries_not_recorded": self.deliveries_not_recorded,
            "last_result": None if self.last_result is None else asdict(self.last_result),
            "rollup": None if self.rollup is None else self.rollup.as_dict(),
            "records_given_back": self.records_given_back,
        }
