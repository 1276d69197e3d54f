"""Room on disk: whether an append of usage may take more of it.

Two bounds, both checked before anything is written:

* `spool.max_bytes`: the usage segments *and* everything else the agent keeps beside them
  (side spools, the deliveries file: registered with `count_also`) stay under it;
* `spool.min_free_bytes`: the filesystem keeps at least this much free. It is the reserve
  that refuses *ingest*; the writes that free space (ledger marks, the cursor) may use it,
  so a full spool can always drain. `-1` (the default) scales it to the volume: the
  smaller of `DEFAULT_RESERVE` and `RESERVE_SHARE` of the filesystem, so a small volume
  (a 256 MiB PVC) is not refused whole. The usage spool never keeps less than
  `DRAIN_RESERVE`, whatever is configured (0 included): the room the ledger's marks and
  the cursor need to drain a full spool until its first segment can be deleted.

Free space is read with statvfs at most every `FREE_SPACE_TTL_S` and debited by what is
appended in between; the bytes counted with the segments (side spools, the deliveries
file, which grow slowly) are read as often, so an append costs no more than before they
were counted. The first refusal is logged, then once a minute with a count.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from agent.errors import SpoolFull
from agent.logs import Throttled

log = logging.getLogger(__name__)

FREE_SPACE_TTL_S: Final = 0.1
DEFAULT_RESERVE: Final = 256 * 1024 * 1024
RESERVE_SHARE: Final = 0.05
DRAIN_RESERVE: Final = 1024 * 1024
PROBE_BYTES: Final = 4096  # "full" for readiness: an append of this size would be refused


def reserve_for(directory: Path, configured: int, floor: int = 0) -> int:
    """The free-space reserve in bytes: `configured`, or with -1 the volume's share; never
    under `floor`."""
    if configured >= 0:
        return max(configured, floor)
    st = os.statvfs(directory)
    return max(floor, min(DEFAULT_RESERVE, int(st.f_blocks * st.f_frsize * RESERVE_SHARE)))


class Space:
    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        reserve: int,
        used: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.reserve = reserve
        self._used = used
        self._others: list[Callable[[], int]] = []
        self._clock = clock
        self._free = 0
        self._others_bytes = 0  # what `count_also` reports, as of the last check
        self._checked_at = -1.0
        self._refused = Throttled(log, "usage refused, the spool is full")
        self._refused_size = 0  # the last append refused, until one of its size would fit

    def count_also(self, bytes_used: Callable[[], int]) -> None:
        """Count what `bytes_used` reports in `max_bytes` too (a side spool, a file)."""
        self._others.append(bytes_used)

    @property
    def bytes_used(self) -> int:
        """Everything counted in `max_bytes`."""
        return self._used() + sum(other() for other in self._others)

    def forget_free(self) -> None:
        """The filesystem said ENOSPC: read the free space again next time."""
        self._checked_at = -1.0

    def take(self, size: int, pending: int) -> None:
        """Debit `size` bytes for an append (`pending`: appended, not yet written), or
        raise SpoolFull and take nothing."""
        why = self._refusal(size, pending)
        if why:
            self._refused_size = max(self._refused_size, size)
            self._refused.warning("%s", why)
            raise SpoolFull(why)
        self._free -= size

    def free_bytes(self) -> int:
        """Free bytes on the filesystem now (statvfs, what an unprivileged user may use)."""
        st = os.statvfs(self.dir)
        return st.f_bavail * st.f_frsize

    def full_reason(self) -> str:
        """Why an append would be refused now ("" when it would not): for readiness. The
        size probed is that of the last refused append, until one of its size would fit."""
        why = self._refusal(max(PROBE_BYTES, self._refused_size), 0)
        if not why:
            self._refused_size = 0
        return why

    def _refusal(self, size: int, pending: int) -> str:
        now = self._clock()
        if now - self._checked_at > FREE_SPACE_TTL_S:
            self._free = self.free_bytes() - pending
            self._others_bytes = sum(other() for other in self._others)
            self._checked_at = now
        if self._used() + self._others_bytes + pending + size > self.max_bytes:
            return f"spool full: spool.max_bytes ({self.max_bytes}) would be exceeded"
        if self._free - size < self.reserve:
            return (
                f"disk full: free space on {self.dir} would fall under spool.min_free_bytes "
                f"({self.reserve})"
            )
        return ""
