"""Durable file operations: what a full disk or a planted link leaves behind."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from agent.fsio import open_private, write_atomically
from tests.integration.test_disk_full import fill_up


def test_an_atomic_write_on_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(
    small_fs: Path,
):
    target = small_fs / "cursor"
    write_atomically(target, b"the last good cursor")
    fill_up(small_fs)
    with pytest.raises(OSError) as caught:
        write_atomically(target, b"x" * 65536)
    assert caught.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"the last good cursor"
    assert not (small_fs / "cursor.tmp").exists()


def test_a_planted_temporary_link_is_replaced_not_followed(tmp_path: Path):
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    (tmp_path / "cursor.tmp").symlink_to(victim)
    write_atomically(tmp_path / "cursor", b"new")
    assert victim.read_text() == "keep me\n"
    assert (tmp_path / "cursor").read_bytes() == b"new"
    assert stat.S_IMODE((tmp_path / "cursor").stat().st_mode) == 0o640


def test_private_files_are_0640_whatever_the_umask_and_refuse_links(tmp_path: Path):
    old = os.umask(0)
    try:
        fd = open_private(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
        os.close(fd)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o640
    (tmp_path / "link").symlink_to(tmp_path / "f")
    with pytest.raises(OSError) as caught:
        open_private(tmp_path / "link", os.O_WRONLY)
    assert caught.value.errno == errno.ELOOP
