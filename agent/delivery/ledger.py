"""The delivery ledger: what may have reached the upstream, and what did.

Two parts, both under `spool.dir`:

* **Marks** (`ledger/`, a spool of its own, fsynced): before a record is first sent, its
  sequence number is marked. After a crash, a record that is still in the spool *and*
  marked may have reached Paigo: it is checked (see `agent.delivery.sender`) instead of being sent
  blind. Marks behind the spool's persisted cursor are dropped, so the marks hold about what
  was in flight; start-up reads them all.
* **Deliveries** (`delivered.jsonl`, then `delivered.1.jsonl`): one JSON line per record
  delivered, `{"k": stable key, "c": customerId, "d": dimensionId, "t": timestamp,
  "v": recordValue, "at": unix time}`, written after the upstream's 2xx without an fsync
  of its own (a power loss can cut its tail; `usage-agent reconcile` then reports those
  records as unknown, never as missing). When it passes half of `upstream.ledger_max_bytes`
  it becomes `delivered.1.jsonl`, replacing the older one: about `ledger_max_bytes` of
  history is kept. `usage-agent reconcile` reads it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Final

import aiofiles
import orjson

from agent.config import SpoolConfig
from agent.fsio import complete_lines
from agent.spool import Spool

log = logging.getLogger(__name__)

DELIVERED: Final = "delivered.jsonl"
DELIVERED_OLD: Final = "delivered.1.jsonl"


class Ledger:
    def __init__(self, spool_config: SpoolConfig, max_bytes: int) -> None:
        self.dir = Path(spool_config.dir)
        marks_config = replace(
            spool_config, dir=str(self.dir / "ledger"), fsync="always", min_free_bytes=0
        )
        self._marks = Spool(marks_config)
        self._marked: list[tuple[int, int]] = []  # (mark seq, highest record seq), in order
        self.maybe_sent: set[int] = set()
        self._max_bytes = max_bytes
        self._delivered_lock = asyncio.Lock()
        self._pending: list[dict[str, object]] = []

    async def start(self) -> None:
        self._marks.open()
        await self._marks.start()
        while entries := await self._marks.read(10_000):
            for entry in entries:
                seqs: list[int] = orjson.loads(entry.payload)
                self.maybe_sent.update(seqs)
                self._marked.append((entry.seq, max(seqs)))

    async def stop(self) -> None:
        await self._marks.close()

    async def mark(self, seqs: list[int]) -> None:
        """Durably note that these records are about to be sent."""
        [mark] = await self._marks.append([orjson.dumps(seqs)])
        self._marked.append((mark, max(seqs)))

    def forget_through(self, cursor: int) -> None:
        """Drop the marks of records below `cursor` (the spool's persisted cursor)."""
        done = []
        while self._marked and self._marked[0][1] < cursor:
            done.append(self._marked.pop(0)[0])
        if done:
            self._marks.ack(done)
            self.maybe_sent = {seq for seq in self.maybe_sent if seq >= cursor}

    def note(self, delivered: list[tuple[str, dict[str, object]]]) -> None:
        """Records (stable id, fields) delivered upstream, for the next `flush`."""
        at = time.time()
        self._pending.extend(
            {
                "k": rid,
                "c": fields["customerId"],
                "d": fields["dimensionId"],
                "t": fields["timestamp"],
                "v": fields["recordValue"],
                "at": at,
            }
            for rid, fields in delivered
        )

    async def flush(self) -> None:
        """Append what `note` collected to the deliveries file (an audit trail: a write
        error is logged and delivery goes on)."""
        lines, self._pending = self._pending, []
        if not lines:
            return
        try:
            await self._append(lines)
        except OSError as exc:
            log.error("could not write the deliveries file: %s", exc)

    async def _append(self, lines: list[dict[str, object]]) -> None:
        data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        path = self.dir / DELIVERED
        async with self._delivered_lock:
            async with aiofiles.open(path, "ab") as handle:
                await handle.write(data)
                size = await handle.tell()
            if size > self._max_bytes // 2:
                os.replace(path, self.dir / DELIVERED_OLD)


def read_deliveries(spool_dir: str | Path) -> Iterator[dict[str, object]]:
    """Every delivery the files hold, oldest first (a torn last line is skipped)."""
    for name in (DELIVERED_OLD, DELIVERED):
        for line in complete_lines(Path(spool_dir) / name):
            yield orjson.loads(line)
