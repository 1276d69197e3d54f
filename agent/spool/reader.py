"""Reading the spool: frames handed out once each, in order, with damage set aside.

The reader runs on the event loop and sees only what the spool tells it is durable
(`ReadView`). A damaged frame is copied to `quarantine/`, its sequence numbers are
reported as lost, and reading resumes at the next valid frame. A segment that vanished is
taken as consumed. The reader can be moved back (`rewind`) to read again entries it handed
out and that were given back; damage it read past before is not quarantined or counted a
second time.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from agent.fsio import write_atomically
from agent.spool import format as fmt

log = logging.getLogger(__name__)

READ_CHUNK: Final = 256 * 1024  # bounds one read's blocking of the event loop


@dataclass(slots=True)  # not frozen: a frozen __init__ costs twice as much, per record
class Entry:
    seq: int
    payload: bytes


@dataclass
class SpoolStats:
    """Counters read by metrics and /status."""

    appended_records: int = 0
    fsyncs: int = 0
    lost_records: int = 0  # since this process opened the spool
    lost_records_before: int = 0  # by earlier runs (quarantine/lost.json)
    quarantined_bytes: int = 0
    damage_events: int = 0
    torn_tail_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ReadView:
    """What the reader may see: segment first seqs, the durable seq, and the end of the
    durable frames in the newest (active) segment."""

    firsts: list[int]
    durable_seq: int
    durable_offset: int


@dataclass(frozen=True, slots=True)
class ReadResult:
    entries: list[Entry]
    lost: list[int]  # seqs whose frames were damaged
    positions: dict[int, tuple[int, int]]  # seq -> (segment, offset) of each entry


def load_lost(directory: Path) -> int:
    """Records lost to damage by earlier runs of this spool (0 when none or unreadable)."""
    try:
        value = orjson.loads(fmt.lost_path(directory).read_bytes()).get("lost_records", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return value if isinstance(value, int) else 0


def save_lost(directory: Path, stats: SpoolStats) -> None:
    """Keep the spool's lifetime count of lost records, for the counter that survives a
    restart; a failure to keep it is logged, never raised (the records are gone anyway)."""
    total = stats.lost_records_before + stats.lost_records
    try:
        write_atomically(fmt.lost_path(directory), orjson.dumps({"lost_records": total}))
    except OSError as exc:
        log.error("could not keep the count of lost records (%d): %s", total, exc)


def quarantine(directory: Path, stats: SpoolStats, segment: int, offset: int, data: bytes) -> None:
    """Keep a copy of damaged bytes for forensics, and count them."""
    path = fmt.quarantine_path(directory, segment, offset)
    write_atomically(path, data)
    stats.quarantined_bytes += len(data)
    stats.damage_events += 1
    log.error(
        "spool damage: %d bytes at offset %d of segment %d copied to %s; "
        "reading resumes at the next valid frame",
        len(data),
        offset,
        segment,
        path,
    )


class SpoolReader:
    """The read position (next seq, its segment and offset) and a buffer of that segment."""

    def __init__(self, directory: Path, stats: SpoolStats, seq: int, segment: int, offset: int):
        self.dir = directory
        self.stats = stats
        self.seq = seq
        self.segment = segment
        self.offset = offset
        self.furthest = seq  # where reading had got to: below it, entries are read again
        self._buf = b""
        self._buf_base = offset  # file offset of _buf[0]

    @property
    def again(self) -> bool:
        """Whether the reader is reading again what it read before a rewind."""
        return self.seq < self.furthest

    def rewind(self, seq: int, segment: int, offset: int) -> None:
        """Read again from entry `seq`, whose frame starts at `offset` in `segment`."""
        self.furthest = max(self.furthest, self.seq)
        self.seq, self.segment, self.offset = seq, segment, offset
        self._buf, self._buf_base = b"", offset

    def read(self, view: ReadView, max_records: int, max_bytes: int) -> ReadResult:
        entries: list[Entry] = []
        lost: list[int] = []
        positions: dict[int, tuple[int, int]] = {}
        taken = 0
        while len(entries) < max_records and taken < max_bytes and self.seq < view.durable_seq:
            taken += self._read_run(
                entries, positions, max_records - len(entries), max_bytes - taken
            )
            if len(entries) >= max_records or taken >= max_bytes:
                break
            index = bisect.bisect_right(view.firsts, self.segment) - 1
            is_active = index == len(view.firsts) - 1
            frame = self._next_frame(view.durable_offset if is_active else None)
            if frame is None:
                if is_active:
                    break
                self._give_up_segment(view.firsts[index + 1], lost)
                continue
            end = self._buf_base + frame.end
            if frame.seq < self.seq:  # before the cursor: consumed already
                self.offset = end
                continue
            lost.extend(range(self.seq, frame.seq))
            positions[frame.seq] = (self.segment, self.offset)
            entries.append(Entry(frame.seq, frame.payload))
            taken += len(frame.payload)
            self.seq = frame.seq + 1
            self.offset = end
        new_losses = sum(1 for seq in lost if seq >= self.furthest)
        if new_losses:
            self.stats.lost_records += new_losses
            save_lost(self.dir, self.stats)
        return ReadResult(entries, lost, positions)

    def _read_run(
        self,
        entries: list[Entry],
        positions: dict[int, tuple[int, int]],
        most: int,
        budget: int,
    ) -> int:
        """The fast path: whole, valid, consecutive frames already in the buffer, while
        `budget` payload bytes are not yet taken; the bytes taken. Anything else is left
        to the careful path."""
        rel = self.offset - self._buf_base
        payloads, _ = fmt.decode_run(self._buf, rel, self.seq, most)
        offset, segment, seq, taken = self.offset, self.segment, self.seq, 0
        for payload in payloads:
            if taken >= budget:
                break
            size = len(payload)
            positions[seq] = (segment, offset)
            entries.append(Entry(seq, payload))
            offset += fmt.FRAME_HEADER_SIZE + size
            taken += size
            seq += 1
        self.seq, self.offset = seq, offset
        return taken

    def _next_frame(self, limit: int | None) -> fmt.Frame | None:
        """The valid frame at or after self.offset (self.offset then points at it; the
        frame's own offsets are within self._buf), quarantining damage on the way. None at
        the end of what may be read (damage with nothing valid after it stays: in a sealed
        segment the caller gives the rest up)."""
        while True:
            rel = self.offset - self._buf_base
            try:
                frame = fmt.decode_frame(self._buf, rel)
            except fmt.CorruptFrame:
                frame, damaged = None, True
            else:
                damaged = False
            if frame is not None:
                return frame  # its offsets are within self._buf, based at self._buf_base
            if not damaged and self._fill(limit, READ_CHUNK):
                continue
            if len(self._buf) == rel:
                return None
            self._fill(limit, None)
            nxt = fmt.next_valid_frame(self._buf, 0)  # _fill put self.offset at _buf[0]
            if nxt is None:
                return None
            if not self.again:
                quarantine(self.dir, self.stats, self.segment, self.offset, self._buf[:nxt])
            self.offset = self._buf_base + nxt

    def _fill(self, limit: int | None, chunk: int | None) -> bool:
        """Read up to `chunk` more bytes (None: all) of the segment, short of `limit`
        (None: its end), dropping what lies behind self.offset. False if nothing came."""
        keep = self._buf[self.offset - self._buf_base :]
        start = self.offset + len(keep)
        want = -1 if chunk is None else chunk
        if limit is not None:
            want = limit - start if want < 0 else min(want, limit - start)
        more = b""
        if want != 0:
            try:
                with open(fmt.segment_path(self.dir, self.segment), "rb") as handle:
                    handle.seek(start)
                    more = handle.read(want)
            except FileNotFoundError:
                log.warning("spool segment %d is gone: taken as consumed", self.segment)
        self._buf, self._buf_base = keep + more, self.offset
        return bool(more)

    def _give_up_segment(self, following: int, lost: list[int]) -> None:
        """A sealed segment ends in damage (or is gone): keep the bytes, count its
        remaining seqs as lost, and move to the segment starting at `following`."""
        rest = self._buf[self.offset - self._buf_base :]
        if rest and not self.again:
            quarantine(self.dir, self.stats, self.segment, self.offset, rest)
        lost.extend(range(self.seq, following))
        self.seq = max(self.seq, following)
        self.segment = following
        self.offset = self._buf_base = fmt.SEGMENT_HEADER_SIZE
        self._buf = b""
