"""Benchmark of an app's latency while the agent catches up on a backlog.

Run: .venv/bin/python bench/latency.py [--seconds S] [--backlog N]

An app (a process of its own) posts one record every 5 ms on one keep-alive connection and
times each answer, for S seconds:

* idle: the agent has nothing to deliver. This is the floor of the run: one fsync per
  request on this disk, and the client's own time;
* catching up, array mode: the agent drains a backlog of N records to the stand-in on
  loopback, 500 records per request (its busiest loop);
* catching up, single records at 80 ms: the agent drains a backlog one record per request to
  a stand-in that answers after 80 ms, as Paigo does across a region.

Printed: the app's p50, p90, p99 and slowest answer, p99 as a ratio to the idle p99 of the
same run, and the records/s delivered meanwhile. Apps' requests go before delivery's bulk
work (`agent/ingest_first.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from agent_process import call, running_agent, stand_in_upstream
from drain import fill, stand_in  # bench/drain.py

INTERVAL_S = 0.005


def client(port: int, seconds: float) -> None:
    """The app: one record every INTERVAL_S, each answer timed; prints the times (ms)."""
    connection = http.client.HTTPConnection("127.0.0.1", port)
    times: list[float] = []
    due = time.perf_counter()
    end = due + seconds
    while due < end:
        body = json.dumps(
            {
                "timestamp": "2026-12-01T10:00:00Z",
                "customerId": "app",
                "dimensionId": "requests",
                "recordValue": str(len(times)),
            }
        )
        started = time.perf_counter()
        connection.request("POST", "/usage", body, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        times.append((time.perf_counter() - started) * 1000)
        if answer.status != 202:
            sys.exit(f"the agent answered {answer.status}")
        due += INTERVAL_S
        time.sleep(max(0.0, due - time.perf_counter()))
    print(json.dumps(times))


def app_posting(port: int, seconds: float) -> list[float]:
    args = [sys.executable, __file__, "--client", str(port), "--seconds", str(seconds)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return sorted(json.loads(out))


def quantile(times: list[float], q: float) -> float:
    return times[min(len(times) - 1, int(q * len(times)))]


def row(name: str, times: list[float], floor: float | None, rate: float | None) -> str:
    p99 = quantile(times, 0.99)
    cells = [f"{name:>24}", f"{len(times):>6}"]
    cells += [f"{quantile(times, q):>7.2f}" for q in (0.5, 0.9, 0.99)] + [f"{times[-1]:>7.2f}"]
    cells.append(f"{p99 / floor:>8.1f}" if floor else f"{'':>8}")
    cells.append(f"{rate:>12,.0f}" if rate is not None else "")
    return " ".join(cells)


def catching_up(
    root: Path, fake: str, name: str, sections: str, *, backlog: int, seconds: float
) -> tuple[list[float], float]:
    """(the app's times, records/s delivered meanwhile) while the agent drains `backlog`."""
    asyncio.run(fill(root / f"spool-{name}", backlog))
    call(f"{fake}/_fake/reset", {})
    with running_agent(root, name, sections) as agent:
        time.sleep(0.5)
        before = agent.status()["spool"]["backlog_records"]
        started = time.perf_counter()
        times = app_posting(agent.port, seconds)
        elapsed = time.perf_counter() - started
        drained = before - agent.status()["spool"]["backlog_records"] + len(times)
    return times, drained / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--backlog", type=int, default=400_000)
    parser.add_argument("--client", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client is not None:
        client(args.client, args.seconds)
        return
    log = '[log]\nlevel = "WARNING"\n'
    with stand_in("bench-latency-", None, "--accept-arrays") as (root, fake):
        upstream = stand_in_upstream(fake)
        print(
            f"an app posting one record every {INTERVAL_S * 1000:.0f} ms for {args.seconds:.0f} s"
        )
        print(
            f"{'':>24} {'posts':>6} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>7}"
            f" {'p99/idle':>8} {'delivered/s':>12}"
        )
        with running_agent(root, "idle", upstream + log) as agent:
            time.sleep(0.5)
            idle = app_posting(agent.port, args.seconds)
        floor = quantile(idle, 0.99)
        print(row("idle", idle, None, None), flush=True)
        array = upstream + 'mode = "array"\nbatch_max_records = 500\n' + log
        times, rate = catching_up(
            root, fake, "array", array, backlog=args.backlog, seconds=args.seconds
        )
        print(row("catching up, array", times, floor, rate), flush=True)
        call(f"{fake}/_fake/faults", {"delay_s": 0.08})
        times, rate = catching_up(
            root, fake, "single", upstream + log, backlog=60_000, seconds=args.seconds
        )
        print(row("catching up, 80 ms", times, floor, rate), flush=True)


if __name__ == "__main__":
    main()
