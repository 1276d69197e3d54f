"""The dead-letter file: durable appends, read back, a torn last line skipped, purge."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from pathlib import Path

import pytest

from agent.delivery import deadletter
from agent.delivery.deadletter import DeadLetter, DeadLetterFile


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
    assert deadletter.purge(path) == 1
    assert list(deadletter.read(path)) == []


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
        purged += deadletter.purge(path)
    appender.join()
    purged += deadletter.purge(path)
    assert purged == written


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
