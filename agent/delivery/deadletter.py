"""The dead-letter file: records the upstream refused for good, kept for a person to see.

`<spool.dir>/deadletter.jsonl`, one JSON object per line, appended and fsynced before the
record is acknowledged in the spool (so a crash between the two re-sends, never loses):

| key        | what                                                         |
|------------|--------------------------------------------------------------|
| `id`       | the agent's record id                                        |
| `record`   | the record, exactly as it was sent                           |
| `invoice`  | whether it was sent with `invoice=true`                      |
| `status`   | the upstream's HTTP status                                   |
| `body`     | the upstream's answer, at most `MAX_BODY_CHARS` characters   |
| `time`     | when it was dead-lettered, RFC 3339 UTC                      |
| `attempts` | how many times it was sent                                   |

Nothing is ever dropped from it by the agent: `usage-agent deadletter list` shows it,
`usage-agent deadletter purge` empties it (after a person has dealt with it).

The running agent and `purge` (another process) meet at an exclusive `flock` on the file:
an append (write and fsync) and a purge (count, then cut to nothing) never interleave, so
every letter a purge removes is counted, and a letter written during a purge is kept. The
file is never unlinked: an appender that opened it keeps writing to the file `list` reads.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import aiofiles.os
import orjson

from agent.fsio import append_lines, fsync_dir, json_lines, open_private

MAX_BODY_CHARS: Final = 4096
FILE_NAME: Final = "deadletter.jsonl"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    record: dict[str, object]
    invoice: bool
    status: int
    body: str
    attempts: int

    def to_json(self) -> bytes:
        line = {
            "id": self.id,
            "record": self.record,
            "invoice": self.invoice,
            "status": self.status,
            "body": self.body[:MAX_BODY_CHARS],
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "attempts": self.attempts,
        }
        return orjson.dumps(line) + b"\n"


def path_in(spool_dir: str | Path) -> Path:
    return Path(spool_dir) / FILE_NAME


class DeadLetterFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()
        self.count = 0

    async def append(self, letters: list[DeadLetter]) -> None:
        """Append durably: returns only once the lines, and the file's name when this made
        the file, are on disk. OSError when they could not be written."""
        data = b"".join(letter.to_json() for letter in letters)
        async with self._lock:
            await aiofiles.os.wrap(_append_locked)(self.path, data)
        self.count += len(letters)


def _append_locked(path: Path, data: bytes) -> None:
    fd = open_private(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        made = os.fstat(fd).st_size == 0
        append_lines(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock
    if made:  # a new name (or one a purge emptied): make sure its directory entry is durable
        fsync_dir(path.parent)


def read(path: Path) -> Iterator[dict[str, object]]:
    """Every dead letter in the file (a torn line, from a crash, is skipped)."""
    for _, letter in json_lines(path):
        if letter is not None:
            yield letter


def purge(path: Path) -> int:
    """Empty the file, under its lock; the number of letters it held."""
    try:
        fd = open_private(path, os.O_RDWR)
    except FileNotFoundError:
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        count = sum(1 for _ in read(path))
        os.ftruncate(fd, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return count
