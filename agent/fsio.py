"""Durable file operations: what it takes for bytes and names to survive a power loss.

Every file the agent makes in its spool directory is made through `open_private` or
`write_atomically`: mode 0640 whatever the umask lets through, never through a symlink
(`O_NOFOLLOW`), and a temporary file is always a new one (`O_EXCL`), so a link planted in
the directory cannot make the agent write anywhere else.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

FILE_MODE: Final = 0o640


def open_private(path: Path, flags: int) -> int:
    """`os.open` for a file of the agent's own: created 0640, never through a symlink."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)


def write_all_appending(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` by `data`: temp file, fsync, rename, fsync of the directory."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a leftover of a failed write (or something planted)
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        try:
            write_all(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # no empty cursor.tmp left behind by a full disk
        raise
    fsync_dir(path.parent)


def write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def truncate_durably(path: Path, size: int) -> None:
    fd = open_private(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def complete_lines(path: Path) -> Iterator[bytes]:
    """The lines of an append-only file that were written whole: a last line without its
    newline (a write cut by a crash) is skipped. Nothing if the file does not exist."""
    if not path.exists():
        return
    with path.open("rb") as handle:
        for line in handle:
            if line.endswith(b"\n"):
                yield line
