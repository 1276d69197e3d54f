"""The agent's Prometheus metrics, on a registry that is passed in (never the global one).

Levels that another part owns (the spool's bytes, backlog and oldest record) are read from
it at scrape time by a collector, so they are never stale and never double-booked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.spool import Spool

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)


class Metrics:
    """Counters and histograms of ingest and the spool (it is the spool's observer)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.records_accepted = Counter(
            "usage_agent_records_accepted_total",
            "Records stored durably and acknowledged to the app.",
            registry=registry,
        )
        self.records_rejected = Counter(
            "usage_agent_records_rejected_total",
            "Records refused at ingest, by reason; none of them was stored.",
            ["reason"],
            registry=registry,
        )
        self.requests = Counter(
            "usage_agent_ingest_requests_total",
            "Ingest HTTP requests by status code.",
            ["status"],
            registry=registry,
        )
        self._requests_by_status: dict[int, Counter] = {}
        self.request_seconds = Histogram(
            "usage_agent_ingest_request_seconds",
            "Time from a POST /usage request's arrival to its answer.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.fsync_seconds = Histogram(
            "usage_agent_spool_fsync_seconds",
            "Latency of one fdatasync of the spool.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.records_per_commit = Histogram(
            "usage_agent_spool_records_per_commit",
            "Records written by one group commit (one write, at most one fsync).",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )

    # SpoolObserver
    def fsynced(self, seconds: float) -> None:
        self.fsync_seconds.observe(seconds)

    def committed(self, records: int) -> None:
        self.records_per_commit.observe(records)

    def count_request(self, status: int) -> None:
        child = self._requests_by_status.get(status)
        if child is None:
            child = self._requests_by_status[status] = self.requests.labels(str(status))
        child.inc()

    def reject(self, reason: str, records: int = 1) -> None:
        self.records_rejected.labels(reason).inc(records)

    def watch_spool(self, spool: Spool, oldest_age: Callable[[], float | None]) -> None:
        self.registry.register(_SpoolCollector(spool, oldest_age))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _SpoolCollector(Collector):
    def __init__(self, spool: Spool, oldest_age: Callable[[], float | None]) -> None:
        self._spool = spool
        self._oldest_age = oldest_age

    def collect(self) -> Iterable[Metric]:
        spool = self._spool
        stats = spool.stats
        levels = {
            "usage_agent_spool_bytes": ("Bytes of segment files in the spool.", spool.bytes_used),
            "usage_agent_spool_records": ("Records stored and not yet delivered.", spool.backlog),
            "usage_agent_spool_lost_records": (
                "Records lost to damaged spool frames since start (quarantined).",
                stats.lost_records,
            ),
            "usage_agent_spool_quarantined_bytes": (
                "Damaged spool bytes copied to quarantine/ since start.",
                stats.quarantined_bytes,
            ),
        }
        for name, (text, value) in levels.items():
            yield GaugeMetricFamily(name, text, value=value)
        age = self._oldest_age()
        yield GaugeMetricFamily(
            "usage_agent_spool_oldest_unsent_age_seconds",
            "Age of the oldest record not yet delivered (0 when none).",
            value=age or 0.0,
        )
