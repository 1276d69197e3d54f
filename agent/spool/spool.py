"""The write-ahead spool: durable group-commit appends, ordered reads, out-of-order acks.

The byte layout is in `agent.spool.format`. This module is the behaviour:

* **Append** (`append`): a call's payloads become consecutive frames, all or none. Calls
  that arrive while a write is under way wait and then share the next `pwrite` and
  `fdatasync` (group commit). With `fsync = "always"` the awaitable completes only after
  the fdatasync that covers it; with `"interval"` after the write, and a timer syncs every
  `fsync_interval_ms` (a power loss can lose what was acknowledged in that window, a process
  crash cannot); with `"off"` the operating system decides (tests and benchmarks). The
  write and sync run on the event loop while syncs are fast (a thread hop would cost more
  than the sync), in a thread of their own once they are slow.
* **The active segment** (`agent.spool.writer`): written, synced, cut back on failure,
  rolled to a zero-filled spare when full.
* **Limits** (`agent.spool.space`): an append past `max_bytes` or the free-space reserve,
  or one that meets ENOSPC (cut back), raises `SpoolFull` and stores nothing. A cursor
  that cannot be saved (a full disk) keeps the last one saved.
* **Read** (`read`): entries are handed out once each, in sequence order, and only when
  they are acknowledged to their appender (durable). Damaged frames found on the way are
  copied to `quarantine/`, their sequence numbers are counted as lost and skipped.
* **Give back** (`release`, `rewind`): entries handed out and not acknowledged can be given
  back (a reader that cannot hold them: the records of a parked pair beyond its window);
  `rewind` moves reading back to the first of them, and what is read again is handed out
  only if it is neither acknowledged nor still handed out.
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
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.config import SpoolConfig
from agent.errors import SpoolError, SpoolFull
from agent.fsio import fsync_dir, write_atomically
from agent.logs import Throttled
from agent.records import agent_record_ids
from agent.spool import format as fmt
from agent.spool.acked import Acked
from agent.spool.consumer import Consumer, CursorNow
from agent.spool.reader import Entry, ReadView, SpoolReader, SpoolStats, load_lost
from agent.spool.recovery import (
    Segment,
    check_directory,
    frame_at,
    list_segments,
    load_cursor,
    lock_directory,
    recover_tail,
)
from agent.spool.space import Space, reserve_for
from agent.spool.writer import NoObserver, SegmentWriter, SpoolObserver

log = logging.getLogger(__name__)

FIRST_SEQ: Final = 1
# Commits run on the event loop while an fdatasync takes less than this on average (a
# thread hop costs ~100 us here, more than most syncs); above it, in the write thread.
INLINE_SYNC_BUDGET_S: Final = 0.001
GATHER_ROUNDS: Final = 4  # event-loop turns a commit waits for appends to join it
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_Waiting = tuple[list[bytes], "asyncio.Future[range]"]  # an append's payloads and its answer


@dataclass(frozen=True)
class SpoolStatus:
    """One typed view of the spool, read by `/status`, `/readyz` and the metrics."""

    dir: str
    backlog_records: int
    segment_bytes: int  # the usage segments
    bytes: int  # everything counted in max_bytes (segments, side spools, deliveries file)
    max_bytes: int
    min_free_bytes: int  # the reserve in force (scaled to the volume when configured -1)
    fsync: str
    unwritable: str  # why appends fail ("" when they can succeed)
    full: str  # why an append would be refused for room now ("" when it would not)
    lost_records: int
    quarantined_bytes: int
    torn_tail_bytes: int

    def as_dict(self) -> dict[str, object]:
        return dict(vars(self))


class Spool:
    """The spool of one directory. `open()` before use, `close()` after."""

    def __init__(
        self,
        config: SpoolConfig,
        *,
        observer: SpoolObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        drain_reserve: int = 0,
    ) -> None:
        """`drain_reserve`: free space this spool never takes, whatever spool.min_free_bytes
        says (the usage spool keeps `space.DRAIN_RESERVE` for the writes that drain it)."""
        self.config = config
        self._drain_reserve = drain_reserve
        self.observer: SpoolObserver = observer or NoObserver()
        self.dir = Path(config.dir)
        self.stats = SpoolStats()
        self.spool_id = ""
        self._clock = clock
        self._lock_fd = -1
        self._segments: list[Segment] = []
        self._next_seq = FIRST_SEQ  # the seq the next committed frame gets
        self._durable_seq = FIRST_SEQ  # frames below it are acknowledged to appenders
        self._durable_offset = 0  # end of those frames in the active segment
        self._pending: list[_Waiting] = []
        self._pending_bytes = 0
        self._wakeup = asyncio.Event()
        self._data = asyncio.Event()
        self._reader = SpoolReader(self.dir, self.stats, FIRST_SEQ, FIRST_SEQ, 0)
        self._reading = asyncio.Lock()
        self._consumer = Consumer((FIRST_SEQ, FIRST_SEQ, fmt.SEGMENT_HEADER_SIZE))
        self.space = Space(self.dir, config.max_bytes, config.min_free_bytes, self._segment_bytes)
        self._append_failed = Throttled(log, "spool append failed, nothing of it stored")
        self._cursor_failed = Throttled(
            log, "could not save the spool cursor (the last saved one holds)"
        )
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._write_io = ThreadPoolExecutor(1, thread_name_prefix="spool-write")
        self._writer = SegmentWriter(
            config, self.dir, self.stats, self.observer, lambda: self.space.reserve
        )

    # --- lifecycle ------------------------------------------------------------------------

    def open(self) -> None:
        """Lock the directory, recover the newest segment, place the reader at the cursor.
        Synchronous: it runs once, before the agent serves."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        check_directory(self.dir)
        (self.dir / "quarantine").mkdir(exist_ok=True, mode=0o750)
        self._lock_fd = lock_directory(self.dir)
        self.stats.lost_records_before = load_lost(self.dir)
        self.space.reserve = reserve_for(self.dir, self.config.min_free_bytes, self._drain_reserve)
        fmt.spare_tmp_path(self.dir).unlink(missing_ok=True)  # a fill cut short by a crash
        cursor = load_cursor(self.dir, FIRST_SEQ)
        self.spool_id = cursor.spool_id
        self._segments = self._writer.segments = list_segments(self.dir)
        self._drop_consumed(cursor.next_seq)
        self._next_seq = tail = recover_tail(self.dir, self._segments, self.stats) or FIRST_SEQ
        acked_end = max((end for _, end in cursor.acked), default=0)
        consumed = max(cursor.next_seq, acked_end)
        if self._next_seq < consumed or not self._segments:  # (a tail lost with fsync off)
            self._next_seq = max(self._next_seq, consumed)  # never reuse a consumed seq
            self._writer.roll(self._next_seq)
        else:
            self._writer.open_active()
        self._durable_offset = self._segments[-1].size
        self._durable_seq = self._next_seq
        if cursor.next_seq < self._segments[0].first_seq:
            log.warning("spool cursor %d is before the oldest segment: consumed", cursor.next_seq)
        # (what lies beyond the newest frame holds no entry: only the seq for the next)
        acked = Acked((start, min(end, tail)) for start, end in cursor.acked)
        seq = acked.take_from(max(cursor.next_seq, self._segments[0].first_seq))
        first = self._segment_of(seq)
        offset = fmt.SEGMENT_HEADER_SIZE
        if (
            cursor.segment == first
            and cursor.offset is not None
            and frame_at(self.dir, first, cursor.offset, seq) is not None
        ):
            offset = cursor.offset
        self._reader = SpoolReader(self.dir, self.stats, seq, first, offset)
        self._consumer = Consumer((seq, first, offset), acked, acked_end)
        self._save_cursor(self._cursor_now())

    async def start(self) -> None:
        """Start the committer and the cursor and sync timers (needs a running loop)."""
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
        await loop.run_in_executor(self._write_io, self._try_persist_cursor, self._cursor_now())
        self.close_sync()

    def close_sync(self) -> None:
        self._write_io.shutdown(wait=True)
        self._writer.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # --- appending ------------------------------------------------------------------------

    async def append(self, payloads: list[bytes]) -> range:
        """Store `payloads` as consecutive frames; their seqs once durable. All or nothing:
        SpoolFull or SpoolError means none of them was stored."""
        if self._writer.broken:
            raise SpoolError(f"spool is not writable: {self._writer.broken}")
        if self._closing:
            raise SpoolError("spool is closing")
        size = fmt.FRAME_HEADER_SIZE * len(payloads)
        for payload in payloads:
            if len(payload) > fmt.MAX_PAYLOAD_BYTES:
                raise SpoolError(f"a payload is over {fmt.MAX_PAYLOAD_BYTES} bytes")
            size += len(payload)
        self.space.take(size, self._pending_bytes)
        future: asyncio.Future[range] = asyncio.get_running_loop().create_future()
        self._pending.append((payloads, future))
        self._pending_bytes += size
        self._wakeup.set()
        return await future

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            await self._gather_group()
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
                writer = self._writer
                if writer.sync_ewma_s <= INLINE_SYNC_BUDGET_S:  # cheaper than a thread hop
                    offset = writer.write(first, payloads)
                else:  # a slow disk must not stall the event loop
                    offset = await loop.run_in_executor(
                        self._write_io, writer.write, first, payloads
                    )
            except OSError as exc:
                self._fail_group(group, exc)
                continue
            self._next_seq = self._durable_seq = first + len(payloads)
            self._durable_offset = offset
            self._segments[-1].size = offset
            self.stats.appended_records += len(payloads)
            self.observer.committed(len(payloads))
            self._data.set()
            seq = first
            for batch, future in group:
                if not future.done():
                    future.set_result(range(seq, seq + len(batch)))
                seq += len(batch)

    async def _gather_group(self) -> None:
        """Let the event loop run while that brings more appends: requests whose bytes
        have already arrived then join this commit instead of waiting for the next one."""
        for _ in range(GATHER_ROUNDS):
            waiting = len(self._pending)
            await asyncio.sleep(0)
            if len(self._pending) == waiting:
                return

    def _fail_group(self, group: list[_Waiting], exc: OSError) -> None:
        error: SpoolError
        if exc.errno in _NO_SPACE:
            error = SpoolFull(f"disk full: the filesystem of {self.dir} is full ({exc.strerror})")
            self.space.forget_free()
        else:
            error = SpoolError(f"write to the spool failed: {exc}")
        self._append_failed.error("%s", error)
        for _, future in group:
            if not future.done():
                future.set_exception(error)

    async def _sync_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.fsync_interval_ms / 1000)
            await loop.run_in_executor(self._write_io, self._writer.sync_if_dirty)

    # --- reading and acknowledging --------------------------------------------------------

    async def read(self, max_records: int, max_bytes: int = 1 << 30) -> list[Entry]:
        """Up to `max_records` durable entries not handed out before (or given back since),
        in seq order."""
        async with self._reading:
            while self._reader.seq < self._durable_seq:  # (past entries consumed before)
                before = self._reader.seq
                entries = self._read_once(max_records, max_bytes)
                if entries or self._reader.seq == before:
                    return entries
                await asyncio.sleep(0)  # (a long stretch of them: let the loop run)
            return []

    def _read_once(self, max_records: int, max_bytes: int) -> list[Entry]:
        view = ReadView(
            [s.first_seq for s in self._segments], self._durable_seq, self._durable_offset
        )
        # On the event loop: the bytes are nearly always in the page cache (just written,
        # or read ahead by the kernel), a thread hop costs more than the read, and
        # decoding in a second thread only contends for the GIL (measured: 40 % more
        # drain throughput inline). One call reads at most READ_CHUNK from the file.
        again, start = self._reader.again, self._reader.seq
        result = self._reader.read(view, max_records, max_bytes)
        entries = self._consumer.hand_out(result, again=again, start=start)
        if result.lost:
            self.ack(result.lost)
        return entries

    def release(self, seqs: Iterable[int]) -> None:
        """Entries handed out that the reader gives back unprocessed: `rewind` hands them
        out again. (Not acknowledged, they are handed out again after a restart too.)"""
        self._consumer.release(seqs)

    def rewind(self) -> None:
        """Read again from the first entry given back (nothing when none was)."""
        first = self._consumer.take_given_back()
        if first is not None and first[0] < self._reader.seq:
            self._reader.rewind(*first)

    async def wait_for_data(self, timeout: float) -> None:
        """Return when entries not yet handed out may be there, or after `timeout`."""
        if self._reader.seq < self._durable_seq:
            return
        self._data.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._data.wait()

    def ack(self, seqs: Iterable[int]) -> None:
        """Mark entries delivered. The cursor moves over the contiguous acknowledged prefix;
        what is acknowledged beyond it is kept apart (`Acked`; both persisted by the cursor
        timer); acks of unknown seqs are ignored."""
        reader = self._reader
        self._consumer.ack(seqs, (reader.seq, reader.segment, reader.offset))

    # --- the cursor -----------------------------------------------------------------------

    async def _cursor_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.cursor_interval_ms / 1000)
            if self._consumer.changed:
                cursor = self._cursor_now()
                await loop.run_in_executor(self._write_io, self._try_persist_cursor, cursor)

    def _try_persist_cursor(self, cursor: CursorNow) -> None:
        """`_persist_cursor`, for the timer and close: a failure (a full disk) keeps the
        last saved cursor and is logged; the next tick tries again."""
        try:
            self._persist_cursor(cursor)
        except OSError as exc:
            self._cursor_failed.error("%s", exc)

    def _persist_cursor(self, cursor: CursorNow) -> None:
        """Sync the data the cursor depends on, save it, then delete consumed segments.
        (In the writer's thread: `cursor` was taken on the event loop, where acks change
        what it is made of.)"""
        self._writer.sync_if_dirty()
        self._drop_consumed(self._save_cursor(cursor))

    def _cursor_now(self) -> CursorNow:
        return self._consumer.cursor_now(self.spool_id)

    def _save_cursor(self, cursor: CursorNow) -> int:
        write_atomically(fmt.cursor_path(self.dir), fmt.encode_cursor(cursor[0]))
        return self._consumer.saved(cursor)

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

    def head(self) -> bytes | None:
        """The payload of the oldest unacknowledged entry, when its place is known (one
        small read; None when the backlog is empty or the place is not known)."""
        seq, segment, offset = self._consumer.hint
        if self.backlog == 0 or seq != self._consumer.seq:
            return None
        return frame_at(self.dir, segment, offset, seq)

    def _segment_of(self, seq: int) -> int:
        firsts = [s.first_seq for s in self._segments]
        index = bisect.bisect_right(firsts, seq) - 1
        return firsts[max(index, 0)]

    # --- levels ---------------------------------------------------------------------------

    def _segment_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def bytes_used(self) -> int:
        """Bytes of the usage segments (`space.bytes_used` adds what is counted with them)."""
        return self._segment_bytes()

    @property
    def backlog(self) -> int:
        """Records stored and not yet acknowledged (lost ones excluded)."""
        return self._consumer.backlog(self._durable_seq)

    @property
    def cursor(self) -> int:
        return self._consumer.seq

    def consumed_durably(self, seqs: Sequence[int]) -> bool:
        """Whether a restart would hand none of `seqs` out again (`Consumer`)."""
        return self._consumer.consumed_durably(seqs)

    def status(self) -> SpoolStatus:
        stats = self.stats
        return SpoolStatus(
            dir=str(self.dir),
            backlog_records=self.backlog,
            segment_bytes=self.bytes_used,
            bytes=self.space.bytes_used,
            max_bytes=self.config.max_bytes,
            min_free_bytes=self.space.reserve,
            fsync=self.config.fsync,
            unwritable=self.writable,
            full=self.space.full_reason(),
            lost_records=stats.lost_records,
            quarantined_bytes=stats.quarantined_bytes,
            torn_tail_bytes=stats.torn_tail_bytes,
        )

    @property
    def writable(self) -> str:
        """Empty when appends can succeed, otherwise why not."""
        return self._writer.broken or ("closing" if self._closing else "")

    def record_ids(self, seqs: range) -> list[str]:
        """The agent's ids of these records (`agent.records` says what ids are)."""
        return agent_record_ids(self.spool_id, seqs)
