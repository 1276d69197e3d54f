"""The agent's Prometheus metrics, on a registry that is passed in (never the global one).

Levels that another part owns (the spool's bytes, backlog and oldest record) are read from
it at scrape time by a collector, so they are never stale and never double-booked.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter as TallyCounter
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agent import __version__
from agent.delivery.status import DeliveryStatus
from agent.delivery.verify import VerifyStatus
from agent.spool import Spool

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)


class Metrics:
    """Counters and histograms of ingest and the spool (it is the spool's observer)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.ingest = IngestCounts()
        registry.register(_IngestCollector(self.ingest))
        ProcessCollector(registry=registry)  # process_cpu_seconds_total, resident memory, fds
        Gauge(
            "usage_agent_build_info",
            "The agent's version (always 1).",
            ["version"],
            registry=registry,
        ).labels(__version__).set(1)
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

        self.upstream_requests = Counter(
            "usage_agent_upstream_requests_total",
            "Requests to the upstream /usage API by HTTP status (0: no answer).",
            ["status"],
            registry=registry,
        )
        self.upstream_seconds = Histogram(
            "usage_agent_upstream_request_seconds",
            "Latency of one request to the upstream /usage API.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def upstream_replied(self, status: int, seconds: float) -> None:
        self.upstream_requests.labels(str(status)).inc()
        self.upstream_seconds.observe(seconds)

    def watch_sender(self, status: Callable[[], DeliveryStatus]) -> None:
        self.registry.register(_SenderCollector(status))

    def watch_verifier(self, status: Callable[[], VerifyStatus]) -> None:
        self.registry.register(_VerifyCollector(status))

    # SpoolObserver
    def fsynced(self, seconds: float) -> None:
        self.fsync_seconds.observe(seconds)

    def committed(self, records: int) -> None:
        self.records_per_commit.observe(records)

    def watch_spool(self, spool: Spool, oldest_age: Callable[[], float | None]) -> None:
        self.registry.register(_SpoolCollector(spool, oldest_age))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class IngestCounts:
    """Ingest's counters as plain numbers: the hot path only adds (no locks, no label
    lookups); the collector turns them into metrics at scrape time."""

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected: TallyCounter[str] = TallyCounter()
        self.requests: TallyCounter[int] = TallyCounter()
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.latency_sum = 0.0

    def answered(self, status: int, seconds: float) -> None:
        self.requests[status] += 1
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


class _IngestCollector(Collector):
    def __init__(self, counts: IngestCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        counts = self._counts
        yield CounterMetricFamily(
            "usage_agent_records_accepted",
            "Records stored durably and acknowledged to the app.",
            value=counts.accepted,
        )
        rejected = CounterMetricFamily(
            "usage_agent_records_rejected",
            "Records refused at ingest, by reason; none of them was stored.",
            labels=["reason"],
        )
        for reason, n in sorted(counts.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        requests = CounterMetricFamily(
            "usage_agent_ingest_requests", "Ingest HTTP requests by status code.", labels=["status"]
        )
        for status, n in sorted(counts.requests.items()):
            requests.add_metric([str(status)], n)
        yield requests
        cumulative = list(itertools.accumulate(counts.latency_buckets))
        bounds = [str(b) for b in LATENCY_BUCKETS] + ["+Inf"]
        yield HistogramMetricFamily(
            "usage_agent_ingest_request_seconds",
            "Time from a POST /usage request's arrival to its answer.",
            buckets=list(zip(bounds, cumulative, strict=True)),
            sum_value=counts.latency_sum,
        )


class _SpoolCollector(Collector):
    def __init__(self, spool: Spool, oldest_age: Callable[[], float | None]) -> None:
        self._spool = spool
        self._oldest_age = oldest_age

    def collect(self) -> Iterable[Metric]:
        status = self._spool.status()
        levels = {
            "usage_agent_spool_bytes": (
                "Bytes of segment files in the spool.",
                status.segment_bytes,
            ),
            "usage_agent_spool_used_bytes": (
                "Bytes counted against spool.max_bytes (segments, side spools, deliveries file).",
                status.bytes,
            ),
            "usage_agent_spool_max_bytes": ("spool.max_bytes.", status.max_bytes),
            "usage_agent_spool_full": (
                "1 when an append would be refused for lack of room (ingest answers 507).",
                1 if status.full else 0,
            ),
            "usage_agent_spool_records": (
                "Records stored and not yet delivered.",
                status.backlog_records,
            ),
            "usage_agent_spool_lost_records": (
                "Records lost to damaged spool frames since start (quarantined).",
                status.lost_records,
            ),
            "usage_agent_spool_quarantined_bytes": (
                "Damaged spool bytes copied to quarantine/ since start.",
                status.quarantined_bytes,
            ),
        }
        for name, (text, value) in levels.items():
            yield GaugeMetricFamily(name, text, value=value)
        stats = self._spool.stats
        yield CounterMetricFamily(
            "usage_agent_records_lost_to_damage",
            "Records lost to damaged spool frames over the spool's life (kept across restarts).",
            value=stats.lost_records_before + stats.lost_records,
        )
        yield GaugeMetricFamily(
            "usage_agent_spool_min_free_bytes",
            "Free space the spool keeps on its filesystem (spool.min_free_bytes, resolved).",
            value=status.min_free_bytes,
        )
        yield GaugeMetricFamily(
            "usage_agent_filesystem_free_bytes",
            "Free bytes on the spool's filesystem (for unprivileged users, as statvfs says).",
            value=self._spool.space.free_bytes(),
        )
        age = self._oldest_age()
        yield GaugeMetricFamily(
            "usage_agent_spool_oldest_unsent_age_seconds",
            "Age of the oldest record not yet delivered (0 when none).",
            value=age or 0.0,
        )


class _VerifyCollector(Collector):
    def __init__(self, status: Callable[[], VerifyStatus]) -> None:
        self._status = status

    def collect(self) -> Iterable[Metric]:
        state = self._status()
        counters = {
            "usage_agent_verified": (
                "Delivered records read back from Paigo as sent.",
                state.verified,
            ),
            "usage_agent_repaired": (
                "Delivered records found missing at Paigo and sent again.",
                state.repaired,
            ),
            "usage_agent_doubles_detected": (
                "Delivered records Paigo holds more than once (or with other fields).",
                state.doubles_detected + state.differing,
            ),
            "usage_agent_verify_reads": (
                "Reads of Paigo's usage API for verification.",
                state.reads,
            ),
            "usage_agent_verify_reads_failed": (
                "Verification rounds that failed.",
                state.reads_failed,
            ),
            "usage_agent_verify_skipped": (
                "Delivered records not kept for verification (its spool full or failing).",
                state.skipped,
            ),
        }
        for name, (text, value) in counters.items():
            yield CounterMetricFamily(name, text, value=value)
        yield GaugeMetricFamily(
            "usage_agent_unverified_records",
            "Delivered records waiting to be verified.",
            value=state.unverified,
        )
        yield GaugeMetricFamily(
            "usage_agent_unverified_oldest_age_seconds",
            "Seconds since the oldest unverified record was delivered (0: none).",
            value=state.oldest_unverified_age_s or 0.0,
        )


class _SenderCollector(Collector):
    def __init__(self, status: Callable[[], DeliveryStatus]) -> None:
        self._status = status

    def collect(self) -> Iterable[Metric]:
        state = self._status()
        left = state.left
        counters = {
            "usage_agent_records_delivered": (
                "Records delivered upstream (2xx).",
                left.get("delivered", 0),
            ),
            "usage_agent_records_dead_lettered": (
                "Records the upstream refused for good, in the dead-letter file.",
                left.get("dead_lettered", 0),
            ),
            "usage_agent_duplicates_prevented": (
                "Records whose send had an unknown outcome and that Paigo was found to hold.",
                state.duplicates_prevented,
            ),
            "usage_agent_unknown_outcomes": (
                "Sends whose outcome was unknown (timeout, reset, 500, 502, 504).",
                state.unknown_outcomes,
            ),
            "usage_agent_deliveries_not_recorded": (
                "Deliveries not written to the deliveries file (disk full, write error).",
                state.deliveries_not_recorded,
            ),
            "usage_agent_records_given_back": (
                "Records of parked or settling pairs given back to the spool, to be read "
                "again when their pair is back.",
                state.records_given_back,
            ),
        }
        for name, (text, value) in counters.items():
            yield CounterMetricFamily(name, text, value=value)
        by_reason = CounterMetricFamily(
            "usage_agent_records_left",
            "Records that left the agent's care, by reason (delivered, found, "
            "dead_lettered, unreadable).",
            labels=["reason"],
        )
        for reason, count in sorted(left.items()):
            by_reason.add_metric([reason], count)
        yield by_reason
        gauges = {
            "usage_agent_delivery_concurrency_limit": (
                "Sends allowed in flight now.",
                state.concurrency_limit,
            ),
            "usage_agent_delivery_in_flight": ("Sends in flight.", state.in_flight),
            "usage_agent_delivery_paused_seconds": (
                "Seconds left in a pause or backoff.",
                state.paused_for_s,
            ),
            "usage_agent_delivery_degraded": (
                "1 when a configuration problem stops delivery.",
                1.0 if state.degraded else 0.0,
            ),
            "usage_agent_delivery_parked_pairs": (
                "Customer/dimension pairs parked after a 404.",
                len(state.parked_pairs),
            ),
        }
        for name, (text, level) in gauges.items():
            yield GaugeMetricFamily(name, text, value=float(level))
