"""Benchmark of delivery across a network: the stand-in answers each request after a delay.

Run: .venv/bin/python bench/network.py [--seconds S] [--concurrency 32 256] [--catch-up N]

One record per request (Paigo's API), effectively-once and at-least-once. For each round
trip (0, 20, 80 and 200 ms added by the stand-in before it answers) and each
`upstream.concurrency`: records/s from the agent's readiness until its spool is empty, the
sends in flight (mean of /status samples every 50 ms), the agent's CPU µs per record, and
the bound `concurrency / RTT` measured in the same run (at 0 ms the bound is the stand-in's
own rate, not shown). The backlog of each row is sized to take about `--seconds` at the
bound. `--catch-up N`: N records at 80 ms, time to empty, for each concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from agent_process import call, running_agent, stand_in_upstream
from drain import fill, stand_in  # bench/drain.py

DELAYS_S = (0.0, 0.02, 0.08, 0.2)


@dataclass
class Row:
    delivery: str
    concurrency: int
    delay_s: float
    records: int
    rate: float
    in_flight: float
    limit: float  # the pace's limit on sends in flight (mean of the same samples)
    cpu_us: float
    rtt_seen_ms: float  # the agent's mean request time: the stand-in's delay and both loops

    @property
    def bound(self) -> float | None:
        return self.concurrency / self.delay_s if self.delay_s else None


def run(root: Path, fake_url: str, *, delivery: str, concurrency: int, delay: float, n: int) -> Row:
    name = f"{delivery}-{concurrency}-{int(delay * 1000)}"
    spool_dir = root / f"spool-{name}"
    asyncio.run(fill(spool_dir, n))
    call(f"{fake_url}/_fake/reset", {})
    call(f"{fake_url}/_fake/faults", {"delay_s": delay})
    sections = stand_in_upstream(fake_url) + (
        f'dimensions = "off"\ndelivery = "{delivery}"\nconcurrency = {concurrency}\n'
        'unknown_settle_s = 0.5\n[verify]\nmode = "off"\n[log]\nlevel = "WARNING"\n'
    )
    samples: list[float] = []
    limits: list[float] = []
    try:
        with running_agent(root, name, sections) as agent:
            started = time.perf_counter()
            while True:
                status = agent.status()
                samples.append(float(status["delivery"]["in_flight"]))
                limits.append(float(status["delivery"]["concurrency_limit"]))
                if not status["spool"]["backlog_records"]:
                    break
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            cpu = agent.cpu_s()
            rtt_seen = mean_request_s(f"{agent.url}/metrics")
    finally:
        call(f"{fake_url}/_fake/faults", {"delay_s": 0})
    mean = statistics.fmean(samples) if samples else 0.0
    limit = statistics.fmean(limits) if limits else 0.0
    return Row(
        delivery, concurrency, delay, n, n / elapsed, mean, limit, cpu / n * 1e6, rtt_seen * 1e3
    )


def mean_request_s(metrics_url: str) -> float:
    """The mean of usage_agent_upstream_request_seconds, from the agent's /metrics."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in (
            "usage_agent_upstream_request_seconds_sum",
            "usage_agent_upstream_request_seconds_count",
        ):
            values[name.rsplit("_", 1)[1]] = float(value)
    return values["sum"] / values["count"] if values.get("count") else 0.0


def show(row: Row) -> None:
    bound = f"{row.bound:,.0f}" if row.bound else "-"
    ratio = f"{row.rate / row.bound:.2f}" if row.bound else "-"
    cells = (
        row.delivery,
        row.concurrency,
        f"{row.delay_s * 1000:.0f} ms",
        f"{row.records:,}",
        f"{row.rate:,.0f}",
        f"{row.in_flight:.1f}",
        f"{row.limit:.1f}",
        f"{row.cpu_us:.0f}",
        f"{row.rtt_seen_ms:.1f}",
        bound,
        ratio,
    )
    print(" ".join(f"{c!s:>16}" for c in cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="a row's length at its bound")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--delivery", nargs="+", default=["effectively-once", "at-least-once"])
    parser.add_argument("--max-records", type=int, default=60_000)
    parser.add_argument("--delays-ms", type=float, nargs="+", default=[d * 1000 for d in DELAYS_S])
    parser.add_argument("--catch-up", type=int, default=0, help="records for the catch-up run")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    with stand_in("bench-network-", args.dir) as (root, fake_url):
        header = ("delivery", "concurrency", "RTT", "records", "records/s", "in flight", "limit",
                  "CPU us/record", "RTT seen ms", "bound", "ratio")  # fmt: skip
        print(" ".join(f"{h:>16}" for h in header))
        for delivery in args.delivery:
            for concurrency in args.concurrency:
                for delay in (ms / 1000 for ms in args.delays_ms):
                    at_bound = concurrency / delay if delay else args.max_records
                    n = int(min(args.max_records, max(2_000, at_bound * args.seconds)))
                    show(
                        run(
                            root,
                            fake_url,
                            delivery=delivery,
                            concurrency=concurrency,
                            delay=delay,
                            n=n,
                        )
                    )
        if args.catch_up:
            print(f"\ncatch-up: {args.catch_up:,} records at 80 ms, effectively-once")
            for concurrency in args.concurrency:
                row = run(
                    root,
                    fake_url,
                    delivery="effectively-once",
                    concurrency=concurrency,
                    delay=0.08,
                    n=args.catch_up,
                )
                print(f"  concurrency {concurrency}: {row.records / row.rate:,.0f} s "
                      f"({row.rate:,.0f} records/s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
