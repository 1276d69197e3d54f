"""Crash states after a power cut: a recorder of the file-system calls a real run makes,
and a model of what an ext4/xfs-like file system may keep of them.

`Recorder` wraps the `os` functions the storage layer calls (open, pwrite, write, fsync,
fdatasync, ftruncate, rename, replace, unlink, close) for paths under one root: the calls
go through to the real file system, and each is also noted as an operation, in order,
from every thread. The test adds its own marks between them (`mark`: what was
acknowledged, and when).

`Model` replays the operations and, at any point, builds a state a crash could leave:

* a file's content as of its last fsync/fdatasync, plus any prefix of the writes and
  truncations made since (in order), the last write of the prefix possibly torn at a
  512-byte boundary;
* the names as of each directory's last fsync, plus any of the creations, renames and
  unlinks made in it since (each kept or not, in order).

`Recorder(skip=...)` leaves one call site's syncs out of the trace (the call goes through,
but the model never sees it): the state a build without that fsync could leave. A site is
`<function>:<call>`, the function being the storage layer's, e.g. `_fdatasync:fdatasync`
or `create_segment:fsync_dir`.
"""

from __future__ import annotations

import os
import random
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SECTOR = 512

Op = tuple[Any, ...]


class Recorder:
    def __init__(self, root: Path, skip: str = "") -> None:
        self.root = str(root)
        self.skip = skip
        self.ops: list[Op] = []
        self.sites: set[str] = set()  # every sync call site seen
        self._fds: dict[int, tuple[str, bool, bool]] = {}  # fd -> (path, directory, append)
        self._lock = threading.Lock()

    def mark(self, *what: Any) -> None:
        with self._lock:
            self.ops.append(("mark", *what))

    def _note(self, *op: Any) -> None:
        with self._lock:
            self.ops.append(op)

    def _ours(self, path: Any) -> str | None:
        text = os.fsdecode(path)
        full = os.path.abspath(text)
        return full if full.startswith(self.root + os.sep) else None

    @contextmanager
    def installed(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
        real = {name: getattr(os, name) for name in _WRAPPED}
        for name in _WRAPPED:
            monkeypatch.setattr(os, name, getattr(self, f"_{name}")(real[name]))
        try:
            yield self
        finally:
            for name, function in real.items():
                monkeypatch.setattr(os, name, function)

    # --- the wrappers (each takes the real function, returns its stand-in) -------------------

    def _open(self, real: Any) -> Any:
        def wrapped(path: Any, flags: int, mode: int = 0o777, *a: Any, **k: Any) -> int:
            ours = self._ours(path) if not a and not k.get("dir_fd") else None
            existed = ours is not None and os.path.lexists(ours)
            fd: int = real(path, flags, mode, *a, **k)
            if ours is not None:
                directory = bool(flags & os.O_DIRECTORY)
                self._fds[fd] = (ours, directory, bool(flags & os.O_APPEND))
                if not directory and not existed and flags & os.O_CREAT:
                    self._note("create", ours)
                elif not directory and flags & os.O_TRUNC:
                    self._note("truncate", ours, 0)
            return fd

        return wrapped

    def _close(self, real: Any) -> Any:
        def wrapped(fd: int) -> None:
            self._fds.pop(fd, None)
            real(fd)

        return wrapped

    def _pwrite(self, real: Any) -> Any:
        def wrapped(fd: int, data: Any, offset: int) -> int:
            written: int = real(fd, data, offset)
            if fd in self._fds:
                self._note("write", self._fds[fd][0], offset, bytes(data[:written]))
            return written

        return wrapped

    def _write(self, real: Any) -> Any:
        def wrapped(fd: int, data: Any) -> int:
            if fd not in self._fds:
                written: int = real(fd, data)
                return written
            path, _, append = self._fds[fd]
            offset = os.fstat(fd).st_size if append else os.lseek(fd, 0, os.SEEK_CUR)
            written = real(fd, data)
            self._note("write", path, offset, bytes(data[:written]))
            return written

        return wrapped

    def _ftruncate(self, real: Any) -> Any:
        def wrapped(fd: int, size: int) -> None:
            real(fd, size)
            if fd in self._fds:
                self._note("truncate", self._fds[fd][0], size)

        return wrapped

    def _sync(self, real: Any, call: str) -> Any:
        def wrapped(fd: int) -> None:
            real(fd)
            if fd not in self._fds:
                return
            path, directory, _ = self._fds[fd]
            site = _site(call, directory)
            self.sites.add(site)
            if site == self.skip:
                return
            self._note("dirsync" if directory else "sync", path)

        return wrapped

    def _fsync(self, real: Any) -> Any:
        return self._sync(real, "fsync")

    def _fdatasync(self, real: Any) -> Any:
        return self._sync(real, "fdatasync")

    def _rename(self, real: Any) -> Any:
        def wrapped(src: Any, dst: Any, *a: Any, **k: Any) -> None:
            real(src, dst, *a, **k)
            ours_src, ours_dst = self._ours(src), self._ours(dst)
            if ours_src and ours_dst:
                self._note("rename", ours_src, ours_dst)

        return wrapped

    def _replace(self, real: Any) -> Any:
        return self._rename(real)

    def _unlink(self, real: Any) -> Any:
        def wrapped(path: Any, *a: Any, **k: Any) -> None:
            real(path, *a, **k)
            if (ours := self._ours(path)) is not None:
                self._note("unlink", ours)

        return wrapped


_WRAPPED = (
    "open", "close", "pwrite", "write", "ftruncate", "fsync", "fdatasync", "rename",
    "replace", "unlink",
)  # fmt: skip


def _site(call: str, directory: bool) -> str:
    """`<storage function>:<call>` of the sync being made now."""
    frame = sys._getframe(2)
    if frame.f_code.co_name == "fsync_dir":
        call, frame = "fsync_dir", frame.f_back  # type: ignore[assignment]
    elif directory:
        call = "fsync_dir"
    return f"{frame.f_code.co_name}:{call}"


# --- the model ------------------------------------------------------------------------------


@dataclass(eq=False)
class Inode:
    live: bytearray = field(default_factory=bytearray)
    durable: bytearray = field(default_factory=bytearray)
    pending: list[Op] = field(default_factory=list)  # ("write", off, data) | ("truncate", n)


class Model:
    """The file system as the trace left it, durable and volatile parts apart."""

    def __init__(self) -> None:
        self.live: dict[str, Inode] = {}
        self.durable_names: dict[str, Inode] = {}
        self.pending_names: dict[str, list[Op]] = {}  # directory -> name operations

    def apply(self, op: Op) -> None:
        kind = op[0]
        if kind == "create":
            inode = self.live[op[1]] = Inode()
            self._named(op[1], ("link", op[1], inode))
        elif kind in ("write", "truncate"):
            inode = self.live.get(op[1]) or self._adopt(op[1])
            change = (kind, *op[2:])
            _change(inode.live, change)
            inode.pending.append(change)
        elif kind == "sync":
            inode = self.live.get(op[1]) or self._adopt(op[1])
            inode.durable, inode.pending = bytearray(inode.live), []
        elif kind == "rename":
            inode = self.live.pop(op[1])
            self.live[op[2]] = inode
            self._named(op[1], ("rename", op[1], op[2], inode))
        elif kind == "unlink":
            self.live.pop(op[1], None)
            self._named(op[1], ("unlink", op[1]))
        elif kind == "dirsync":
            for name_op in self.pending_names.pop(op[1], []):
                _rename(self.durable_names, name_op)

    def _adopt(self, path: str) -> Inode:
        """A file that existed before the trace began: durable as it is."""
        inode = self.live[path] = self.durable_names[path] = Inode()
        return inode

    def _named(self, path: str, name_op: Op) -> None:
        self.pending_names.setdefault(os.path.dirname(path), []).append(name_op)

    def state(self, rng: random.Random | None, keep: bool = False) -> dict[str, bytes]:
        """A state a crash now could leave: with `rng`, a random one; else every volatile
        change lost (`keep` False) or every one kept (`keep` True)."""
        names = dict(self.durable_names)
        for name_ops in self.pending_names.values():
            for name_op in name_ops:
                if keep if rng is None else rng.random() < 0.5:
                    _rename(names, name_op)
        image = {}
        for path, inode in names.items():
            content = bytearray(inode.durable)
            ops = inode.pending
            count = (len(ops) if keep else 0) if rng is None else rng.randint(0, len(ops))
            for index, change in enumerate(ops[:count]):
                last_write = rng is not None and index == count - 1 and change[0] == "write"
                _change(content, _torn(change, rng) if last_write and rng else change)
            image[path] = bytes(content)
        return image


def _rename(names: dict[str, Inode], name_op: Op) -> None:
    kind = name_op[0]
    if kind == "link":
        names[name_op[1]] = name_op[2]
    elif kind == "rename" and names.get(name_op[1]) is name_op[3]:
        names[name_op[2]] = names.pop(name_op[1])
    elif kind == "unlink":
        names.pop(name_op[1], None)


def _change(content: bytearray, change: Op) -> None:
    if change[0] == "truncate":
        size = change[-1]
        del content[size:]
        content.extend(bytes(size - len(content)))
        return
    offset, data = change[-2], change[-1]
    if len(content) < offset:
        content.extend(bytes(offset - len(content)))
    content[offset : offset + len(data)] = data


def _torn(write: Op, rng: random.Random) -> Op:
    """The write cut at a 512-byte boundary of the file, if one falls inside it."""
    offset, data = write[-2], write[-1]
    first = (offset // SECTOR + 1) * SECTOR
    cuts = range(first, offset + len(data), SECTOR)
    if not cuts or rng.random() < 0.5:
        return write
    return ("write", offset, data[: rng.choice(cuts) - offset])


def materialize(image: dict[str, bytes], root: str, target: Path, dirs: set[str]) -> None:
    """Write `image` (paths under `root`) under `target`, directories 0750, files 0640."""
    for directory in sorted(dirs):
        (target / os.path.relpath(directory, root)).mkdir(mode=0o750, parents=True, exist_ok=True)
    for path, content in image.items():
        where = target / os.path.relpath(path, root)
        where.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        where.write_bytes(content)
        where.chmod(0o640)
