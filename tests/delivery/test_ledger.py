"""The delivery ledger: marks survive a restart until the cursor passes; deliveries file."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import SpoolConfig
from agent.delivery.ledger import (
    DELIVERED,
    DELIVERED_OLD,
    REWRITE_AFTER,
    Ledger,
    read_deliveries,
)
from agent.delivery.rollup import Formation
from agent.spool.format import segment_first_seq
from agent.spool.side import SIDE_SEGMENT_BYTES
from tests.conftest import mount_tmpfs
from tests.integration.test_disk_full import fill_up


def fields(n: int) -> dict[str, object]:
    return {
        "customerId": "c",
        "dimensionId": "d",
        "timestamp": "2026-01-01T00:00:00Z",
        "recordValue": str(n),
    }


async def test_marks_survive_a_restart_and_are_forgotten_behind_the_cursor(tmp_path: Path):
    config = SpoolConfig(dir=str(tmp_path), min_free_bytes=0)
    ledger = Ledger(config, 1 << 20)
    await ledger.start()
    await ledger.mark([1, 2, 3])
    rollup = Formation("spool-5-rollup", b'{"recordValue":"3"}', [5, 6], {6: "app-key:0"})
    await ledger.mark([4], [rollup])  # a rollup's formation is its members' mark
    await ledger.stop()

    again = Ledger(config, 1 << 20)
    await again.start()
    assert again.maybe_sent == {1, 2, 3, 4}
    assert again.formed == {5: rollup, 6: rollup}
    await again.forget(lambda seqs: max(seqs) < 4)  # 1..3 are behind the persisted cursor
    assert again.maybe_sent == {4}
    await again.stop()


async def test_a_mark_that_stays_is_written_again_so_the_marks_spool_stays_small(
    tmp_path: Path,
):
    """One record that cannot leave, and 60,000 sends after it: without writing its mark
    again at the tail, every marks segment after it would be kept (about 26 bytes a send,
    64 MiB at 2.5 million sends, and then nothing could be marked, nor sent)."""
    config = SpoolConfig(dir=str(tmp_path), min_free_bytes=0)
    ledger = Ledger(config, 1 << 20)
    await ledger.start()
    await ledger.mark([1])
    for first in range(2, 60_002, 100):
        for seq in range(first, first + 100):
            await ledger.mark([seq])
        await ledger.forget(lambda seqs: 1 not in seqs)
        await asyncio.sleep(0)  # the marks' cursor timer
    await asyncio.sleep(0.1)
    assert ledger.bytes_used < 2 * SIDE_SEGMENT_BYTES
    await ledger.stop()
    again = Ledger(config, 1 << 20)
    await again.start()
    assert 1 in again.maybe_sent  # the one still possibly sent, kept through each rewrite
    assert len(again.maybe_sent) <= REWRITE_AFTER + 100  # consumed ones behind it, harmless
    await again.stop()


async def test_deliveries_are_appended_rotated_and_read_back_in_order(tmp_path: Path):
    ledger = Ledger(SpoolConfig(dir=str(tmp_path), min_free_bytes=0), 4000)
    await ledger.start()
    for n in range(40):
        ledger.note([(f"id-{n}", fields(n), None)])
        await ledger.flush()
    await ledger.stop()
    assert (tmp_path / DELIVERED_OLD).exists()  # rotated past half of 4000 bytes
    read = read_deliveries(tmp_path).lines
    keys = [line["k"] for line in read]
    assert keys == sorted(keys, key=lambda k: int(str(k)[3:]))  # oldest first
    assert keys[-1] == "id-39"
    assert read[-1]["v"] == "39" and read[-1]["c"] == "c"

    files = [tmp_path / DELIVERED, tmp_path / DELIVERED_OLD]
    files += [p for p in (tmp_path / "ledger").iterdir() if segment_first_seq(p) is not None]
    assert ledger.bytes_used == sum(path.stat().st_size for path in files)


@pytest.mark.parametrize(
    "value",
    [
        'x"},{"k":"forged","c":"y',  # a line's boundary, inside a string
        "line\nbreak\\",  # a newline and a backslash
        {"k": 1},  # an object keyed "k": encoded line by line
        [{"k": 1}, {"k": 2}],  # two of them, back to back
    ],
)
async def test_each_delivery_is_one_line_whatever_its_values_hold(tmp_path: Path, value: object):
    """Deliveries are encoded in one call for a flush, then cut into lines: no value can
    add or merge a line."""
    ledger = Ledger(SpoolConfig(dir=str(tmp_path), min_free_bytes=0), 1 << 20)
    await ledger.start()
    delivered = [(f"id-{n}", {**fields(n), "recordValue": value}, None) for n in range(3)]
    delivered.append(("id-3", fields(3), ["member-1", "member-2"]))
    ledger.note(delivered)
    await ledger.flush()
    await ledger.stop()
    read = read_deliveries(tmp_path)
    assert read.torn == []
    assert [(line["k"], line["v"]) for line in read.lines] == [
        ("id-0", value),
        ("id-1", value),
        ("id-2", value),
        ("id-3", "3"),
    ]
    assert read.lines[-1]["m"] == ["member-1", "member-2"]


async def test_a_torn_line_is_skipped_and_named_by_file_and_line(tmp_path: Path):
    ledger = Ledger(SpoolConfig(dir=str(tmp_path), min_free_bytes=0), 1 << 20)
    await ledger.start()
    ledger.note([("id-1", fields(1), None)])
    await ledger.flush()
    with (tmp_path / DELIVERED).open("ab") as handle:
        handle.write(b'{"k": "id-2", "c": "cut by ENOSP\n')  # a write cut mid-line
    ledger.note([("id-3", fields(3), None)])
    await ledger.flush()
    await ledger.stop()
    read = read_deliveries(tmp_path)
    assert [line["k"] for line in read.lines] == ["id-1", "id-3"]
    assert read.torn == [f"{tmp_path / DELIVERED}:2"]


async def test_deliveries_are_not_written_into_the_reserve_kept_for_draining(tmp_path: Path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    config = SpoolConfig(dir=str(tmp_path), min_free_bytes=0)
    ledger = Ledger(config, 1 << 20, reserve=4 * free)  # half the reserve: twice what is free
    await ledger.start()
    ledger.note([("id-1", fields(1), None)])
    await ledger.flush()
    await ledger.stop()
    assert not (tmp_path / DELIVERED).exists()
    assert ledger.not_recorded == 1


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    yield from mount_tmpfs(tmp_path / "volume", "4m")


async def test_a_live_mark_that_cannot_be_written_again_is_kept_where_it_was(
    volume: Path, caplog: pytest.LogCaptureFixture
):
    config = SpoolConfig(dir=str(volume), min_free_bytes=0)
    ledger = Ledger(config, 1 << 20)
    await ledger.start()
    for seq in range(1, REWRITE_AFTER + 3):
        await ledger.mark([seq])
    ballast = fill_up(volume)  # the disk is full when mark 1 is due to be written again
    await asyncio.sleep(0.15)  # (free space is read again at most every 0.1 s)
    await ledger.forget(lambda seqs: 1 not in seqs)
    assert "could not write old ledger marks again" in caplog.text
    ballast.unlink()
    await ledger.stop()  # the others' acknowledgements are saved
    again = Ledger(config, 1 << 20)
    await again.start()
    assert again.maybe_sent == {1}  # mark 1 was not let go: its record may have been sent
    await again.stop()
