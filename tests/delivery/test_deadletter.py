"""The dead-letter file: durable appends, read back, a torn last line skipped, purge with
a backup, replay onto the spool."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from pathlib import Path

import pytest

from agent.config import SpoolConfig
from agent.delivery import deadletter
from agent.delivery.deadletter import DeadLetter, DeadLetterFile
from agent.records import decode_envelope
from agent.spool.spool import Spool


def letter(n: int) -> DeadLetter:
    record = {"customerId": f"c{n}", "recordValue": str(n)}
    return DeadLetter(f"id-{n}", record, False, 400, "x" * 10_000, 2)


async def test_letters_are_appended_and_read_back_with_the_body_bounded(tmp_path: Path):
    path = deadletter.path_in(tmp_path)
    dead = DeadLetterFile(path)
    await dead.append([letter(1), letter(2)])
    await dead.append([letter(3)])
    read = list(deadletter.read(path))
    assert [r["id"] for r in read] == ["id-1", "id-2", "id-3"]
    assert read[0]["record"] == {"customerId": "c1", "recordValue": "1"}
    assert read[0]["status"] == 400 and read[0]["attempts"] == 2
    assert len(read[0]["body"]) == deadletter.MAX_BODY_CHARS  # type: ignore[arg-type]
    assert str(read[0]["time"]).endswith("Z")


async def test_a_torn_last_line_is_skipped_and_purge_empties(tmp_path: Path):
    path = deadletter.path_in(tmp_path)
    await DeadLetterFile(path).append([letter(1)])
    with path.open("ab") as handle:
        handle.write(b'{"id": "cut sh')
    assert [r["id"] for r in deadletter.read(path)] == ["id-1"]
    count, backup = deadletter.purge(path)
    assert count == 1 and backup is not None
    assert list(deadletter.read(path)) == []
    assert [r["id"] for r in deadletter.read(backup)] == ["id-1"]
    assert deadletter.purge(path) == (0, None)  # nothing left: no empty backup


async def test_the_first_letter_makes_its_file_name_durable_before_returning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:  # the real fsync, noting what it was given
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    path = deadletter.path_in(tmp_path)
    await DeadLetterFile(path).append([letter(1)])
    assert synced == [str(path), str(tmp_path)]  # the file, then its directory
    synced.clear()
    await DeadLetterFile(path).append([letter(2)])
    assert synced == [str(path)]  # the name is already durable


def test_a_purge_while_letters_are_appended_counts_every_letter_it_removes(tmp_path: Path):
    path = deadletter.path_in(tmp_path)
    written = 2000
    dead = DeadLetterFile(path)

    def append_all() -> None:
        for n in range(written):
            asyncio.run(dead.append([letter(n)]))

    appender = threading.Thread(target=append_all)
    appender.start()
    purged = 0
    while appender.is_alive():
        purged += deadletter.purge(path)[0]
    appender.join()
    purged += deadletter.purge(path)[0]
    assert purged == written
    backups = tmp_path.glob("deadletter.jsonl.purged-*")
    kept = [r["id"] for b in backups for r in deadletter.read(b)]
    assert sorted(kept) == sorted(f"id-{n}" for n in range(written))  # each once, in a backup


async def test_letter_files_are_private_and_never_followed_through_a_link(tmp_path: Path):
    path = deadletter.path_in(tmp_path)
    await DeadLetterFile(path).append([letter(1)])
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    path.unlink()
    target = tmp_path / "elsewhere"
    target.write_text("not the agent's\n")
    path.symlink_to(target)
    with pytest.raises(OSError, match="link"):
        await DeadLetterFile(path).append([letter(2)])
    assert target.read_text() == "not the agent's\n"


async def test_replay_puts_records_back_byte_identical_and_removes_only_those(tmp_path: Path):
    path = deadletter.path_in(tmp_path)
    invoiced = DeadLetter("id-9", {"customerId": "c9", "metadata": {"a": [1]}}, True, 400, "", 1)
    unreadable = DeadLetter("id-x", {"raw": "00ff"}, False, 0, "unreadable", 0)
    await DeadLetterFile(path).append([letter(1), letter(2), invoiced, unreadable])
    spool = Spool(SpoolConfig(dir=str(tmp_path), min_free_bytes=0))
    spool.open()
    await spool.start()
    seen: list[tuple[int, int]] = []
    try:
        done = await deadletter.replay(
            path, spool, {"id-1", "id-9", "id-x", "id-404"}, lambda *p: seen.append(p), chunk=1
        )
        entries = await spool.read(100)
    finally:
        await spool.close()
    assert (done.records, done.unreadable, done.not_found) == (2, ["id-x"], ["id-404"])
    assert seen == [(1, 2), (2, 2)]
    envelopes = [decode_envelope(e.payload) for e in entries]
    assert [e.record_json for e in envelopes] == [
        b'{"customerId":"c1","recordValue":"1"}',
        b'{"customerId":"c9","metadata":{"a":[1]}}',
    ]
    assert [e.invoice for e in envelopes] == [False, True]
    assert [r["id"] for r in deadletter.read(path)] == ["id-2", "id-x"]
