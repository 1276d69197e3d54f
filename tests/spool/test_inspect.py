"""`spool inspect`: what a spool directory holds, read without changing a byte."""

from __future__ import annotations

import hashlib
from pathlib import Path

from agent.spool.inspect import inspect, report_lines
from tests.conftest import SpoolFactory

DATA = Path(__file__).parent.parent / "data"


def digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_damage_in_a_sealed_segment_is_counted_and_nothing_is_written():
    directory = DATA / "bit-flip-in-sealed-segment"
    before = digest(directory)
    report = inspect(directory)
    assert digest(directory) == before
    first, second = report.segments
    assert first.damaged_bytes > 0 and first.torn_bytes == 0
    assert report.records == first.records + second.records
    assert report.cursor_next_seq is None  # no cursor file: every record is pending
    assert report.pending_records == report.records
    assert any("damaged" in line for line in report_lines(report))


def test_a_torn_tail_is_reported_as_torn_not_as_damage():
    [segment] = inspect(DATA / "torn-tail").segments
    assert segment.torn_bytes > 0 and segment.damaged_bytes == 0 and segment.records > 0


async def test_records_acknowledged_beyond_the_cursor_are_not_pending(open_spool: SpoolFactory):
    spool = await open_spool()
    await spool.append([b"a", b"b", b"c", b"d", b"e"])
    spool.ack(e.seq for e in await spool.read(5) if e.seq in (2, 3))  # the cursor stays at 1
    await spool.close()
    report = inspect(spool.dir, with_sides=False)
    assert (report.cursor_next_seq, report.records, report.pending_records) == (1, 5, 3)
