"""Work on a spool directory from the shell: `usage-agent spool inspect` and
`usage-agent deadletter list|show|replay|purge` (also `dlq`).

Exit codes: 0 done; 1 asked for something that is not there (a letter id); 2 cannot be
done (no such directory, the agent holds the spool, a purge off a terminal without
`--yes`).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Final, TextIO

from agent.config import Config
from agent.delivery import deadletter
from agent.errors import SpoolError, SpoolLocked
from agent.spool.inspect import inspect, report_lines
from agent.spool.spool import Spool

OK: Final = 0
NOT_FOUND: Final = 1
CANNOT: Final = 2


def _spool_dir(config: Config) -> Path | None:
    directory = Path(config.spool.dir)
    if not directory.is_dir():
        print(f"usage-agent: spool directory {directory} does not exist", file=sys.stderr)
        return None
    return directory


def spool_inspect(directory: Path, as_json: bool, out: TextIO = sys.stdout) -> int:
    try:
        report = inspect(directory)
    except (SpoolError, OSError) as exc:
        print(f"usage-agent: {exc}", file=sys.stderr)
        return CANNOT
    text = json.dumps(report.as_dict(), indent=2) if as_json else "\n".join(report_lines(report))
    print(text, file=out)
    return OK


def letters_list(config: Config, out: TextIO = sys.stdout) -> int:
    if (directory := _spool_dir(config)) is None:
        return CANNOT
    for letter in deadletter.read(deadletter.path_in(directory)):
        print(json.dumps(letter), file=out)
    return OK


def letters_show(config: Config, letter_id: str, out: TextIO = sys.stdout) -> int:
    if (directory := _spool_dir(config)) is None:
        return CANNOT
    letter = deadletter.find(deadletter.path_in(directory), letter_id)
    if letter is None:
        print(f"usage-agent: no dead letter {letter_id}", file=sys.stderr)
        return NOT_FOUND
    print(json.dumps(letter, indent=2), file=out)
    return OK


def letters_purge(config: Config, yes: bool, out: TextIO = sys.stdout) -> int:
    """Empty the dead-letter file: asks on a terminal, refuses off one without `yes`."""
    if (directory := _spool_dir(config)) is None:
        return CANNOT
    path = deadletter.path_in(directory)
    count = sum(1 for _ in deadletter.read(path))
    if not yes:
        if not sys.stdin.isatty():
            print("usage-agent: purge removes every dead letter; add --yes", file=sys.stderr)
            return CANNOT
        answer = input(f"Remove the {count} dead letters in {path}? A backup is kept. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed", file=out)
            return OK
    purged, backup = deadletter.purge(path)
    kept = f"; backup {backup}" if backup else ""
    print(f"purged {purged} dead letters from {path}{kept}", file=out)
    return OK


def letters_replay(config: Config, ids: list[str], out: TextIO = sys.stdout) -> int:
    """Put dead letters (`ids`; empty: all) back on the spool. The agent must be stopped."""
    if (directory := _spool_dir(config)) is None:
        return CANNOT
    spool = Spool(config.spool)
    try:
        spool.open()
    except SpoolLocked:
        print(
            "usage-agent: the agent is running (it holds the spool): stop it, replay, "
            "start it again; the records are sent once it is up",
            file=sys.stderr,
        )
        return CANNOT
    except SpoolError as exc:
        print(f"usage-agent: {exc}", file=sys.stderr)
        return CANNOT
    progress = _bar if sys.stderr.isatty() else _quiet
    path = deadletter.path_in(directory)

    async def run() -> deadletter.Replayed:
        await spool.start()
        try:
            return await deadletter.replay(path, spool, set(ids) or None, progress)
        finally:
            await spool.close()

    done = asyncio.run(run())
    print(f"replayed {done.records} dead letters onto {directory}", file=out)
    for letter_id in done.unreadable:
        print(f"  kept {letter_id}: not a readable record", file=out)
    for letter_id in done.not_found:
        print(f"  no dead letter {letter_id}", file=sys.stderr)
    return NOT_FOUND if done.not_found else OK


def _bar(done: int, total: int) -> None:
    width = 40
    filled = width * done // max(total, 1)
    end = "\n" if done >= total else ""
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}{end}")
    sys.stderr.flush()


def _quiet(done: int, total: int) -> None:
    pass
