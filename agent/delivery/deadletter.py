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

Nothing is ever dropped from it by the agent: `usage-agent deadletter list` and `show ID`
show it; `replay` puts letters back on the spool once their cause is fixed; `purge` empties
it after a person has dealt with it, keeping what it removed in a backup beside it,
`deadletter.jsonl.purged-<UTC time>`.

`replay` runs while the agent is stopped (it takes the spool's lock, so it cannot race the
agent's own appends) and removes a letter only once its record is durably back on the
spool: a crash in between can leave a record both replayed and still a letter (a second
replay would send it twice), never in neither place.

The running agent and `purge` (another process) meet at an exclusive `flock` on the file:
an append (write and fsync) and a purge (count, then cut to nothing) never interleave, so
every letter a purge removes is counted, and a letter written during a purge is kept. The
file is never unlinked: an appender that opened it keeps writing to the file `list` reads.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import aiofiles.os
import orjson

from agent.fsio import append_lines, fsync_dir, json_lines, open_private, write_atomically
from agent.records import Envelope, encode_envelope
from agent.spool.spool import Spool

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


def find(path: Path, letter_id: str) -> dict[str, object] | None:
    """The dead letter whose id is `letter_id` (the last, should there be more)."""
    found = None
    for letter in read(path):
        if letter.get("id") == letter_id:
            found = letter
    return found


def purge(path: Path) -> tuple[int, Path | None]:
    """Empty the file, under its lock, after a durable copy of it: (the number of letters
    it held, the backup's path; None when there was nothing to keep)."""
    try:
        fd = open_private(path, os.O_RDWR)
    except FileNotFoundError:
        return 0, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = path.read_bytes()
        count = sum(1 for _ in read(path))
        backup = None
        if data:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            backup = path.with_name(f"{path.name}.purged-{stamp}")
            write_atomically(backup, data)
        os.ftruncate(fd, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return count, backup


@dataclass
class Replayed:
    records: int = 0
    unreadable: list[str] = field(default_factory=list)  # kept: not a record (hex as is)
    not_found: list[str] = field(default_factory=list)  # asked for, not in the file


async def replay(
    path: Path,
    spool: Spool,
    ids: set[str] | None,
    progress: Callable[[int, int], None] = lambda done, total: None,
    chunk: int = 1000,
) -> Replayed:
    """Put the letters whose ids are in `ids` (None: all) back on the open `spool`, their
    records byte-identical and with their invoice flag, and remove each from the file once
    its chunk is durable there. The caller holds the spool (and so the agent is stopped)."""
    letters = list(read(path))
    wanted = [letter for letter in letters if ids is None or letter.get("id") in ids]
    present = {str(letter.get("id")) for letter in letters}
    done = Replayed(not_found=sorted((ids or set()) - present))
    readable = []
    for letter in wanted:
        record = letter.get("record")
        if isinstance(record, dict) and "raw" not in record:
            readable.append(letter)
        else:
            done.unreadable.append(str(letter.get("id")))
    removed: set[int] = set()
    for start in range(0, len(readable), chunk):
        part = readable[start : start + chunk]
        now_ms = time.time_ns() // 1_000_000
        payloads = [
            encode_envelope(
                Envelope(orjson.dumps(letter["record"]), now_ms, letter.get("invoice") is True)
            )
            for letter in part
        ]
        await spool.append(payloads)  # returns once durable
        removed.update(id(letter) for letter in part)
        _rewrite(path, [letter for letter in letters if id(letter) not in removed])
        done.records += len(part)
        progress(done.records, len(readable))
    return done


def _rewrite(path: Path, letters: list[dict[str, object]]) -> None:
    """Replace the file by `letters` (under its lock; the agent is stopped)."""
    fd = open_private(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        write_atomically(path, b"".join(orjson.dumps(letter) + b"\n" for letter in letters))
    finally:
        os.close(fd)
