"""The spool's behaviour: group commit, ordered reads, out-of-order acks, limits, owners."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from agent.config import SpoolConfig
from agent.errors import SpoolError, SpoolFull, SpoolLocked
from agent.spool import Spool
from agent.spool import format as fmt
from tests.conftest import SpoolFactory


async def wait_for_cursor(spool: Spool, path: Path, seq: int) -> None:
    for _ in range(200):
        if fmt.decode_cursor(path.read_bytes()).next_seq == seq:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"cursor never reached {seq}")


async def test_concurrent_appends_share_one_write_and_fsync(open_spool: SpoolFactory):
    spool = await open_spool()
    seqs = await asyncio.gather(*(spool.append([b"r%d" % i]) for i in range(200)))
    assert sorted(s.start for s in seqs) == list(range(1, 201))
    assert spool.stats.fsyncs <= 3  # group commit: far fewer fsyncs than appends
    assert spool.stats.appended_records == 200


async def test_an_append_completes_only_after_the_fsync_that_covers_it(open_spool: SpoolFactory):
    spool = await open_spool()
    before = spool.stats.fsyncs
    await spool.append([b"one"])
    assert spool.stats.fsyncs == before + 1


async def test_a_batch_gets_consecutive_seqs_and_is_read_back_in_order(open_spool: SpoolFactory):
    spool = await open_spool()
    assert await spool.append([b"a", b"b", b"c"]) == range(1, 4)
    assert await spool.append([b"d"]) == range(4, 5)
    entries = await spool.read(10)
    assert [(e.seq, e.payload) for e in entries] == [(1, b"a"), (2, b"b"), (3, b"c"), (4, b"d")]
    assert await spool.read(10) == []  # each entry is handed out once


async def test_read_respects_the_record_and_byte_bounds(open_spool: SpoolFactory):
    spool = await open_spool()
    await spool.append([b"x" * 100] * 10)
    assert len(await spool.read(3)) == 3
    assert len(await spool.read(100, max_bytes=250)) == 3


async def test_the_cursor_moves_only_over_a_contiguous_acknowledged_prefix(
    open_spool: SpoolFactory,
):
    spool = await open_spool()
    await spool.append([b"%d" % i for i in range(1, 6)])
    await spool.read(10)
    spool.ack([2, 3, 5])
    assert spool.cursor == 1
    assert spool.backlog == 2
    spool.ack([1])
    assert spool.cursor == 4
    spool.ack([4])
    assert spool.cursor == 6
    assert spool.backlog == 0


async def test_only_unacknowledged_entries_are_handed_out_again_after_a_reopen(
    open_spool: SpoolFactory, spool_config: SpoolConfig
):
    spool = await open_spool()
    await spool.append([b"%d" % i for i in range(1, 11)])
    await spool.read(10)
    spool.ack([1, 2, 3, 4, 6, 8, 9])  # 6, 8 and 9 beyond the cursor (5)
    await spool.close()
    again = await open_spool()
    assert again.cursor == 5 and again.backlog == 3
    assert [e.seq for e in await again.read(100)] == [5, 7, 10]
    again.ack([5, 7])
    assert again.cursor == 10  # over the acknowledgements from before the reopen
    assert await again.append([b"new"]) == range(11, 12)


async def test_consumed_durably_means_a_restart_would_hand_none_of_them_out_again(
    open_spool: SpoolFactory,
):
    spool = await open_spool()
    await spool.append([b"r"] * 10)
    await spool.read(10)
    spool.ack([1, 2, 3, 5, 6, 9])
    assert not spool.consumed_durably([1])  # acknowledged, but the cursor is not saved yet
    await spool.close()  # (saves it)
    assert spool.consumed_durably([1, 2, 3]) and spool.consumed_durably([6, 5, 9])
    assert not spool.consumed_durably([3, 4]) and not spool.consumed_durably([9, 10])
    assert spool.consumed_durably([])


async def test_entries_given_back_are_handed_out_again_after_a_rewind_and_nothing_else_is(
    open_spool: SpoolFactory,
):
    spool = await open_spool()
    await spool.append([b"%d" % i for i in range(1, 21)])
    assert [e.seq for e in await spool.read(12)] == list(range(1, 13))
    spool.ack([1, 2, 5, 6])
    spool.release([4, 9, 10])  # given back; 3, 7, 8, 11 and 12 are still handed out
    spool.rewind()
    again = await spool.read(100)
    assert [(e.seq, e.payload) for e in again] == [
        (4, b"4"),
        (9, b"9"),
        (10, b"10"),
        *((seq, b"%d" % seq) for seq in range(13, 21)),
    ]
    assert await spool.read(100) == []
    spool.rewind()  # nothing given back since: reading stays where it is
    assert await spool.read(100) == []
    spool.ack(range(3, 21))
    assert spool.cursor == 21 and spool.backlog == 0


async def test_entries_given_back_and_not_acknowledged_are_handed_out_after_a_reopen(
    open_spool: SpoolFactory,
):
    spool = await open_spool()
    await spool.append([b"%d" % i for i in range(1, 11)])
    await spool.read(10)
    spool.release([3, 4])
    spool.ack([1, 2, 5, 6, 7, 8, 9, 10])
    await spool.close()
    again = await open_spool()
    assert [e.seq for e in await again.read(100)] == [3, 4]


async def test_acknowledgements_beyond_the_cursor_cost_a_bit_a_record_and_a_range_per_gap(
    open_spool: SpoolFactory,
):
    spool = await open_spool()
    await spool.append([b"r"] * 20_000)
    entries = await spool.read(20_000)
    spool.ack(e.seq for e in entries[1:])  # the first one stays: the cursor cannot move
    assert spool.cursor == 1 and spool.backlog == 1
    consumer = spool._consumer
    assert consumer.acked.ranges(10) == [(2, 20_001)]
    assert len(consumer.acked._bits) <= 20_001 // 8 + 1  # in memory: a bit a record
    assert list(consumer.positions) == [1]  # where the one left is, for the cursor hint
    await spool.close()
    cursor = fmt.decode_cursor(fmt.cursor_path(spool.dir).read_bytes())
    assert cursor.next_seq == 1 and cursor.acked == ((2, 20_001),)


async def test_a_seq_acknowledged_in_the_cursor_file_is_never_given_to_a_new_record(
    open_spool: SpoolFactory,
):
    """With fsync off a power cut can lose the tail the cursor file already counts as
    consumed: new records start after it, never inside an acknowledged range."""
    spool = await open_spool()
    await spool.append([b"a", b"b", b"c"])
    await spool.close()
    path = fmt.cursor_path(spool.dir)
    cursor = fmt.decode_cursor(path.read_bytes())
    path.write_bytes(fmt.encode_cursor(replace(cursor, acked=((4, 8),))))  # 4-7: a lost tail
    again = await open_spool()
    assert await again.append([b"new"]) == range(8, 9)
    assert [e.payload for e in await again.read(10)] == [b"a", b"b", b"c", b"new"]


async def test_a_malformed_acked_list_hands_records_out_again_never_skips_them(
    open_spool: SpoolFactory,
):
    spool = await open_spool()
    await spool.append([b"a", b"b", b"c"])
    spool.ack(e.seq for e in await spool.read(3) if e.seq != 1)
    await spool.close()
    path = fmt.cursor_path(spool.dir)
    body = orjson.loads(path.read_bytes())
    assert body["acked"] == [[2, 4]]
    body["acked"] = [[1, 4]]  # would skip the record at the cursor itself
    path.write_bytes(orjson.dumps(body))
    again = await open_spool()
    assert [e.seq for e in await again.read(10)] == [1, 2, 3]


async def test_the_cursor_is_persisted_atomically_and_consumed_segments_are_deleted(
    open_spool: SpoolFactory,
):
    spool = await open_spool(segment_bytes=100)
    for _ in range(6):
        await spool.append([b"x" * 150])
    assert len(list(spool.dir.glob("*.seg"))) == 6
    spool.ack(e.seq for e in await spool.read(4))
    await wait_for_cursor(spool, fmt.cursor_path(spool.dir), 5)
    await asyncio.sleep(0.05)
    assert sorted(p.name for p in spool.dir.glob("*.seg")) == [
        fmt.segment_path(spool.dir, seq).name for seq in (5, 6)
    ]
    assert not list(spool.dir.glob("*.tmp"))


async def test_a_missing_segment_means_consumed_and_never_a_crash_loop(
    open_spool: SpoolFactory,
):
    spool = await open_spool(segment_bytes=100)
    for _ in range(4):
        await spool.append([b"x" * 150])
    await spool.close()
    fmt.segment_path(spool.dir, 1).unlink()  # as if deleted before the cursor was saved
    again = await open_spool(segment_bytes=100)
    assert [e.seq for e in await again.read(10)] == [2, 3, 4]


async def test_a_wrong_cursor_hint_costs_a_scan_not_a_quarantine(open_spool: SpoolFactory):
    spool = await open_spool()
    await spool.append([b"a", b"b", b"c"])
    spool.ack(e.seq for e in await spool.read(1))
    await spool.close()
    path = fmt.cursor_path(spool.dir)
    cursor = fmt.decode_cursor(path.read_bytes())
    path.write_bytes(fmt.encode_cursor(replace(cursor, offset=(cursor.offset or 0) + 3)))
    again = await open_spool()
    assert [e.payload for e in await again.read(10)] == [b"b", b"c"]
    assert again.stats.damage_events == 0


async def test_interval_mode_acknowledges_before_the_sync_and_syncs_on_a_timer(
    open_spool: SpoolFactory,
):
    spool = await open_spool(fsync="interval", fsync_interval_ms=20)
    await spool.append([b"a"])
    assert spool.stats.fsyncs == 0
    await asyncio.sleep(0.1)
    assert spool.stats.fsyncs == 1


async def test_off_mode_never_syncs_data(open_spool: SpoolFactory):
    spool = await open_spool(fsync="off")
    await spool.append([b"a"] * 10)
    assert spool.stats.fsyncs == 0


# --- zero-filled segments -----------------------------------------------------------------


async def fill_until(spool: Spool, done: object, limit: int = 1000) -> list[int]:
    seqs: list[int] = []
    for _ in range(limit):
        if callable(done) and done():
            return seqs
        seqs.extend(await spool.append([b"r" * 500]))
        await asyncio.sleep(0)
    raise AssertionError("the condition never came")


async def test_a_half_full_segment_gets_a_zero_filled_spare_that_the_next_segment_is(
    open_spool: SpoolFactory,
):
    spool = await open_spool(segment_bytes=64 * 1024)
    spare = fmt.spare_path(spool.dir)
    seqs = await fill_until(spool, spare.exists)
    assert spool.bytes_used > 32 * 1024
    assert spare.read_bytes() == bytes(64 * 1024)
    seqs += await fill_until(spool, lambda: not spare.exists())  # rolled onto the spare
    first, second = sorted(spool.dir.glob("*.seg"))
    assert second.stat().st_size == 64 * 1024  # the frames go into the zeros
    in_first = fmt.segment_first_seq(second) - seqs[0]
    frames_end = fmt.SEGMENT_HEADER_SIZE + in_first * (fmt.FRAME_HEADER_SIZE + 500)
    assert first.stat().st_size == frames_end  # sealed: cut to its last frame, no zeros
    await spool.close()

    again = await open_spool(segment_bytes=64 * 1024)
    assert again.stats.torn_tail_bytes == again.stats.damage_events == 0
    entries = []
    while batch := await again.read(1000):
        entries.extend(batch)
    assert [e.seq for e in entries] == seqs
    assert (await again.append([b"next"])).start == seqs[-1] + 1


async def test_without_preallocate_segments_grow_as_they_are_written(open_spool: SpoolFactory):
    spool = await open_spool(segment_bytes=64 * 1024, preallocate=False)
    await fill_until(spool, lambda: len(list(spool.dir.glob("*.seg"))) == 2)
    await asyncio.sleep(0.1)
    assert not fmt.spare_path(spool.dir).exists()
    assert sum(p.stat().st_size for p in spool.dir.glob("*.seg")) == spool.bytes_used


async def test_max_bytes_refuses_the_whole_append_and_stores_nothing(open_spool: SpoolFactory):
    spool = await open_spool(max_bytes=1000, segment_bytes=1000)
    await spool.append([b"x" * 400])
    with pytest.raises(SpoolFull, match="max_bytes"):
        await spool.append([b"y" * 100] * 5)
    await spool.append([b"z" * 100])
    assert [e.payload[:1] for e in await spool.read(10)] == [b"x", b"z"]


async def test_min_free_bytes_keeps_a_reserve_on_the_filesystem(open_spool: SpoolFactory):
    st = os.statvfs(os.getcwd())
    spool = await open_spool(min_free_bytes=st.f_bavail * st.f_frsize * 2)
    with pytest.raises(SpoolFull, match="min_free_bytes"):
        await spool.append([b"a"])


async def test_a_closed_spool_refuses_appends(open_spool: SpoolFactory):
    spool = await open_spool()
    await spool.close()
    with pytest.raises(SpoolError, match="closing"):
        await spool.append([b"a"])


async def test_a_second_owner_of_the_directory_is_refused(
    open_spool: SpoolFactory, spool_config: SpoolConfig
):
    await open_spool()
    second = Spool(spool_config)
    with pytest.raises(SpoolLocked, match=f"pid {os.getpid()}"):
        second.open()
    second.close_sync()
    probe = "import sys; from agent.config import SpoolConfig; from agent.spool import Spool; "
    probe += "Spool(SpoolConfig(dir=sys.argv[1], min_free_bytes=0)).open()"
    result = subprocess.run(
        [sys.executable, "-c", probe, spool_config.dir], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "in use by another usage-agent" in result.stderr


# --- the directory and its files: nobody else's to plant things in --------------------------


@pytest.mark.parametrize("mode", [0o770, 0o757, 0o777])
def test_a_spool_directory_others_can_write_is_refused_with_the_reason(
    spool_config: SpoolConfig, mode: int
):
    directory = Path(spool_config.dir)
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(SpoolError, match="writable by group or others"):
        Spool(spool_config).open()


def test_a_spool_directory_owned_by_another_user_is_refused(spool_config: SpoolConfig):
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root (CI runs as root)")
    directory = Path(spool_config.dir)
    directory.mkdir(mode=0o750)
    os.chown(directory, 65534, 65534)
    with pytest.raises(SpoolError, match="owned by uid 65534"):
        Spool(spool_config).open()


async def test_a_planted_cursor_tmp_link_is_not_followed_and_files_are_private(
    open_spool: SpoolFactory, spool_config: SpoolConfig, tmp_path: Path
):
    victim = tmp_path / "victim"
    victim.write_text("someone else's file\n")
    directory = Path(spool_config.dir)
    directory.mkdir(mode=0o750)
    (directory / "cursor.tmp").symlink_to(victim)
    spool = await open_spool()
    [seq] = await spool.append([b"one"])
    spool.ack([seq])
    await wait_for_cursor(spool, fmt.cursor_path(directory), seq + 1)
    assert victim.read_text() == "someone else's file\n"
    for path in directory.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o037 == 0, path  # 0640 or tighter


# --- a full disk, for real: a small tmpfs --------------------------------------------------


async def test_a_full_disk_fails_the_append_and_keeps_what_was_written(small_fs: Path):
    ballast = small_fs / "ballast"
    ballast.write_bytes(b"\0" * 128 * 1024)
    config = SpoolConfig(dir=str(small_fs / "spool"), min_free_bytes=0, segment_bytes=64 * 1024)
    spool = Spool(config)
    spool.open()
    await spool.start()
    accepted: list[int] = []
    with pytest.raises(SpoolFull, match="full"):
        for i in range(10_000):
            seqs = await spool.append([b"record-%06d" % i + b"." * 500])
            accepted.extend(seqs)
    assert len(accepted) > 100
    ballast.unlink()
    await asyncio.sleep(0.15)  # the free-space estimate is refreshed at most every 100 ms
    [after] = await spool.append([b"after the disk had room again"])
    await spool.close()

    again = Spool(config)
    again.open()
    await again.start()
    entries = []
    while batch := await again.read(1000):
        entries.extend(batch)
    assert [e.seq for e in entries] == [*accepted, after]
    assert all(e.payload.startswith(b"record-") for e in entries[:-1])
    assert again.stats.damage_events == again.stats.torn_tail_bytes == 0
    await again.close()
