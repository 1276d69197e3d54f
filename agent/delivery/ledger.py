"""The delivery ledger: what may have reached the upstream, and what did.

Two parts, both under `spool.dir`:

* **Marks** (`ledger/`, a side spool: `agent.spool.side`): before a record is first sent, its
  sequence number is marked. After a crash, a record that is still in the spool *and*
  marked may have reached Paigo: it is checked (see `agent.delivery.sender`) instead of being sent
  blind. A mark is dropped once the usage spool's persisted cursor says its records are
  consumed (behind the cursor, or acknowledged beyond it), so the marks hold about what was
  in flight; start-up reads them all. A mark whose records stay (one that cannot leave) is
  written again at the tail once `REWRITE_AFTER` newer marks came after it, so the marks'
  own spool frees its segments behind it and stays small. A mark is a JSON array of seqs,
  or a JSON object: a rollup's formation (`agent.delivery.rollup.Formation`), its members'
  mark.
* **Deliveries** (`delivered.jsonl`, then `delivered.1.jsonl`): one JSON line per record
  delivered, `{"k": stable key, "c": customerId, "d": dimensionId, "t": timestamp, "v":
  recordValue, "at": unix time}` (a rollup's line adds `"m"`: its members' ids), written
  after the upstream's 2xx without an fsync of its own (a power loss can cut its tail;
  `usage-agent reconcile` then reports those records as unknown, never as missing). When it
  passes half of `upstream.ledger_max_bytes` it becomes `delivered.1.jsonl`, replacing the
  older one: about `ledger_max_bytes` of history is kept (at most `VOLUME_SHARE` of the
  volume), and counted in `spool.max_bytes`. The history gives way to usage: while free
  space is under the ingest reserve (`spool.min_free_bytes`) the older file is deleted, and
  under half the reserve (kept for the writes that free space: marks, the cursor) no line is
  written; such deliveries are counted as not recorded, and `reconcile` reports them as
  unknown, never as missing. `usage-agent reconcile` reads the files, skipping and naming
  torn lines.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiofiles.os
import orjson

from agent.config import MiB, SpoolConfig
from agent.delivery.rollup import Formation
from agent.errors import SpoolError
from agent.fsio import append_lines, json_lines, open_private
from agent.logs import Throttled
from agent.spool.side import side_spool

log = logging.getLogger(__name__)

DELIVERED: Final = "delivered.jsonl"
DELIVERED_OLD: Final = "delivered.1.jsonl"
MARKS_MAX_BYTES: Final = 64 * MiB  # marks hold about what is in flight: far less than this
REWRITE_AFTER: Final = 10_000  # newer marks after which a live mark is written again
VOLUME_SHARE: Final = 0.1  # the deliveries history takes at most this share of the volume


class Ledger:
    def __init__(self, spool_config: SpoolConfig, max_bytes: int, reserve: int = 0) -> None:
        """`reserve`: the usage spool's free-space reserve in force (see agent.spool.space)."""
        self.dir = Path(spool_config.dir)
        self._marks = side_spool(spool_config, "ledger", MARKS_MAX_BYTES)
        self._marked: deque[_Mark] = deque()  # in mark order
        self.maybe_sent: set[int] = set()
        self.formed: dict[int, Formation] = {}  # rollups formed before a restart, by member seq
        self._max_bytes = max_bytes
        self._reserve = reserve
        self._delivered_lock = asyncio.Lock()
        self._pending: list[dict[str, object]] = []
        self._deliveries_bytes = 0
        self.not_recorded = 0  # deliveries not written to the file (disk full, write error)
        self._write_failed = Throttled(log, "could not write the deliveries file")
        self._rewrite_failed = Throttled(log, "could not write old ledger marks again")

    @property
    def bytes_used(self) -> int:
        """The marks' segments and the deliveries files, for `spool.max_bytes`."""
        return self._marks.bytes_used + self._deliveries_bytes

    async def start(self) -> None:
        st = os.statvfs(self.dir)
        self._max_bytes = min(self._max_bytes, int(st.f_blocks * st.f_frsize * VOLUME_SHARE))
        self._deliveries_bytes = sum(
            path.stat().st_size
            for path in (self.dir / DELIVERED, self.dir / DELIVERED_OLD)
            if path.exists()
        )
        self._marks.open()
        await self._marks.start()
        while entries := await self._marks.read(10_000):
            for entry in entries:
                mark = orjson.loads(entry.payload)
                if isinstance(mark, dict):
                    formation = Formation.decode(mark)
                    self.formed.update(dict.fromkeys(formation.seqs, formation))
                    self._marked.append(_Mark(entry.seq, formation.seqs, formation))
                else:
                    self.maybe_sent.update(mark)
                    self._marked.append(_Mark(entry.seq, mark))

    async def stop(self) -> None:
        await self._marks.close()

    async def mark(self, seqs: list[int], formations: Sequence[Formation] = ()) -> None:
        """Durably note, before their first send, the records `seqs` and the rollups
        `formations` (their membership: their members' mark), in one write."""
        marks = [_Mark(0, seqs)] if seqs else []
        marks += [_Mark(0, formation.seqs, formation) for formation in formations]
        await self._write_marks(marks)

    async def forget(self, consumed: Callable[[Sequence[int]], bool]) -> None:
        """Drop the marks whose records are `consumed` (by the usage spool's persisted
        cursor: a restart would not read them again), and write again at the tail the
        oldest marks that are still live (see the module's docstring)."""
        done: list[int] = []
        again: list[_Mark] = []
        newest = self._marked[-1].seq if self._marked else 0
        while self._marked:
            head = self._marked[0]
            if consumed(head.seqs):
                done.append(self._marked.popleft().seq)
            elif newest - head.seq > REWRITE_AFTER:
                again.append(self._marked.popleft())
            else:
                break
        if again:
            old = [mark.seq for mark in again]
            try:
                await self._write_marks(again)  # (new seqs: the old ones go once written)
            except SpoolError as exc:  # kept where they were: tried again next time
                self._marked.extendleft(reversed(again))
                self._rewrite_failed.error("%s", exc)
            else:
                done += old
        if done:
            self._marks.ack(done)
            self.maybe_sent = {seq for seq in self.maybe_sent if not consumed((seq,))}

    async def _write_marks(self, marks: list[_Mark]) -> None:
        """Write `marks` (durably: the side spool fsyncs) and remember them, with their new
        mark seqs."""
        seqs = await self._marks.append([mark.encode() for mark in marks])
        for seq, mark in zip(seqs, marks, strict=True):
            mark.seq = seq
        self._marked.extend(marks)

    def note(self, delivered: list[tuple[str, dict[str, object], list[str] | None]]) -> None:
        """Records (stable id, fields, a rollup's member ids) delivered upstream, for the
        next `flush`."""
        at = time.time()
        for rid, fields, members in delivered:
            line: dict[str, object] = {
                "k": rid,
                "c": fields["customerId"],
                "d": fields["dimensionId"],
                "t": fields["timestamp"],
                "v": fields["recordValue"],
                "at": at,
            }
            if members is not None:
                line["m"] = members
            self._pending.append(line)

    async def flush(self) -> None:
        """Append what `note` collected to the deliveries file (an audit trail: a write
        error is logged and delivery goes on)."""
        lines, self._pending = self._pending, []
        if not lines:
            return
        try:
            st = os.statvfs(self.dir)
            free = st.f_bavail * st.f_frsize
            if free < self._reserve:
                self._give_way()
            if free < self._reserve // 2:
                raise OSError(28, "free space is under half of spool.min_free_bytes")
            await self._append(lines)
        except OSError as exc:
            self.not_recorded += len(lines)
            self._write_failed.error("%s (%d deliveries not recorded)", exc, len(lines))

    async def _append(self, lines: list[dict[str, object]]) -> None:
        data = encode_deliveries(lines)
        path = self.dir / DELIVERED
        async with self._delivered_lock:
            # one call in a thread opens, writes and closes: a cancelled flush (at stop)
            # cannot leave the file open
            size = await aiofiles.os.wrap(_append_lines)(path, data)
            self._deliveries_bytes += len(data)
            if size > self._max_bytes // 2:
                old = self.dir / DELIVERED_OLD
                self._deliveries_bytes -= old.stat().st_size if old.exists() else 0
                os.replace(path, old)

    def _give_way(self) -> None:
        """Delete the older deliveries file: usage comes before its history."""
        old = self.dir / DELIVERED_OLD
        if old.exists():
            self._deliveries_bytes -= old.stat().st_size
            old.unlink()
            log.warning("the disk is full: deleted %s to make room for usage", old)


def encode_deliveries(lines: list[dict[str, object]]) -> bytes:
    """`lines` (deliveries, each starting with "k") as JSON lines, encoded in one call (one
    call a line cost 2.5 µs a record delivered, in the event loop; this, 0.4). Between two
    lines the array's `},{"k":` becomes `}\n{"k":`: inside a JSON string a quote is always
    escaped, so that matches only where a line ends and the next begins, unless a value is
    an object keyed "k" (never, in a validated record). Then the newlines do not count out
    and the lines are encoded one by one."""
    data = orjson.dumps(lines)[1:-1].replace(b'},{"k":', b'}\n{"k":') + b"\n"
    if data.count(b"\n") != len(lines):
        newline = orjson.OPT_APPEND_NEWLINE
        data = b"".join([orjson.dumps(line, option=newline) for line in lines])
    return data


def _append_lines(path: Path, data: bytes) -> int:
    """Append `data` to `path` (no fsync: see the module's docstring); the file's size."""
    fd = open_private(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        append_lines(fd, data)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


@dataclass(slots=True)
class _Mark:
    """A mark in the side spool at `seq`: the records it holds, or a rollup's formation."""

    seq: int
    seqs: list[int]
    formation: Formation | None = None

    def encode(self) -> bytes:
        return self.formation.encode() if self.formation is not None else orjson.dumps(self.seqs)


@dataclass
class Deliveries:
    """What the deliveries files hold; `torn` names the lines that could not be read."""

    lines: list[dict[str, object]]
    torn: list[str]


def read_deliveries(spool_dir: str | Path) -> Deliveries:
    """Every delivery the files hold, oldest first. A line cut by a crash or a full disk
    is skipped and named (file:line) in `torn`."""
    found = Deliveries([], [])
    for name in (DELIVERED_OLD, DELIVERED):
        path = Path(spool_dir) / name
        for number, entry in json_lines(path):
            if entry is None:
                found.torn.append(f"{path}:{number}")
            else:
                found.lines.append(entry)
    return found
