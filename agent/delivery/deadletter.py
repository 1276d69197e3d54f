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
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import aiofiles
import aiofiles.os
import orjson

from agent.fsio import complete_lines

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
        """Append durably (write, fsync); returns only once the lines are on disk."""
        data = b"".join(letter.to_json() for letter in letters)
        async with self._lock, aiofiles.open(self.path, "ab") as handle:
            await handle.write(data)
            await handle.flush()
            await aiofiles.os.wrap(os.fsync)(handle.fileno())
        self.count += len(letters)


def read(path: Path) -> Iterator[dict[str, object]]:
    """Every dead letter in the file (a torn last line, from a crash, is skipped)."""
    for line in complete_lines(path):
        yield orjson.loads(line)


def purge(path: Path) -> int:
    """Empty the file; the number of letters it held."""
    count = sum(1 for _ in read(path))
    path.unlink(missing_ok=True)
    return count
