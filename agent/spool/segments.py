"""Segment files: the next one is made from a zero-filled spare when one is ready, the one
before it is sealed, and the spare is prepared in the background.

Why zeros: an fdatasync after an append into blocks a file already has flushes those data
blocks only; an append that grows the file also changes its size and block map, which go
through the filesystem's journal. On this machine's ext4 that is ~110 us against ~180 us
for a 4 KiB append (bench/ingest.py prints both). So the spool writes its frames over
zeros, and only the newest segment may end in zeros (see format.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Final

from agent.fsio import fsync_dir, open_private, write_all
from agent.spool import format as fmt

log = logging.getLogger(__name__)

ZERO_CHUNK: Final = 1024 * 1024  # bytes per write while zero-filling a spare


def create_segment(directory: Path, first_seq: int) -> tuple[Path, int]:
    """The new segment `first_seq`, open for writing with its header written, durable (file
    and directory) before use. It is the spare, renamed, when one is ready; otherwise a
    new file that grows as it is written."""
    path = fmt.segment_path(directory, first_seq)
    try:
        os.rename(fmt.spare_path(directory), path)
        fd = open_private(path, os.O_RDWR)
    except FileNotFoundError:
        fd = open_private(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        write_all(fd, fmt.encode_segment_header(first_seq), 0)
        os.fsync(fd)
        fsync_dir(directory)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return path, fd


def seal_segment(fd: int, size: int) -> None:
    """Cut a synced segment to its last frame (`size`), so that no sealed segment ends in
    zeros. Done before the next segment exists: a crash leaves it the newest."""
    if os.fstat(fd).st_size > size:
        os.ftruncate(fd, size)
        os.fdatasync(fd)


def prepare_spare(directory: Path, size: int, min_free_bytes: int) -> None:
    """Zero-fill `segment.spare` (via a temporary name: a spare is whole or absent). Skipped
    when one exists or when it would take the filesystem under `min_free_bytes`; a failure
    is logged and costs only speed (the next segment grows as it is written)."""
    spare, tmp = fmt.spare_path(directory), fmt.spare_tmp_path(directory)
    try:
        st = os.statvfs(directory)
        if spare.exists() or st.f_bavail * st.f_frsize < size + min_free_bytes:
            return
        tmp.unlink(missing_ok=True)
        fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            zeros = bytes(min(size, ZERO_CHUNK))
            for offset in range(0, size, len(zeros)):
                write_all(fd, zeros[: size - offset], offset)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, spare)
        fsync_dir(directory)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.warning("could not zero-fill the next spool segment (appends still work): %s", exc)
