"""Segment files: made from a zero-filled spare when one is ready, sealed to their frames."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.spool import format as fmt
from agent.spool.segments import create_segment, prepare_spare, seal_segment

SIZE = 256 * 1024


def test_a_spare_is_zero_filled_and_becomes_the_next_segment(tmp_path: Path):
    prepare_spare(tmp_path, SIZE, min_free_bytes=0)
    assert fmt.spare_path(tmp_path).read_bytes() == bytes(SIZE)
    path, fd = create_segment(tmp_path, 42)
    os.close(fd)
    data = path.read_bytes()
    assert len(data) == SIZE
    assert fmt.decode_segment_header(data) == (fmt.FORMAT_VERSION, 42)
    assert data[fmt.SEGMENT_HEADER_SIZE :] == bytes(SIZE - fmt.SEGMENT_HEADER_SIZE)
    assert not fmt.spare_path(tmp_path).exists()  # used once


def test_without_a_spare_a_segment_is_a_new_file_that_grows(tmp_path: Path):
    path, fd = create_segment(tmp_path, 1)
    os.close(fd)
    assert path.stat().st_size == fmt.SEGMENT_HEADER_SIZE


def test_no_spare_is_made_when_it_would_take_the_disk_under_min_free_bytes(tmp_path: Path):
    st = os.statvfs(tmp_path)
    prepare_spare(tmp_path, SIZE, min_free_bytes=st.f_bavail * st.f_frsize)
    assert sorted(tmp_path.iterdir()) == []


def test_a_spare_that_cannot_be_made_is_logged_and_leaves_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    prepare_spare(tmp_path / "gone", SIZE, min_free_bytes=0)
    assert "could not zero-fill" in caplog.text
    assert sorted(tmp_path.iterdir()) == []


def test_sealing_cuts_a_segment_to_its_last_frame(tmp_path: Path):
    prepare_spare(tmp_path, SIZE, min_free_bytes=0)
    path, fd = create_segment(tmp_path, 1)
    frames = fmt.encode_frames(1, [b"one", b"two"])
    os.pwrite(fd, frames, fmt.SEGMENT_HEADER_SIZE)
    seal_segment(fd, fmt.SEGMENT_HEADER_SIZE + len(frames))
    os.close(fd)
    assert path.read_bytes() == fmt.encode_segment_header(1) + frames
