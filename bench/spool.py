"""Benchmark of the spool against the limits of its own filesystem, measured in the same run.

Run: .venv/bin/python bench/spool.py [--dir DIR] [--seconds S] [--backlog N]

Prints:
* t_sync: the median latency of one 4 KiB write + fdatasync on the spool's filesystem, and
  the sequential write bandwidth;
* the durable append rate (fsync="always", ~250-byte records) with N concurrent appenders
  that each wait for their acknowledgement, next to the ceiling N / t_sync and the CPU
  ceiling (the same load with fsync="off"), and the ratio to the lower of the two;
* 1,000-record batch appends: records/s;
* records per fsync on average;
* start-up time and peak RSS of a fresh process opening a spool with an empty backlog and
  with `--backlog` unacknowledged records.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.config import SpoolConfig
from agent.spool import Spool

RECORD = (
    b'{"timestamp":"2026-11-25T16:20:49.123Z","customerId":"customer-000123",'
    b'"dimensionId":"api-calls","recordValue":"12.5","metadata":{"region":"eu-west-1",'
    b'"service":"checkout","node":"ip-10-0-12-34","request":"8f14e45fceea167a5a36dedd4bea2543"}}'
)


def t_sync(directory: Path, rounds: int = 300, *, into_zeros: bool = False) -> float:
    """Median latency of a 4 KiB write + fdatasync at the end of a file; `into_zeros`: into
    a zero-filled file instead of a growing one (what the spool's segments pay, see
    spool.preallocate)."""
    path = directory / "t_sync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    block = b"x" * 4096
    samples = []
    try:
        if into_zeros:
            os.write(fd, bytes(len(block) * rounds))
            os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_SET)
        for _ in range(rounds):
            started = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            samples.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(samples)


def bandwidth(directory: Path, total: int = 256 * 1024 * 1024) -> float:
    path = directory / "bandwidth.probe"
    chunk = os.urandom(1024 * 1024)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    started = time.perf_counter()
    try:
        for _ in range(total // len(chunk)):
            os.write(fd, chunk)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - started
    path.unlink()
    return total / elapsed


def config(directory: Path, fsync: str) -> SpoolConfig:
    return SpoolConfig(dir=str(directory), fsync=fsync, min_free_bytes=0, max_bytes=64 * 1024**3)


async def concurrent_appends(
    directory: Path, fsync: str, n: int, seconds: float
) -> tuple[float, float]:
    """(appends/s, records per fsync) with `n` appenders each awaiting its ack."""
    spool = Spool(config(directory, fsync))
    spool.open()
    await spool.start()
    done = 0
    deadline = time.perf_counter() + seconds

    async def appender() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await spool.append([RECORD])
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(appender() for _ in range(n)))
    elapsed = time.perf_counter() - started
    per_fsync = spool.stats.appended_records / max(spool.stats.fsyncs, 1)
    await spool.close()
    shutil.rmtree(directory)
    return done / elapsed, per_fsync


async def batch_appends(directory: Path, writers: int, seconds: float) -> float:
    spool = Spool(config(directory, "always"))
    spool.open()
    await spool.start()
    batch = [RECORD] * 1000
    done = 0
    deadline = time.perf_counter() + seconds

    async def appender() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await spool.append(batch)
            done += len(batch)

    started = time.perf_counter()
    await asyncio.gather(*(appender() for _ in range(writers)))
    elapsed = time.perf_counter() - started
    await spool.close()
    shutil.rmtree(directory)
    return done / elapsed


async def fill(directory: Path, records: int) -> None:
    spool = Spool(config(directory, "off"))
    spool.open()
    await spool.start()
    batch = [RECORD] * 10_000
    for _ in range(records // len(batch)):
        await spool.append(batch)
    await spool.close()


STARTUP_PROBE = """
import resource, sys, time, asyncio
started = time.perf_counter()
from agent.config import SpoolConfig
from agent.spool import Spool
imported = time.perf_counter()
spool = Spool(SpoolConfig(dir=sys.argv[1], min_free_bytes=0, max_bytes=64 * 1024**3))
spool.open()
opened = time.perf_counter()
entries = asyncio.run(spool.read(10))
assert len(entries) == min(10, spool.backlog), (len(entries), spool.backlog)
print(opened - imported, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, spool.backlog)
spool.close_sync()
"""


def startup(directory: Path) -> tuple[float, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", STARTUP_PROBE, str(directory)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="a folder on the filesystem to measure")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--backlog", type=int, default=1_000_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-spool-", dir=args.dir))
    try:
        sync = t_sync(root)
        print(f"filesystem of {root}")
        print(f"  t_sync (4 KiB write+fdatasync, median): {sync * 1e6:8.1f} us")
        print(f"  sequential write bandwidth:             {bandwidth(root) / 1e6:8.1f} MB/s")
        print()
        print("durable appends, ~250-byte records, N appenders each awaiting its ack")
        print(
            f"  {'N':>4} {'appends/s':>10} {'N/t_sync':>10} {'CPU ceil':>10} "
            f"{'ratio':>6} {'rec/fsync':>9}"
        )
        for n in (1, 8, 64, 512):
            rate, per_fsync = await concurrent_appends(root / f"a{n}", "always", n, args.seconds)
            cpu, _ = await concurrent_appends(root / f"c{n}", "off", n, args.seconds)
            ceiling = min(n / sync, cpu)
            print(
                f"  {n:>4} {rate:>10.0f} {n / sync:>10.0f} {cpu:>10.0f} "
                f"{rate / ceiling:>6.2f} {per_fsync:>9.1f}"
            )
        print()
        for writers in (1, 4):
            rate = await batch_appends(root / f"b{writers}", writers, args.seconds)
            print(
                f"1,000-record batches, {writers} appender(s), fsync=always: {rate:,.0f} records/s"
            )
        print()
        empty = root / "empty"
        await fill(empty, 0)
        full = root / "full"
        await fill(full, args.backlog)
        t_empty, rss_empty, _ = startup(empty)
        t_full, rss_full, backlog = startup(full)
        for label, took, rss in (
            ("empty spool", t_empty, rss_empty),
            (f"{backlog:,} unacknowledged records", t_full, rss_full),
        ):
            print(f"start-up, {label:34s} {took * 1e3:7.1f} ms, peak RSS {rss / 1024:6.1f} MiB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
