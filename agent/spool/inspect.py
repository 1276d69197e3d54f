"""`usage-agent spool inspect`: what a spool directory holds, read-only.

It takes no lock and writes nothing, so it is safe on a running agent's directory (what it
reports is then a moment's picture: a segment being written may end in a frame that is not
whole yet, counted as `torn_bytes`). It counts frames, not acknowledgements: the records
at and after the cursor, but for those the cursor file keeps as acknowledged beyond it, are
the ones waiting for delivery.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

from agent.errors import SpoolError
from agent.records import decode_envelope
from agent.spool import format as fmt
from agent.spool.acked import AckedRanges
from agent.spool.reader import load_lost
from agent.spool.recovery import list_segments

SIDE_SPOOLS: Final = ("ledger", "idempotency", "verify")


@dataclass
class SegmentReport:
    file: str
    bytes: int
    first_seq: int
    records: int = 0
    damaged_bytes: int = 0  # between valid frames: the agent quarantines it when it reads there
    torn_bytes: int = 0  # after the last valid frame, other than zeros


@dataclass
class SpoolReport:
    dir: str
    segments: list[SegmentReport] = field(default_factory=list)
    records: int = 0
    bytes: int = 0
    cursor_next_seq: int | None = None
    pending_records: int = 0  # at or after the cursor: not yet delivered
    oldest_pending_received: str | None = None
    newest_received: str | None = None
    quarantined_files: int = 0
    quarantined_bytes: int = 0
    lost_records: int = 0  # to damage, over the spool's life (as far as the agent has read)
    side_spools: dict[str, SpoolReport] = field(default_factory=dict)
    dead_letters_bytes: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def inspect(directory: Path, with_sides: bool = True) -> SpoolReport:
    """The report on the spool at `directory`. SpoolError when it is not a spool directory."""
    if not directory.is_dir():
        raise SpoolError(f"{directory} is not a directory")
    report = SpoolReport(str(directory))
    cursor = _cursor(directory)
    report.cursor_next_seq = cursor.next_seq if cursor is not None else None
    acked = AckedRanges(cursor.acked if cursor is not None else ())
    oldest_ms: int | None = None
    newest_ms: int | None = None
    for segment in list_segments(directory):
        data = segment.path.read_bytes()
        seg = SegmentReport(segment.path.name, len(data), segment.first_seq)
        for seq, payload in _frames(data, seg):
            received = _received_ms(payload)
            waiting = report.cursor_next_seq is None or seq >= report.cursor_next_seq
            if waiting and seq not in acked:
                report.pending_records += 1
                if oldest_ms is None and received is not None:
                    oldest_ms = received
            if received is not None:
                newest_ms = received
        report.segments.append(seg)
        report.records += seg.records
        report.bytes += seg.bytes
    report.oldest_pending_received = _time(oldest_ms)
    report.newest_received = _time(newest_ms)
    quarantine = directory / "quarantine"
    if quarantine.is_dir():
        files = [p for p in quarantine.iterdir() if p.is_file() and p.suffix == ".bin"]
        report.quarantined_files = len(files)
        report.quarantined_bytes = sum(p.stat().st_size for p in files)
    report.lost_records = load_lost(directory)
    letters = directory / "deadletter.jsonl"
    report.dead_letters_bytes = letters.stat().st_size if letters.exists() else 0
    if with_sides:
        for name in SIDE_SPOOLS:
            if (directory / name).is_dir():
                report.side_spools[name] = inspect(directory / name, with_sides=False)
    return report


def _frames(data: bytes, seg: SegmentReport) -> list[tuple[int, bytes]]:
    """The valid frames of one segment's bytes, counting damage on `seg` as it goes."""
    found: list[tuple[int, bytes]] = []
    try:
        fmt.decode_segment_header(data)
    except ValueError:
        seg.damaged_bytes = len(data)
        return found
    for item in fmt.walk_frames(data, fmt.SEGMENT_HEADER_SIZE):
        if isinstance(item, fmt.Frame):
            found.append((item.seq, item.payload))
        elif item.tail:
            seg.torn_bytes = len(data[item.start :].rstrip(b"\0"))
        else:
            seg.damaged_bytes += item.end - item.start
    seg.records = len(found)
    return found


def _cursor(directory: Path) -> fmt.Cursor | None:
    try:
        return fmt.decode_cursor(fmt.cursor_path(directory).read_bytes())
    except (OSError, ValueError):
        return None


def _received_ms(payload: bytes) -> int | None:
    try:
        return decode_envelope(payload).received_at_ms
    except ValueError:
        return None  # a side spool's entries are not envelopes


def _time(ms: int | None) -> str | None:
    if ms is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def report_lines(report: SpoolReport) -> list[str]:
    """The report as a readable table."""
    lines = [
        f"spool {report.dir}",
        f"  segments        {len(report.segments)}, {report.bytes:,} bytes, "
        f"{report.records:,} records",
        f"  cursor          {report.cursor_next_seq if report.cursor_next_seq is not None else '-'}"
        f" ({report.pending_records:,} records not yet delivered)",
        f"  oldest pending  {report.oldest_pending_received or '-'}",
        f"  newest          {report.newest_received or '-'}",
        f"  quarantined     {report.quarantined_files} files, {report.quarantined_bytes:,} bytes"
        f" ({report.lost_records:,} records lost to damage)",
        f"  dead letters    {report.dead_letters_bytes:,} bytes",
    ]
    for seg in report.segments:
        damage = f", {seg.damaged_bytes:,} damaged" if seg.damaged_bytes else ""
        torn = f", {seg.torn_bytes:,} torn at the end" if seg.torn_bytes else ""
        lines.append(f"    {seg.file}  {seg.bytes:>12,} bytes  {seg.records:>9,} records"
                     f"{damage}{torn}")  # fmt: skip
    for name, side in report.side_spools.items():
        lines.append(f"  side spool {name:<12} {side.bytes:,} bytes, {side.records:,} records, "
                     f"{side.pending_records:,} pending")  # fmt: skip
    return lines
