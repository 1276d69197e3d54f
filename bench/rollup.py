"""Benchmark of rollups: NDJSON ingest of a sum dimension's records, rolled up and delivered.

Run: .venv/bin/python bench/rollup.py [--seconds S] [--window-s W]   (needs wrk)

100 customers x 3 `sum` dimensions, NDJSON bodies of 1,000 records (values with decimals),
timestamps `--age-s` in the past (a window already closed: each group goes out a linger
after it opens, as in a catch-up). wrk posts for `--seconds` at 8 connections; then the
agent drains. Printed, in one run:

* accepted records/s, with rollups on and delivery running, against the ceiling measured in
  the same run: the same load on the agent with `upstream.enabled = false`;
* delivered records/s: every record, from the first post until the spool is empty;
* upstream requests per 100 records (target: at most 1);
* exactness: per (customer, dimension, hour) the stand-in's sum equals the posted sum.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from agent_process import call, running_agent, stand_in_upstream
from drain import stand_in  # bench/drain.py
from ingest import WRK_SCRIPT, wrk  # bench/ingest.py

CUSTOMERS, DIMENSIONS = 100, ("bytes-in", "bytes-out", "gpu-seconds")
PER_BODY = 1000


def body(age_s: float) -> tuple[bytes, Counter[tuple[str, str]]]:
    """One NDJSON body and what it adds per (customer, dimension), in exact decimals."""
    moment = datetime.now(UTC) - timedelta(seconds=age_s)
    # the body's second of timestamps starts 2 s into a 10 s window (rollup.window_s's
    # default): where it straddled two windows, by chance, each key had two groups
    moment -= timedelta(seconds=moment.timestamp() % 10 - 2)
    lines, sums = [], Counter[tuple[str, str]]()
    for n in range(PER_BODY):
        customer, dimension = f"customer-{n % CUSTOMERS:03d}", DIMENSIONS[n % len(DIMENSIONS)]
        value = f"{n % 17}.{n % 100:02d}"
        stamp = (moment + timedelta(milliseconds=n)).isoformat(timespec="milliseconds")
        record = {
            "timestamp": stamp.replace("+00:00", "Z"),
            "customerId": customer,
            "dimensionId": dimension,
            "recordValue": value,
            "metadata": {"region": "eu-west-1"},
        }
        lines.append(json.dumps(record))
        sums[(customer, dimension)] += Decimal(value)  # type: ignore[assignment]
    return ("\n".join(lines) + "\n").encode(), sums


def agent_sections(fake_url: str, *, deliver: bool, window_s: int) -> str:
    upstream = stand_in_upstream(fake_url) if deliver else "[upstream]\nenabled = false\n"
    return (
        f"{upstream}[rollup]\ndimensions = {json.dumps(list(DIMENSIONS))}\n"
        f'window_s = {window_s}\n[log]\nlevel = "WARNING"\n'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--window-s", type=int, default=10)
    parser.add_argument("--age-s", type=float, default=3600.0)
    args = parser.parse_args()
    catalog = [{"dimensionId": d, "aggregationMethod": "sum"} for d in DIMENSIONS]
    root_catalog = Path(os.environ.get("TMPDIR", "/tmp")) / f"rollup-catalog-{os.getpid()}.json"
    root_catalog.write_text(json.dumps(catalog))
    try:
        with stand_in("bench-rollup-", None, "--dimensions", str(root_catalog)) as (root, fake):
            run(root, fake, args)
    finally:
        root_catalog.unlink()


def run(root: Path, fake: str, args: argparse.Namespace) -> None:
    data, per_body = body(args.age_s)
    body_file, script = root / "body.ndjson", root / "post.lua"
    body_file.write_bytes(data)
    script.write_text(WRK_SCRIPT.replace("application/json", "application/x-ndjson"))
    print(
        f"{CUSTOMERS} customers x {len(DIMENSIONS)} sum dimensions, NDJSON bodies of {PER_BODY:,}"
        f" records, wrk 8 connections {args.seconds:.0f} s, rollup window {args.window_s} s,"
        f" timestamps {args.age_s:.0f} s old\n"
    )
    big_bodies = "max_request_bytes = 4194304\n"
    off = agent_sections(fake, deliver=False, window_s=args.window_s)
    with running_agent(root, "off", off, ingest=big_bodies) as agent:
        ceiling = wrk(f"{agent.url}/usage", 8, args.seconds, body_file, script)["rps"] * PER_BODY
    call(f"{fake}/_fake/reset", {})
    on = agent_sections(fake, deliver=True, window_s=args.window_s)
    with running_agent(root, "on", on, ingest=big_bodies) as agent:
        started = time.monotonic()
        accepted = wrk(f"{agent.url}/usage", 8, args.seconds, body_file, script)["rps"]
        accepted_rate = accepted * PER_BODY
        while agent.status()["spool"]["backlog_records"] > 0:
            time.sleep(0.05)
        drained_s = time.monotonic() - started
        cpu = agent.cpu_s()
        status = agent.status()["delivery"]
    records = status["rollup"]["records_rolled_up"]
    held = call(f"{fake}/_fake/records")
    bodies = records // PER_BODY
    expected = {key: value * bodies for key, value in per_body.items()}
    got: dict[tuple[str, str], Decimal] = {}
    for entry in held:
        r = entry["record"]
        key = (r["customerId"], r["dimensionId"])
        got[key] = got.get(key, Decimal(0)) + Decimal(r["recordValue"])
    exact = records % PER_BODY == 0 and got == expected
    print(f"{'':>28} {'records/s':>12} {'ceiling':>12} {'ratio':>6}")
    print(
        f"{'accepted (rollups, sending)':>28} {accepted_rate:>12,.0f} {ceiling:>12,.0f}"
        f" {accepted_rate / ceiling:>6.2f}   (ceiling: the same load, delivery off)"
    )
    print(
        f"{'delivered (first post->empty)':>28} {records / drained_s:>12,.0f}"
        f"   {records:,} records in {drained_s:.1f} s,"
        f" agent CPU {cpu / records * 1e6:.1f} us/record"
    )
    print(
        f"upstream requests: {len(held):,} for {records:,} records:"
        f" {len(held) / records * 100:.3f} per 100 records (target <= 1)"
    )
    print(f"sum per (customer, dimension) at the stand-in equals the posted sum: {exact}")


if __name__ == "__main__":
    main()
