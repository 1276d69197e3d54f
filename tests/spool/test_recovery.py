"""What the spool makes of damaged files: the checked-in samples in tests/data, one each."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.config import SpoolConfig
from agent.errors import SpoolFormatError
from agent.spool import Spool

DATA = Path(__file__).parent.parent / "data"


async def open_sample(name: str, tmp_path: Path) -> Spool:
    directory = tmp_path / name
    shutil.copytree(DATA / name, directory)
    spool = Spool(SpoolConfig(dir=str(directory), min_free_bytes=0))
    spool.open()
    await spool.start()
    return spool


async def read_all(spool: Spool) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while entries := await spool.read(1000):
        found.update((e.seq, e.payload) for e in entries)
    return found


def expected(seqs: range | list[int]) -> dict[int, bytes]:
    return {seq: f"record-{seq}".encode() for seq in seqs}


def quarantined(spool: Spool) -> list[Path]:
    return sorted((spool.dir / "quarantine").glob("*.bin"))


async def test_a_torn_tail_is_cut_off_on_open_and_every_whole_frame_is_kept(tmp_path: Path):
    spool = await open_sample("torn-tail", tmp_path)
    assert spool.stats.torn_tail_bytes == 7
    assert await read_all(spool) == expected(range(1, 10))
    assert quarantined(spool) == []
    assert (await spool.append([b"next"])) == range(10, 11)
    await spool.close()


async def test_zeroes_after_the_last_frame_are_free_space_and_stay(tmp_path: Path):
    spool = await open_sample("zeroed-tail", tmp_path)
    size = (spool.dir / "00000000000000000001.seg").stat().st_size
    assert spool.stats.torn_tail_bytes == 0
    assert await read_all(spool) == expected(range(1, 11))
    assert (await spool.append([b"next"])) == range(11, 12)
    assert await read_all(spool) == {11: b"next"}
    await spool.close()
    assert (spool.dir / "00000000000000000001.seg").stat().st_size == size  # written in place


async def test_a_torn_frame_before_the_zeroes_is_cut_off(tmp_path: Path):
    spool = await open_sample("torn-tail-in-zeros", tmp_path)
    assert spool.stats.torn_tail_bytes == 7
    assert await read_all(spool) == expected(range(1, 10))
    assert (await spool.append([b"next"])) == range(10, 11)
    assert await read_all(spool) == {10: b"next"}
    await spool.close()


@pytest.mark.parametrize("sample", ["bit-flip-in-tail-segment", "bad-length"])
async def test_a_damaged_frame_in_the_middle_is_quarantined_and_reading_resumes_after_it(
    tmp_path: Path, sample: str
):
    spool = await open_sample(sample, tmp_path)
    assert await read_all(spool) == expected([1, 2, 3, 4, 6, 7, 8, 9, 10])
    assert spool.stats.lost_records == 1
    assert spool.stats.damage_events == 1
    [copy] = quarantined(spool)
    assert copy.read_bytes()[20:] in (b"re\x23ord-5", b"record-5")  # the damaged frame
    assert (await spool.append([b"next"])) == range(11, 12)
    await spool.close()


async def test_damage_in_a_sealed_segment_is_found_by_the_reader_not_at_open(tmp_path: Path):
    spool = await open_sample("bit-flip-in-sealed-segment", tmp_path)
    assert spool.stats.damage_events == 0  # open scanned only the newest segment
    assert await read_all(spool) == expected([1, 2, *range(4, 16)])
    assert spool.stats.lost_records == 1
    assert len(quarantined(spool)) == 1
    await spool.close()
    again = Spool(SpoolConfig(dir=str(spool.dir), min_free_bytes=0))
    again.open()  # the loss is behind the cursor now: not found again, but still counted
    assert (again.stats.lost_records, again.stats.lost_records_before) == (0, 1)
    again.close_sync()


async def test_damage_read_again_after_a_rewind_is_not_quarantined_or_counted_twice(
    tmp_path: Path,
):
    spool = await open_sample("bit-flip-in-sealed-segment", tmp_path)
    entries = await spool.read(1000)
    assert [e.seq for e in entries] == [1, 2, *range(4, 16)]
    spool.ack([e.seq for e in entries if e.seq != 2])
    spool.release([2])  # given back: reading goes back over the damaged frame 3
    spool.rewind()
    assert [e.seq for e in await spool.read(1000)] == [2]
    assert (spool.stats.lost_records, spool.stats.damage_events) == (1, 1)
    assert len(quarantined(spool)) == 1
    await spool.close()


async def test_a_sealed_segment_that_ends_mid_frame_loses_only_the_cut_frames(tmp_path: Path):
    spool = await open_sample("torn-sealed-segment", tmp_path)
    assert await read_all(spool) == expected([*range(1, 9), *range(11, 16)])
    assert spool.stats.lost_records == 2
    [copy] = quarantined(spool)
    assert copy.read_bytes().startswith(b"\xffUAf")
    await spool.close()


async def test_a_new_segment_left_empty_by_a_crash_is_removed(tmp_path: Path):
    spool = await open_sample("empty-new-segment", tmp_path)
    assert await read_all(spool) == expected(range(1, 11))
    assert (await spool.append([b"next"])) == range(11, 12)
    assert quarantined(spool) == []
    await spool.close()


async def test_a_segment_of_a_newer_format_version_refuses_to_open_with_a_hint(
    tmp_path: Path,
):
    directory = tmp_path / "future"
    shutil.copytree(DATA / "future-version", directory)
    spool = Spool(SpoolConfig(dir=str(directory), min_free_bytes=0))
    with pytest.raises(SpoolFormatError, match=r"format version 99.*newer usage-agent"):
        spool.open()
    spool.close_sync()


async def test_the_samples_are_what_make_samples_writes(tmp_path: Path):
    """The checked-in files must not drift from their generator."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_samples", DATA / "make_samples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    before = {p: p.read_bytes() for p in DATA.rglob("*.seg")}
    module.HERE = tmp_path
    module.main()
    after = {DATA / p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*.seg")}
    assert before == after
