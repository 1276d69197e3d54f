"""The on-disk format: checksums, frames, resynchronisation and the cursor file."""

from __future__ import annotations

import pytest

from agent.spool import format as fmt


def test_crc32c_matches_the_standard_check_value():
    assert fmt.crc32c(b"123456789") == 0xE3069283


def test_a_frame_round_trips_with_its_seq_and_payload():
    data = fmt.encode_frame(42, b"hello")
    frame = fmt.decode_frame(data, 0)
    assert frame == fmt.Frame(42, b"hello", 0, len(data))
    assert len(data) == fmt.FRAME_HEADER_SIZE + 5


def test_a_frame_cut_short_is_incomplete_not_corrupt():
    data = fmt.encode_frame(1, b"payload")
    for cut in range(1, len(data)):
        assert fmt.decode_frame(data[:cut], 0) is None


@pytest.mark.parametrize("offset", range(4, 27))
def test_any_flipped_bit_after_the_magic_is_caught(offset: int):
    data = bytearray(fmt.encode_frame(7, b"payload"))
    data[offset] ^= 0x10
    try:
        frame = fmt.decode_frame(bytes(data), 0)
    except fmt.CorruptFrame:
        return
    assert frame is None  # a length made larger reads as incomplete; the reader resyncs


def test_bad_magic_and_oversized_length_are_corrupt():
    with pytest.raises(fmt.CorruptFrame, match="magic"):
        fmt.decode_frame(b"\x00" * 40, 0)
    huge = fmt.FRAME_HEADER.pack(fmt.FRAME_MAGIC, 0, fmt.MAX_PAYLOAD_BYTES + 1, 1)
    with pytest.raises(fmt.CorruptFrame, match="length"):
        fmt.decode_frame(huge, 0)


def test_resync_finds_the_next_whole_frame_after_garbage():
    good = fmt.encode_frames(5, [b"a", b"b"])
    data = b"\xffUAf garbage that starts like a frame" + good
    assert fmt.next_valid_frame(data, 0) == len(data) - len(good)
    assert fmt.next_valid_frame(b"\xffUAf" * 10, 0) is None


def test_segment_header_carries_version_and_first_seq():
    assert fmt.decode_segment_header(fmt.encode_segment_header(99)) == (fmt.FORMAT_VERSION, 99)
    with pytest.raises(ValueError, match="magic"):
        fmt.decode_segment_header(b"NOTASEGMENTFILE!")


def test_segment_names_sort_by_first_seq(tmp_path):
    paths = [fmt.segment_path(tmp_path, n) for n in (10, 9, 100)]
    assert sorted(p.name for p in paths) == [p.name for p in sorted(paths)]
    assert [fmt.segment_first_seq(p) for p in paths] == [10, 9, 100]
    assert fmt.segment_first_seq(tmp_path / "cursor") is None
    assert fmt.segment_first_seq(tmp_path / "12.seg") is None


def test_the_cursor_round_trips_and_its_hint_is_optional():
    full = fmt.Cursor("ab12", 10, 1, 500)
    assert fmt.decode_cursor(fmt.encode_cursor(full)) == full
    bare = fmt.Cursor("ab12", 10)
    assert fmt.decode_cursor(fmt.encode_cursor(bare)) == bare


@pytest.mark.parametrize(
    "data",
    [b"[]", b'{"version": 2, "spool_id": "x", "next_seq": 1}', b'{"version": 1}'],
)
def test_a_cursor_of_another_version_or_shape_is_refused(data: bytes):
    with pytest.raises(ValueError):
        fmt.decode_cursor(data)


def test_a_run_of_frames_stops_at_the_first_frame_it_cannot_vouch_for():
    good = fmt.encode_frames(5, [b"a", b"b", b"c"])
    assert fmt.decode_run(good, 0, 5, 10) == ([b"a", b"b", b"c"], len(good))
    assert fmt.decode_run(good, 0, 5, 2)[0] == [b"a", b"b"]
    assert fmt.decode_run(good, 0, 4, 10) == ([], 0)  # not the seq expected
    assert fmt.decode_run(good[:-1], 0, 5, 10)[0] == [b"a", b"b"]  # the last one is cut
    damaged = bytearray(good)
    damaged[len(fmt.encode_frame(5, b"a")) + fmt.FRAME_HEADER_SIZE] ^= 1
    assert fmt.decode_run(bytes(damaged), 0, 5, 10)[0] == [b"a"]
