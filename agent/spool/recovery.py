"""Opening a spool directory after whatever happened to it: lock, list, recover the tail.

Only the newest segment is scanned: older ones were sealed (synced) before the next one was
created, so start-up reads at most one segment whatever the backlog. Every step is
idempotent, so a crash during recovery is followed by the same recovery.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from agent.errors import SpoolError, SpoolFormatError, SpoolLocked
from agent.fsio import fsync_dir, open_private, truncate_durably
from agent.spool import format as fmt
from agent.spool.reader import SpoolStats, quarantine

log = logging.getLogger(__name__)


@dataclass
class Segment:
    first_seq: int
    path: Path
    size: int


def check_directory(directory: Path) -> None:
    """Refuse a spool directory that another user could plant files in: owned by another
    user, or writable by group or others. (Every file in it is opened without following
    links, but a directory others can write is no place for billing data.)"""
    st = directory.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise SpoolError(f"{directory} is not a directory (a symlink is not accepted)")
    if st.st_uid != os.geteuid():
        raise SpoolError(
            f"{directory} is owned by uid {st.st_uid}, not by this process (uid "
            f"{os.geteuid()}); chown it to the agent's user"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SpoolError(
            f"{directory} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            "chmod it to 0750 or tighter"
        )


def lock_directory(directory: Path) -> int:
    """Take the directory's exclusive flock (released when the fd closes or the process
    dies); SpoolLocked, naming the owner's pid, when another process has it."""
    fd = open_private(fmt.lock_path(directory), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise SpoolLocked(
            f"{directory} is in use by another usage-agent (pid {owner}); "
            "one spool directory has one owner"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def list_segments(directory: Path) -> list[Segment]:
    found = []
    for path in directory.iterdir():
        first = fmt.segment_first_seq(path)
        if first is not None:
            found.append(Segment(first, path, path.stat().st_size))
    return sorted(found, key=lambda s: s.first_seq)


def recover_tail(directory: Path, segments: list[Segment], stats: SpoolStats) -> int | None:
    """Make the newest segment appendable: drop it if its header never made it to disk,
    cut a torn tail off, set its size. Returns the seq its next frame gets (None when no
    segment is left). Damage followed by valid frames is left for the reader."""
    while segments:
        segment = segments[-1]
        data = segment.path.read_bytes()
        try:
            version, first_seq = fmt.decode_segment_header(data)
        except ValueError:
            _set_aside(directory, segments.pop(), data, stats)
            continue
        if version != fmt.FORMAT_VERSION:
            raise SpoolFormatError(
                str(segment.path),
                f"format version {version}, this agent reads {fmt.FORMAT_VERSION}",
                "written by a newer usage-agent? upgrade it, or drain the spool first",
            )
        segment.size, next_seq = _scan(segment, data, first_seq, stats)
        return next_seq
    return None


def _scan(segment: Segment, data: bytes, first_seq: int, stats: SpoolStats) -> tuple[int, int]:
    """(end of the last valid frame, seq after it), cutting off a torn tail."""
    pos, next_seq = fmt.SEGMENT_HEADER_SIZE, first_seq
    for found in fmt.walk_frames(data, pos):
        if isinstance(found, fmt.Frame):
            pos, next_seq = found.end, found.seq + 1
        elif found.tail:
            _cut_torn_tail(segment, data, pos, stats)
        else:
            log.warning("spool recovery: damage at offset %d of %s", pos, segment.path)
            pos = found.end  # the reader quarantines it when it gets there
    return pos, next_seq


def _cut_torn_tail(segment: Segment, data: bytes, pos: int, stats: SpoolStats) -> None:
    """After the last valid frame: zeros are free space (a zero-filled segment) and stay;
    anything else is a write cut by a crash, never acknowledged, and is cut off."""
    torn = len(data[pos:].rstrip(b"\0"))
    if not torn:
        return
    log.warning(
        "spool recovery: cut a torn tail of %d bytes at offset %d of %s "
        "(a write interrupted by a crash; it had not been acknowledged)",
        torn,
        pos,
        segment.path,
    )
    stats.torn_tail_bytes += torn
    truncate_durably(segment.path, pos)


def _set_aside(directory: Path, segment: Segment, data: bytes, stats: SpoolStats) -> None:
    """A newest segment without a valid header: a crash while it was being created (then
    it holds nothing) or damage. Either way, its bytes go to quarantine and it goes."""
    if data.strip(b"\0"):
        quarantine(directory, stats, segment.first_seq, 0, data)
    segment.path.unlink()
    fsync_dir(directory)


def load_cursor(directory: Path, first_seq: int) -> fmt.Cursor:
    """The cursor file's cursor; a new spool's (a fresh spool id, at `first_seq`) when
    there is none. SpoolFormatError when it cannot be read."""
    path = fmt.cursor_path(directory)
    try:
        return fmt.decode_cursor(path.read_bytes())
    except FileNotFoundError:
        return fmt.Cursor(secrets.token_hex(8), first_seq)
    except ValueError as exc:
        raise SpoolFormatError(
            str(path), f"unreadable cursor: {exc}", "written by a newer usage-agent?"
        ) from exc


def frame_at(directory: Path, segment: int, offset: int, seq: int) -> bytes | None:
    """The payload of the frame `seq` if it starts at `offset` of `segment`, else None
    (checks a position hint, so that a wrong hint costs a scan, never a quarantine)."""
    if offset < fmt.SEGMENT_HEADER_SIZE:
        return None
    try:
        with open(fmt.segment_path(directory, segment), "rb") as handle:
            handle.seek(offset)
            head = handle.read(fmt.FRAME_HEADER_SIZE)
            if len(head) < fmt.FRAME_HEADER_SIZE:
                return None
            length = fmt.FRAME_HEADER.unpack(head)[2]
            data = head + handle.read(min(length, fmt.MAX_PAYLOAD_BYTES))
        frame = fmt.decode_frame(data, 0)
    except (OSError, fmt.CorruptFrame):
        return None
    return frame.payload if frame is not None and frame.seq == seq else None
