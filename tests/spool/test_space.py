"""Room on disk: the two bounds, what counts against them, and readiness's view of them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.errors import SpoolFull
from agent.spool.space import DEFAULT_RESERVE, DRAIN_RESERVE, Space, reserve_for


def volume_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def test_the_default_reserve_scales_to_the_volume_and_never_falls_under_the_floor(
    tmp_path: Path, small_fs: Path
):
    assert reserve_for(tmp_path, -1) == min(DEFAULT_RESERVE, int(volume_bytes(tmp_path) * 0.05))
    assert reserve_for(small_fs, -1) == int(volume_bytes(small_fs) * 0.05)  # about 26 KiB
    assert reserve_for(small_fs, -1, floor=DRAIN_RESERVE) == DRAIN_RESERVE
    assert reserve_for(tmp_path, 0, floor=DRAIN_RESERVE) == DRAIN_RESERVE
    assert reserve_for(tmp_path, 5 * DRAIN_RESERVE, floor=DRAIN_RESERVE) == 5 * DRAIN_RESERVE


def test_what_is_kept_beside_the_segments_counts_in_max_bytes(tmp_path: Path):
    now = [0.0]
    space = Space(tmp_path, max_bytes=10_000, reserve=0, used=lambda: 4000, clock=lambda: now[0])
    space.take(5000, pending=0)
    space.count_also(lambda: 2000)
    assert space.bytes_used == 6000
    now[0] += 1.0  # side spools are re-read with the free space, every FREE_SPACE_TTL_S
    with pytest.raises(SpoolFull, match=r"spool\.max_bytes"):
        space.take(5000, pending=0)


def test_readiness_says_full_for_the_size_just_refused_until_it_would_fit(tmp_path: Path):
    used = 0
    space = Space(tmp_path, max_bytes=100_000, reserve=0, used=lambda: used)
    assert space.full_reason() == ""
    used = 90_000
    with pytest.raises(SpoolFull):
        space.take(20_000, pending=0)
    assert space.full_reason().startswith("spool full")  # a 4 KiB probe would fit; 20 KB not
    used = 50_000
    assert space.full_reason() == ""
    assert space.full_reason() == ""
