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

import orjson

FILE_MODE: Final = 0o640


def open_private(path: Path, flags: int) -> int:
    """`os.open` for a file of the agent's own: created 0640, never through a symlink."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)


def append_lines(fd: int, data: bytes) -> None:
    """Append lines to a file opened `O_RDWR | O_APPEND`. A last line that a crash cut short
    is ended first: it stays one unreadable line, and the new ones are whole."""
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        data = b"\n" + data
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


def json_lines(path: Path) -> Iterator[tuple[int, dict[str, object] | None]]:
    """Each line of an append-only JSON-lines file, numbered from 1, as its object, or None
    when it was not written whole (a write cut by a crash or a full disk: no newline, or
    not a JSON object). Nothing if the file does not exist."""
    if not path.exists():
        return
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                value = orjson.loads(line) if line.endswith(b"\n") else None
            except orjson.JSONDecodeError:
                value = None
            yield number, value if isinstance(value, dict) else None
