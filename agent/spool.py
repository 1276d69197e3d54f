"""The write-ahead spool: durable group-commit appends, ordered reads, out-of-order acks.

The byte layout is in `agent.spool_format`. This module is the behaviour:

* **Append** (`append`): a call's payloads become consecutive frames, all or none. Calls
  that arrive while a write is under way wait and then share the next `pwrite` and
  `fdatasync` (group commit). With `fsync = "always"` the awaitable completes only after
  the fdatasync that covers it; with `"interval"` after the write, and a timer syncs every
  `fsync_interval_ms` (a power loss can lose what was acknowledged in that window, a process
  crash cannot); with `"off"` the operating system decides (tests and benchmarks).
* **Limits**: an append that would take the segments past `max_bytes`, or the
  filesystem's free space under `min_free_bytes`, raises `SpoolFull` and stores nothing.
  ENOSPC from the filesystem does the same: the segment is cut back to where it was.
* **Read** (`read`): entries are handed out once each, in sequence order, and only when
  they are acknowledged to their appender (durable). Damaged frames found on the way are
  copied to `quarantine/`, their sequence numbers are counted as lost and skipped.
* **Ack** (`ack`): entries may be acknowledged in any order; the cursor advances over the
  contiguous acknowledged prefix and is persisted atomically every `cursor_interval_ms`,
  after the data it depends on is synced. Segments wholly behind a durable cursor are
  deleted. What was handed out and not acknowledged before a crash is handed out again.
* **Open**: takes an exclusive flock on the directory, scans only the newest segment
  (cutting a torn tail), and positions the reader from the cursor file: start-up costs one
  segment's worth of reading whatever the backlog.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import fcntl
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from agent import spool_format as fmt
from agent.config import SpoolConfig
from agent.errors import SpoolError, SpoolFormatError, SpoolFull, SpoolLocked

log = logging.getLogger(__name__)

FIRST_SEQ: Final = 1
READ_CHUNK: Final = 1024 * 1024
FREE_SPACE_TTL_S: Final = 0.1
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_Waiting = tuple[list[bytes], "asyncio.Future[range]"]  # an append's payloads and its answer


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    payload: bytes


@dataclass
class SpoolStats:
    """Counters and levels, read by metrics and /status."""

    appended_records: int = 0
    commits: int = 0
    fsyncs: int = 0
    lost_records: int = 0
    quarantined_bytes: int = 0
    damage_events: int = 0
    torn_tail_bytes: int = 0


class SpoolObserver(Protocol):
    """Told of each fsync and each group commit (the metrics layer implements it)."""

    def fsynced(self, seconds: float) -> None: ...

    def committed(self, records: int) -> None: ...


class _NoObserver:
    def fsynced(self, seconds: float) -> None:
        pass

    def committed(self, records: int) -> None:
        pass


@dataclass
class _Segment:
    first_seq: int
    path: Path
    size: int


@dataclass
class _ReadPosition:
    """Where the reader is: the next seq to hand out and where its frame starts."""

    seq: int
    segment: int  # first seq of the segment being read
    offset: int
    buf: bytes = b""
    buf_base: int = 0  # file offset of buf[0]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` by `data`: temp file, fsync, rename, fsync of the directory."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        _write_all(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class Spool:
    """The spool of one directory. `open()` before use, `close()` after."""

    def __init__(
        self,
        config: SpoolConfig,
        *,
        observer: SpoolObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.observer: SpoolObserver = observer or _NoObserver()
        self.dir = Path(config.dir)
        self.stats = SpoolStats()
        self.spool_id = ""
        self._clock = clock
        self._lock_fd = -1
        self._segments: list[_Segment] = []
        self._active_fd = -1
        self._next_seq = FIRST_SEQ  # the seq the next committed frame gets
        self._durable_seq = FIRST_SEQ  # frames below it are acknowledged to appenders
        self._durable_offset = 0  # end of those frames in the active segment
        self._unsynced = False
        self._pending: list[_Waiting] = []
        self._pending_bytes = 0
        self._wakeup = asyncio.Event()
        self._read_pos = _ReadPosition(FIRST_SEQ, FIRST_SEQ, fmt.SEGMENT_HEADER_SIZE)
        self._reading = asyncio.Lock()
        self._positions: dict[int, tuple[int, int]] = {}
        self._acked: set[int] = set()
        self._cursor_seq = FIRST_SEQ
        self._cursor_hint = (FIRST_SEQ, FIRST_SEQ, fmt.SEGMENT_HEADER_SIZE)  # seq, segment, offset
        self._saved_cursor_seq = -1
        self._free_bytes = 0
        self._free_checked_at = -1.0
        self._closing = False
        self._broken = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._write_io = ThreadPoolExecutor(1, thread_name_prefix="spool-write")
        self._read_io = ThreadPoolExecutor(1, thread_name_prefix="spool-read")

    # --- lifecycle ------------------------------------------------------------------------

    def open(self) -> None:
        """Lock the directory, recover the newest segment, place the reader at the cursor.
        Synchronous: it runs once, before the agent serves."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        (self.dir / "quarantine").mkdir(exist_ok=True, mode=0o750)
        self._lock()
        cursor = self._load_cursor()
        self.spool_id = cursor.spool_id
        self._segments = self._list_segments()
        self._drop_consumed(cursor.next_seq)
        if self._segments:
            self._recover_tail(self._segments[-1])
        if self._next_seq < cursor.next_seq or not self._segments:
            self._next_seq = max(self._next_seq, cursor.next_seq)
            self._roll(self._next_seq)
        else:
            self._open_active()
        self._durable_seq = self._next_seq
        if cursor.next_seq < self._segments[0].first_seq:
            log.warning("spool cursor %d is before the oldest segment: consumed", cursor.next_seq)
        self._cursor_seq = max(cursor.next_seq, self._segments[0].first_seq)
        first = self._segment_of(self._cursor_seq)
        offset = fmt.SEGMENT_HEADER_SIZE
        if (
            cursor.segment == first
            and cursor.offset is not None
            and self._frame_at(first, cursor.offset, self._cursor_seq)
        ):
            offset = cursor.offset
        self._read_pos = _ReadPosition(self._cursor_seq, first, offset, b"", offset)
        self._cursor_hint = (self._cursor_seq, first, offset)
        self._save_cursor()

    async def start(self) -> None:
        """Start the committer and the cursor and sync timers (needs a running loop)."""
        self._wakeup = asyncio.Event()
        self._tasks = [asyncio.create_task(self._commit_loop(), name="spool-commit")]
        self._tasks.append(asyncio.create_task(self._cursor_loop(), name="spool-cursor"))
        if self.config.fsync == "interval":
            self._tasks.append(asyncio.create_task(self._sync_loop(), name="spool-sync"))

    async def close(self) -> None:
        """Refuse new appends, commit what is pending, persist the cursor, release the lock."""
        self._closing = True
        self._wakeup.set()
        if self._tasks:
            await self._tasks[0]
            for task in self._tasks[1:]:
                task.cancel()
            await asyncio.gather(*self._tasks[1:], return_exceptions=True)
            self._tasks = []
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._write_io, self._persist_cursor)
        self.close_sync()

    def close_sync(self) -> None:
        for fd in (self._active_fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._active_fd = self._lock_fd = -1
        self._write_io.shutdown(wait=True)
        self._read_io.shutdown(wait=True)

    # --- appending ------------------------------------------------------------------------

    async def append(self, payloads: list[bytes]) -> range:
        """Store `payloads` as consecutive frames; their seqs once durable. All or nothing:
        SpoolFull or SpoolError means none of them was stored."""
        if self._broken:
            raise SpoolError(f"spool is not writable: {self._broken}")
        if self._closing:
            raise SpoolError("spool is closing")
        size = sum(len(p) for p in payloads) + fmt.FRAME_HEADER_SIZE * len(payloads)
        if any(len(p) > fmt.MAX_PAYLOAD_BYTES for p in payloads):
            raise SpoolError(f"a payload is over {fmt.MAX_PAYLOAD_BYTES} bytes")
        self._check_space(size)
        future: asyncio.Future[range] = asyncio.get_running_loop().create_future()
        self._pending.append((payloads, future))
        self._pending_bytes += size
        self._wakeup.set()
        return await future

    def _check_space(self, size: int) -> None:
        used = self.bytes_used + self._pending_bytes + size
        if used > self.config.max_bytes:
            raise SpoolFull(f"spool.max_bytes ({self.config.max_bytes}) would be exceeded")
        now = self._clock()
        if now - self._free_checked_at > FREE_SPACE_TTL_S:
            st = os.statvfs(self.dir)
            self._free_bytes = st.f_bavail * st.f_frsize - self._pending_bytes
            self._free_checked_at = now
        if self._free_bytes - size < self.config.min_free_bytes:
            raise SpoolFull(
                f"free space on {self.dir} would fall under spool.min_free_bytes "
                f"({self.config.min_free_bytes})"
            )
        self._free_bytes -= size

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                if self._closing:
                    return
                continue
            group, self._pending = self._pending, []
            self._pending_bytes = 0
            payloads = [p for batch, _ in group for p in batch]
            first = self._next_seq
            try:
                offset = await loop.run_in_executor(self._write_io, self._write, first, payloads)
            except OSError as exc:
                self._fail_group(group, exc)
                continue
            self._next_seq = self._durable_seq = first + len(payloads)
            self._durable_offset = offset
            self._segments[-1].size = offset
            self.stats.appended_records += len(payloads)
            self.stats.commits += 1
            self.observer.committed(len(payloads))
            seq = first
            for batch, future in group:
                if not future.done():
                    future.set_result(range(seq, seq + len(batch)))
                seq += len(batch)

    def _fail_group(
        self, group: list[tuple[list[bytes], asyncio.Future[range]]], exc: OSError
    ) -> None:
        error: SpoolError
        if isinstance(exc, SpoolError):
            error = exc
        elif exc.errno in _NO_SPACE:
            error = SpoolFull(f"the filesystem of {self.dir} is full ({exc.strerror})")
            self._free_checked_at = -1.0
        else:
            error = SpoolError(f"write to the spool failed: {exc}")
        log.error("spool append failed, nothing of it stored: %s", error)
        for _, future in group:
            if not future.done():
                future.set_exception(error)

    def _write(self, first_seq: int, payloads: list[bytes]) -> int:
        """In the write thread: roll if due, write the frames, sync; the new end offset.
        On failure the segment is cut back to its previous end and the error re-raised."""
        active = self._segments[-1]
        if active.size >= self.config.segment_bytes:
            self._roll(first_seq)
            active = self._segments[-1]
        data = fmt.encode_frames(first_seq, payloads)
        start = active.size
        try:
            _write_all(self._active_fd, data, start)
            if self.config.fsync == "always":
                self._fdatasync()
            else:
                self._unsynced = True
        except OSError as exc:
            self._cut_back(start, exc)
            raise
        return start + len(data)

    def _cut_back(self, offset: int, cause: OSError) -> None:
        try:
            os.ftruncate(self._active_fd, offset)
            os.fdatasync(self._active_fd)
        except OSError as exc:
            self._broken = f"cannot cut back a failed write ({exc}) after: {cause}"
            log.critical("spool broken: %s", self._broken)

    def _fdatasync(self) -> None:
        started = time.perf_counter()
        os.fdatasync(self._active_fd)
        self.stats.fsyncs += 1
        self.observer.fsynced(time.perf_counter() - started)

    async def _sync_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.fsync_interval_ms / 1000)
            await loop.run_in_executor(self._write_io, self._sync_if_dirty)

    def _sync_if_dirty(self) -> None:
        if self._unsynced:
            self._unsynced = False
            self._fdatasync()

    def _roll(self, first_seq: int) -> None:
        """Start a new segment at `first_seq`; durable (file and directory) before use."""
        if self._active_fd >= 0:
            self._sync_if_dirty()
        path = fmt.segment_path(self.dir, first_seq)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            _write_all(fd, fmt.encode_segment_header(first_seq), 0)
            os.fsync(fd)
            fsync_dir(self.dir)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        if self._active_fd >= 0:
            os.close(self._active_fd)
        self._active_fd = fd
        self._segments.append(_Segment(first_seq, path, fmt.SEGMENT_HEADER_SIZE))
        self._durable_offset = fmt.SEGMENT_HEADER_SIZE

    # --- reading and acknowledging --------------------------------------------------------

    async def read(self, max_records: int, max_bytes: int = 1 << 30) -> list[Entry]:
        """Up to `max_records` durable entries not handed out before, in seq order."""
        async with self._reading:
            if self._read_pos.seq >= self._durable_seq:
                return []
            view = self._read_view()
            loop = asyncio.get_running_loop()
            entries, lost, positions = await loop.run_in_executor(
                self._read_io, self._read_sync, view, max_records, max_bytes
            )
        self._positions.update(positions)
        if lost:
            self.ack(lost)
        return entries

    def _read_view(self) -> tuple[list[int], int, int]:
        """What the reader may see: segment first seqs, durable seq and active end offset."""
        return [s.first_seq for s in self._segments], self._durable_seq, self._durable_offset

    def _read_sync(
        self, view: tuple[list[int], int, int], max_records: int, max_bytes: int
    ) -> tuple[list[Entry], list[int], dict[int, tuple[int, int]]]:
        firsts, durable_seq, durable_offset = view
        pos = self._read_pos
        entries: list[Entry] = []
        lost: list[int] = []
        positions: dict[int, tuple[int, int]] = {}
        taken = 0
        while len(entries) < max_records and taken < max_bytes and pos.seq < durable_seq:
            index = bisect.bisect_right(firsts, pos.segment) - 1
            is_active = index == len(firsts) - 1
            limit = durable_offset if is_active else None
            frame = self._next_frame(pos, limit)
            if frame is None:
                if is_active:
                    break
                following = firsts[index + 1]
                self._quarantine_rest(pos, following, lost)
                self._enter_segment(pos, following)
                continue
            if frame.seq < pos.seq:
                pos.offset = frame.end
                continue
            lost.extend(range(pos.seq, frame.seq))
            positions[frame.seq] = (pos.segment, pos.offset)
            entries.append(Entry(frame.seq, frame.payload))
            taken += len(frame.payload)
            pos.seq = frame.seq + 1
            pos.offset = frame.end
        self.stats.lost_records += len(lost)
        return entries, lost, positions

    def _next_frame(self, pos: _ReadPosition, limit: int | None) -> fmt.Frame | None:
        """The valid frame at or after pos.offset in pos.segment, quarantining damage on
        the way; None at the end of what may be read (damage with nothing valid after it
        stays in place: for a sealed segment the caller quarantines it)."""
        while True:
            rel = pos.offset - pos.buf_base
            try:
                frame = fmt.decode_frame(pos.buf, rel)
            except fmt.CorruptFrame:
                frame, damaged = None, True
            else:
                damaged = False
            if frame is not None:
                return fmt.Frame(frame.seq, frame.payload, pos.offset, pos.buf_base + frame.end)
            if not damaged and self._fill(pos, limit, READ_CHUNK):
                continue
            if len(pos.buf) == rel:
                return None
            self._fill(pos, limit, None)
            nxt = fmt.next_valid_frame(pos.buf, 0)  # _fill put pos.offset at buf[0]
            if nxt is None:
                return None
            self._quarantine(pos.segment, pos.offset, pos.buf[:nxt])
            pos.offset = pos.buf_base + nxt

    def _fill(self, pos: _ReadPosition, limit: int | None, chunk: int | None) -> bool:
        """Read up to `chunk` more bytes (None: all) of pos.segment, short of `limit`
        (None: end of file), into pos.buf, dropping what lies behind pos.offset.
        False if there was nothing more to read."""
        keep = pos.buf[pos.offset - pos.buf_base :]
        start = pos.offset + len(keep)
        want = -1 if chunk is None else chunk
        if limit is not None:
            want = limit - start if want < 0 else min(want, limit - start)
        more = b""
        if want != 0:
            try:
                with open(fmt.segment_path(self.dir, pos.segment), "rb") as handle:
                    handle.seek(start)
                    more = handle.read(want)
            except FileNotFoundError:
                log.warning("spool segment %d is gone: taken as consumed", pos.segment)
        pos.buf, pos.buf_base = keep + more, pos.offset
        return bool(more)

    def _quarantine_rest(self, pos: _ReadPosition, following: int, lost: list[int]) -> None:
        """A sealed segment ends in damage: keep its bytes and count its seqs as lost."""
        rest = pos.buf[pos.offset - pos.buf_base :]
        if rest:
            self._quarantine(pos.segment, pos.offset, rest)
        lost.extend(range(pos.seq, following))
        pos.seq = max(pos.seq, following)

    def _enter_segment(self, pos: _ReadPosition, first_seq: int) -> None:
        pos.segment, pos.offset = first_seq, fmt.SEGMENT_HEADER_SIZE
        pos.buf, pos.buf_base = b"", fmt.SEGMENT_HEADER_SIZE

    def _quarantine(self, segment: int, offset: int, data: bytes) -> None:
        path = fmt.quarantine_path(self.dir, segment, offset)
        write_atomically(path, data)
        self.stats.quarantined_bytes += len(data)
        self.stats.damage_events += 1
        log.error(
            "spool damage: %d bytes at offset %d of segment %d copied to %s; reading resumes "
            "at the next valid frame",
            len(data),
            offset,
            segment,
            path,
        )

    def ack(self, seqs: Iterable[int]) -> None:
        """Mark entries delivered. The cursor moves over the contiguous acknowledged prefix
        (persisted by the cursor timer); acks of unknown seqs are ignored."""
        acked = self._acked
        acked.update(seq for seq in seqs if seq >= self._cursor_seq)
        cursor = self._cursor_seq
        positions = self._positions
        while cursor in acked:
            acked.discard(cursor)
            positions.pop(cursor, None)
            cursor += 1
        if cursor != self._cursor_seq:
            self._cursor_seq = cursor
            where = positions.get(cursor)
            if where is None and cursor == self._read_pos.seq:
                where = (self._read_pos.segment, self._read_pos.offset)
            if where is not None:
                self._cursor_hint = (cursor, *where)

    # --- the cursor -----------------------------------------------------------------------

    async def _cursor_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.cursor_interval_ms / 1000)
            if self._cursor_seq != self._saved_cursor_seq:
                await loop.run_in_executor(self._write_io, self._persist_cursor)

    def _persist_cursor(self) -> None:
        """Sync the data the cursor depends on, save it, then delete consumed segments."""
        self._sync_if_dirty()
        self._drop_consumed(self._save_cursor())

    def _save_cursor(self) -> int:
        seq, (hint_seq, segment, offset) = self._cursor_seq, self._cursor_hint
        if hint_seq == seq:
            cursor = fmt.Cursor(self.spool_id, seq, segment, offset)
        else:
            cursor = fmt.Cursor(self.spool_id, seq)
        write_atomically(fmt.cursor_path(self.dir), fmt.encode_cursor(cursor))
        self._saved_cursor_seq = seq
        return seq

    def _load_cursor(self) -> fmt.Cursor:
        path = fmt.cursor_path(self.dir)
        try:
            return fmt.decode_cursor(path.read_bytes())
        except FileNotFoundError:
            return fmt.Cursor(secrets.token_hex(8), FIRST_SEQ)
        except ValueError as exc:
            raise SpoolFormatError(
                str(path), f"unreadable cursor: {exc}", "written by a newer usage-agent?"
            ) from exc

    def _drop_consumed(self, cursor_seq: int) -> None:
        """Delete sealed segments whose every frame is below the durable cursor."""
        dropped = False
        while len(self._segments) > 1 and self._segments[1].first_seq <= cursor_seq:
            segment = self._segments.pop(0)
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()
            dropped = True
        if dropped:
            fsync_dir(self.dir)

    # --- recovery -------------------------------------------------------------------------

    def _lock(self) -> None:
        path = fmt.lock_path(self.dir)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SpoolLocked(
                f"{self.dir} is in use by another usage-agent (pid {owner}); "
                "one spool directory has one owner"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _list_segments(self) -> list[_Segment]:
        found = []
        for path in self.dir.iterdir():
            first = fmt.segment_first_seq(path)
            if first is not None:
                found.append(_Segment(first, path, path.stat().st_size))
        return sorted(found, key=lambda s: s.first_seq)

    def _recover_tail(self, segment: _Segment) -> None:
        """Scan the newest segment: find its end and next seq and cut a torn tail off.
        Damage followed by valid frames is left for the reader to quarantine."""
        data = segment.path.read_bytes()
        try:
            version, first_seq = fmt.decode_segment_header(data)
        except ValueError:
            self._set_aside(segment, data)
            return
        if version != fmt.FORMAT_VERSION:
            raise SpoolFormatError(
                str(segment.path),
                f"format version {version}, this agent reads {fmt.FORMAT_VERSION}",
                "written by a newer usage-agent? upgrade it, or drain the spool first",
            )
        pos, expected = fmt.SEGMENT_HEADER_SIZE, first_seq
        while pos < len(data):
            try:
                frame = fmt.decode_frame(data, pos)
            except fmt.CorruptFrame:
                frame = None
            if frame is not None:
                pos, expected = frame.end, frame.seq + 1
                continue
            nxt = fmt.next_valid_frame(data, pos)
            if nxt is None:
                self._cut_torn_tail(segment, pos, len(data) - pos)
                break
            log.warning("spool recovery: damage at offset %d of %s", pos, segment.path)
            pos = nxt  # the reader quarantines it when it gets there
        segment.size = pos
        self._next_seq = expected

    def _cut_torn_tail(self, segment: _Segment, offset: int, length: int) -> None:
        log.warning(
            "spool recovery: cut a torn tail of %d bytes at offset %d of %s "
            "(a write interrupted by a crash; it had not been acknowledged)",
            length,
            offset,
            segment.path,
        )
        self.stats.torn_tail_bytes += length
        fd = os.open(segment.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _set_aside(self, segment: _Segment, data: bytes) -> None:
        """The newest segment has no valid header: a crash while it was being created
        (then it is empty) or damage. Either way its bytes go to quarantine."""
        self._segments.remove(segment)
        if data.strip(b"\0"):
            self._quarantine(segment.first_seq, 0, data)
        segment.path.unlink()
        fsync_dir(self.dir)
        if self._segments:
            self._recover_tail(self._segments[-1])

    def _open_active(self) -> None:
        active = self._segments[-1]
        self._active_fd = os.open(active.path, os.O_RDWR)
        self._durable_offset = active.size

    def _frame_at(self, segment: int, offset: int, seq: int) -> bool:
        """Whether a valid frame with `seq` starts at `offset` of `segment` (checks the
        cursor file's hint, so that a wrong hint costs a scan, never a quarantine)."""
        if offset < fmt.SEGMENT_HEADER_SIZE:
            return False
        with open(fmt.segment_path(self.dir, segment), "rb") as handle:
            handle.seek(offset)
            head = handle.read(fmt.FRAME_HEADER_SIZE)
            if len(head) < fmt.FRAME_HEADER_SIZE:
                return False
            length = fmt.FRAME_HEADER.unpack(head)[2]
            data = head + handle.read(min(length, fmt.MAX_PAYLOAD_BYTES))
        try:
            frame = fmt.decode_frame(data, 0)
        except fmt.CorruptFrame:
            return False
        return frame is not None and frame.seq == seq

    def _segment_of(self, seq: int) -> int:
        firsts = [s.first_seq for s in self._segments]
        index = bisect.bisect_right(firsts, seq) - 1
        return firsts[max(index, 0)]

    # --- levels ---------------------------------------------------------------------------

    @property
    def bytes_used(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def backlog(self) -> int:
        """Records stored and not yet acknowledged (lost ones excluded)."""
        return self._durable_seq - self._cursor_seq - len(self._acked)

    @property
    def cursor(self) -> int:
        return self._cursor_seq

    @property
    def writable(self) -> str:
        """Empty when appends can succeed, otherwise why not."""
        return self._broken or ("closing" if self._closing else "")

    def record_id(self, seq: int) -> str:
        return f"{self.spool_id}-{seq}"
