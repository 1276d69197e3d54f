"""The spool's on-disk format: directory layout, segment files, frames and the cursor file.

Everything here is pure (bytes in, values out) except the path helpers, which only join.

Directory layout (spool.dir):

| path                      | what                                                         |
|---------------------------|--------------------------------------------------------------|
| `LOCK`                    | flock'ed by the owning process; holds its pid                |
| `cursor`                  | the durable cursor (JSON, replaced atomically, see below)    |
| `<first seq, 20 digits>.seg` | a segment: a file header, then frames in sequence order   |
| `quarantine/`             | copies of damaged bytes found while reading, for forensics   |
| `quarantine/lost.json`    | `{"lost_records": N}`: lost to damage over the spool's life  |
| `segment.spare`           | a zero-filled file, renamed into the next segment (see below) |
| `segment.spare.tmp`       | a spare being filled; deleted at open                        |

Segment file header, `SEGMENT_HEADER_SIZE` bytes (integers little-endian):

| offset | size | field                                                |
|--------|------|------------------------------------------------------|
| 0      | 6    | magic `SEGMENT_MAGIC` (b"UASPL\\0")                   |
| 6      | 2    | format version (u16), `FORMAT_VERSION`               |
| 8      | 8    | sequence number of the segment's first frame (u64)   |

Frame, `FRAME_HEADER_SIZE` bytes of header then the payload:

| offset | size | field                                                            |
|--------|------|------------------------------------------------------------------|
| 0      | 4    | magic `FRAME_MAGIC` (b"\\xffUAf"; 0xFF never occurs in UTF-8)      |
| 4      | 4    | CRC32C (Castagnoli) of bytes 8 .. 20+N: length, sequence, payload |
| 8      | 4    | payload length N (u32), at most `MAX_PAYLOAD_BYTES`              |
| 12     | 8    | sequence number (u64); each frame's is its predecessor's plus one |
| 20     | N    | payload: opaque to the spool (see `agent.records` for its form)  |

Reading rules: a frame whose magic, length or checksum is wrong is damage. The reader
looks for the next offset at which a whole valid frame starts (the magic makes that search
cheap); the bytes in between are quarantined and the sequence numbers they held are counted
as lost. Damage with no valid frame after it, at the end of the newest segment, is a torn
tail from a crash mid-write: it was never acknowledged, and it is cut off.

Zeros: segments are zero-filled before use (`spool.preallocate`), so the newest segment
usually ends in zeros, and a zero where a frame's magic would be ends its frames. Zeros
after the last frame are free space, not damage. A sealed segment is cut to its last frame
before the next segment is created.

Cursor file, JSON: `{"version": 1, "spool_id": "<16 hex>", "next_seq": N, "segment": S,
"offset": O, "acked": [[A, B], ...]}`: every frame with seq < N is consumed; the frame N
starts at byte O of the segment whose first seq is S (a hint: it is checked and, if wrong,
found by a scan); and every frame with A <= seq < B, for each pair, is consumed too: the
acknowledgements beyond N, at most `MAX_CURSOR_RANGES` ranges, lowest first (absent when
there are none; written by agents from 2026-12-01, and an agent before them ignores it:
it hands those records out again, as it always did). A malformed `acked` is ignored the
same way: records are handed out again, never skipped.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import crc32c as _crc32c
import orjson

FORMAT_VERSION: Final = 1
SEGMENT_MAGIC: Final = b"UASPL\x00"
SEGMENT_HEADER = struct.Struct("<6sHQ")
SEGMENT_HEADER_SIZE: Final = SEGMENT_HEADER.size
FRAME_MAGIC: Final = b"\xffUAf"
FRAME_HEADER = struct.Struct("<4sIIQ")
FRAME_HEADER_SIZE: Final = FRAME_HEADER.size
MAX_PAYLOAD_BYTES: Final = 4 * 1024 * 1024
SEGMENT_SUFFIX: Final = ".seg"
_LENGTH_SEQ = struct.Struct("<IQ")


def crc32c(data: bytes | memoryview, value: int = 0) -> int:
    """CRC-32C (Castagnoli), hardware-accelerated where the CPU has it."""
    result: int = _crc32c.crc32c(data, value)
    return result


@dataclass(slots=True)  # not frozen: a frozen __init__ costs twice as much, per record
class Frame:
    seq: int
    payload: bytes
    offset: int  # where the frame starts in its buffer
    end: int  # where the next frame starts


class CorruptFrame(ValueError):
    """The bytes at an offset are not a valid frame."""


def encode_frame(seq: int, payload: bytes) -> bytes:
    length_seq = _LENGTH_SEQ.pack(len(payload), seq)
    checksum = crc32c(payload, crc32c(length_seq))
    return FRAME_HEADER.pack(FRAME_MAGIC, checksum, len(payload), seq) + payload


def encode_frames(first_seq: int, payloads: list[bytes]) -> bytes:
    return b"".join(encode_frame(first_seq + i, p) for i, p in enumerate(payloads))


def decode_frame(buf: bytes, pos: int) -> Frame | None:
    """The frame starting at `pos`; None if `buf` ends before it does; CorruptFrame if the
    bytes there are not a valid frame."""
    end_of_header = pos + FRAME_HEADER_SIZE
    if len(buf) < end_of_header:
        if not FRAME_MAGIC.startswith(buf[pos : pos + 4]):
            raise CorruptFrame("bad magic")
        return None
    magic, checksum, length, seq = FRAME_HEADER.unpack_from(buf, pos)
    if magic != FRAME_MAGIC:
        raise CorruptFrame("bad magic")
    if length > MAX_PAYLOAD_BYTES:
        raise CorruptFrame(f"length {length} over the maximum")
    end = end_of_header + length
    if len(buf) < end:
        return None
    if crc32c(memoryview(buf)[pos + 8 : end]) != checksum:
        raise CorruptFrame("checksum mismatch")
    return Frame(seq, buf[end_of_header:end], pos, end)


def decode_run(buf: bytes, pos: int, seq: int, max_count: int) -> tuple[list[bytes], int]:
    """The payloads of the valid frames from `pos` on whose seqs are `seq`, `seq`+1, ...,
    up to `max_count`, and where they end: the reader's fast path. It stops, without
    judging, at the first frame that is not whole, valid and next in sequence."""
    payloads: list[bytes] = []
    view = memoryview(buf)
    size, unpack, crc = len(buf), FRAME_HEADER.unpack_from, _crc32c.crc32c
    while len(payloads) < max_count and pos + FRAME_HEADER_SIZE <= size:
        magic, checksum, length, frame_seq = unpack(buf, pos)
        end = pos + FRAME_HEADER_SIZE + length
        if magic != FRAME_MAGIC or frame_seq != seq or end > size or length > MAX_PAYLOAD_BYTES:
            break
        if crc(view[pos + 8 : end]) != checksum:
            break
        payloads.append(buf[pos + FRAME_HEADER_SIZE : end])
        pos, seq = end, seq + 1
    return payloads, pos


def next_valid_frame(buf: bytes, pos: int) -> int | None:
    """The first offset after `pos` where a whole valid frame lies in `buf`, or None."""
    candidate = buf.find(FRAME_MAGIC, pos + 1)
    while candidate != -1:
        try:
            if decode_frame(buf, candidate) is not None:
                return candidate
        except CorruptFrame:
            pass
        candidate = buf.find(FRAME_MAGIC, candidate + 1)
    return None


@dataclass(frozen=True)
class Damage:
    """Bytes `start`..`end` of a buffer that hold no valid frame; `tail`: no valid frame
    follows them (`end` is then the buffer's end)."""

    start: int
    end: int
    tail: bool


def walk_frames(buf: bytes, pos: int) -> Iterator[Frame | Damage]:
    """The valid frames of `buf` from `pos` on, and the damage between and after them,
    in order (the reading rules above, without acting on them)."""
    while pos < len(buf):
        try:
            frame = decode_frame(buf, pos)
        except CorruptFrame:
            frame = None
        if frame is not None:
            yield frame
            pos = frame.end
            continue
        nxt = next_valid_frame(buf, pos)
        yield Damage(pos, len(buf) if nxt is None else nxt, nxt is None)
        if nxt is None:
            return
        pos = nxt


def encode_segment_header(first_seq: int) -> bytes:
    return SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, first_seq)


def decode_segment_header(data: bytes) -> tuple[int, int]:
    """(format version, first seq); ValueError if `data` does not start a segment."""
    if len(data) < SEGMENT_HEADER_SIZE:
        raise ValueError("shorter than a segment header")
    magic, version, first_seq = SEGMENT_HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC:
        raise ValueError("not a usage-agent spool segment (bad magic)")
    return version, first_seq


MAX_CURSOR_RANGES: Final = 4096  # acknowledged ranges a cursor file keeps (about 80 KB)


@dataclass(frozen=True, slots=True)
class Cursor:
    spool_id: str
    next_seq: int
    segment: int | None = None  # where frame next_seq starts: a hint, checked before use
    offset: int | None = None
    acked: tuple[tuple[int, int], ...] = ()  # consumed ranges [A, B) beyond next_seq


def encode_cursor(cursor: Cursor) -> bytes:
    body: dict[str, object] = {
        "version": FORMAT_VERSION,
        "spool_id": cursor.spool_id,
        "next_seq": cursor.next_seq,
    }
    if cursor.segment is not None and cursor.offset is not None:
        body["segment"], body["offset"] = cursor.segment, cursor.offset
    if cursor.acked:
        body["acked"] = cursor.acked
    return orjson.dumps(body)


def decode_cursor(data: bytes) -> Cursor:
    """The cursor in `data`; ValueError naming what is wrong."""
    body = orjson.loads(data)
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    if body.get("version") != FORMAT_VERSION:
        raise ValueError(f"version {body.get('version')!r}, this agent reads {FORMAT_VERSION}")
    spool_id, next_seq = body.get("spool_id"), body.get("next_seq")
    segment, offset = body.get("segment"), body.get("offset")
    if not isinstance(spool_id, str) or not isinstance(next_seq, int) or next_seq < 0:
        raise ValueError("spool_id or next_seq missing or of the wrong type")
    if not (isinstance(segment, int) and isinstance(offset, int)):
        segment = offset = None
    return Cursor(spool_id, next_seq, segment, offset, _acked_ranges(body.get("acked"), next_seq))


def _acked_ranges(value: object, next_seq: int) -> tuple[tuple[int, int], ...]:
    """The `acked` ranges, or none at all when any is malformed (never skip a record)."""
    if not isinstance(value, list):
        return ()
    ranges = []
    for pair in value:
        if not (isinstance(pair, list) and len(pair) == 2):
            return ()
        start, end = pair
        if not (type(start) is int and type(end) is int and next_seq < start < end):
            return ()
        ranges.append((start, end))
    return tuple(ranges)


def spare_path(directory: Path) -> Path:
    return directory / "segment.spare"


def spare_tmp_path(directory: Path) -> Path:
    return directory / "segment.spare.tmp"


def segment_path(directory: Path, first_seq: int) -> Path:
    return directory / f"{first_seq:020d}{SEGMENT_SUFFIX}"


def segment_first_seq(path: Path) -> int | None:
    """The first seq a segment's file name carries, or None for any other file."""
    stem = path.name.removesuffix(SEGMENT_SUFFIX)
    if path.name.endswith(SEGMENT_SUFFIX) and len(stem) == 20 and stem.isdigit():
        return int(stem)
    return None


def cursor_path(directory: Path) -> Path:
    return directory / "cursor"


def lock_path(directory: Path) -> Path:
    return directory / "LOCK"


def lost_path(directory: Path) -> Path:
    return directory / "quarantine" / "lost.json"


def quarantine_path(directory: Path, segment_first: int, offset: int) -> Path:
    return directory / "quarantine" / f"{segment_first:020d}-{offset:012d}.bin"
