"""The active segment: frames written at its end, synced, cut back on failure, and rolled
to the next segment when full.

* **Write** (`write`): one `pwrite` of a group of frames, then (with `fsync = "always"`)
  one `fdatasync`. A failed write (ENOSPC, EIO) is cut back to the segment's previous end,
  so nothing already written is damaged; a cut-back that fails too marks the spool broken.
* **Zero-filled segments** (`preallocate`): once the active segment is half full, a
  thread zero-fills the file the next segment will be (`agent.spool.segments` says why:
  cheaper fdatasyncs). The cost is disk: up to two segments of zeros beyond `bytes_used`.
  Without a spare ready (the first segment, a full disk) a segment grows as it is written.
* **Roll** (`roll`): the active segment is synced and sealed (cut to its last frame)
  before the next one exists.

Threads: `write`, `sync_if_dirty` and `roll` run on the event loop or on the spool's one
write thread, never on both at once for the same call; `lock` guards the fd between them
(the interval sync runs in the write thread while an append may run on the loop).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from agent.config import SpoolConfig
from agent.fsio import open_private, write_all
from agent.spool import format as fmt
from agent.spool.reader import SpoolStats
from agent.spool.recovery import Segment
from agent.spool.segments import create_segment, prepare_spare, seal_segment

log = logging.getLogger(__name__)


class SpoolObserver(Protocol):
    """Told of each fsync and each group commit (the metrics layer implements it)."""

    def fsynced(self, seconds: float) -> None: ...

    def committed(self, records: int) -> None: ...


class NoObserver:
    def fsynced(self, seconds: float) -> None:
        pass

    def committed(self, records: int) -> None:
        pass


class SegmentWriter:
    def __init__(
        self,
        config: SpoolConfig,
        directory: Path,
        stats: SpoolStats,
        observer: SpoolObserver,
        reserve: Callable[[], int],
    ) -> None:
        self.config = config
        self.dir = directory
        self.stats = stats
        self.observer = observer
        self.segments: list[Segment] = []  # the spool's list: the newest is the active one
        self.broken = ""  # why appends can no longer be trusted to this spool
        self.sync_ewma_s = 0.0  # a running mean of fdatasync times
        self.lock = threading.RLock()
        self._reserve = reserve
        self._fd = -1
        self._unsynced = False
        self._spare_wanted = False  # a spare was asked for since the last roll
        self._spare_io = ThreadPoolExecutor(1, thread_name_prefix="spool-spare")

    def open_active(self) -> None:
        self._fd = open_private(self.segments[-1].path, os.O_RDWR)

    def close(self) -> None:
        self._spare_io.shutdown(wait=True, cancel_futures=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def write(self, first_seq: int, payloads: list[bytes]) -> int:
        """Roll if due, write the frames, sync; the new end offset. On failure the segment
        is cut back to its previous end and the error re-raised."""
        with self.lock:
            return self._write_locked(first_seq, payloads)

    def _write_locked(self, first_seq: int, payloads: list[bytes]) -> int:
        config = self.config
        if self.segments[-1].size >= config.segment_bytes:
            self.roll(first_seq)
        active = self.segments[-1]
        data = fmt.encode_frames(first_seq, payloads)
        start = active.size
        try:
            write_all(self._fd, data, start)
            if config.fsync == "always":
                self._fdatasync()
            else:
                self._unsynced = True
        except OSError as exc:
            self._cut_back(start, exc)
            raise
        end = start + len(data)
        half_full = end > config.segment_bytes // 2
        if half_full and config.preallocate and not self._spare_wanted:
            self._spare_wanted = True
            self._spare_io.submit(prepare_spare, self.dir, config.segment_bytes, self._reserve())
        return end

    def _cut_back(self, offset: int, cause: OSError) -> None:
        try:
            os.ftruncate(self._fd, offset)
            os.fdatasync(self._fd)
        except OSError as exc:
            self.broken = f"cannot cut back a failed write ({exc}) after: {cause}"
            log.critical("spool broken: %s", self.broken)

    def _fdatasync(self) -> None:
        started = time.perf_counter()
        os.fdatasync(self._fd)
        took = time.perf_counter() - started
        self.sync_ewma_s += (took - self.sync_ewma_s) * 0.2
        self.stats.fsyncs += 1
        self.observer.fsynced(took)

    def sync_if_dirty(self) -> None:
        with self.lock:
            if self._unsynced:
                self._unsynced = False
                self._fdatasync()

    def roll(self, first_seq: int) -> None:
        """Seal the active segment (synced, cut to its last frame), then start a new one
        at `first_seq`, from the spare when one is ready; durable (file and directory)
        before use."""
        with self.lock:
            if self._fd >= 0:
                self.sync_if_dirty()
                seal_segment(self._fd, self.segments[-1].size)
            path, fd = create_segment(self.dir, first_seq)
            self._spare_wanted = False
            if self._fd >= 0:
                os.close(self._fd)
            self._fd = fd
            self.segments.append(Segment(first_seq, path, fmt.SEGMENT_HEADER_SIZE))
