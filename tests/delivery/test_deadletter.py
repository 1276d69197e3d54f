"""The dead-letter file: durable appends, read back, a torn last line skipped, purge."""

from __future__ import annotations

from pathlib import Path

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
