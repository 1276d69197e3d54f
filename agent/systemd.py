"""systemd's side of the service: the notify protocol, the watchdog and socket activation.

Everything here is a no-op outside systemd (no `$NOTIFY_SOCKET`, no `$LISTEN_FDS`).

Notify messages (sd_notify(3)), one datagram each to `$NOTIFY_SOCKET`:

| message                  | when                                                            |
|--------------------------|-----------------------------------------------------------------|
| `READY=1` and `STATUS=`  | once every listener is up                                       |
| `STATUS=...`             | every `STATUS_EVERY_S`: backlog, oldest unsent, delivery state  |
| `WATCHDOG=1`             | from the event loop, every half of `$WATCHDOG_USEC` (when set)  |
| `EXTEND_TIMEOUT_USEC=N`  | before the spool's recovery and before the drain at stop        |
| `STOPPING=1`             | when a stop begins                                              |
| `ERRNO=N`                | when the start failed (N: the OS error, else EINVAL)            |

Socket activation (sd_listen_fds(3)): when `$LISTEN_PID` is this process, the
`$LISTEN_FDS` descriptors from 3 on are listening sockets systemd made (names in
`$LISTEN_FDNAMES`); the agent serves on them instead of binding its own, so connections
made while it restarts wait in the kernel's backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Final

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START: Final = 3
STATUS_EVERY_S: Final = 5.0


class Notifier:
    """Messages to systemd (Type=notify) from this process; `enabled` only under systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_s = _watchdog_interval(environ)

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *fields: str) -> None:
        if not self._address:
            return
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
            contextlib.suppress(OSError),
        ):
            sock.sendto("\n".join(fields).encode(), self._address)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def extend_timeout(self, seconds: float) -> None:
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def failed(self, exc: BaseException) -> None:
        number = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EINVAL
        self.send(f"ERRNO={number}")

    async def keep_alive(self, status: Callable[[], str]) -> None:
        """Until cancelled: WATCHDOG=1 every `watchdog_s` (from this event loop, so a stuck
        loop misses them and systemd restarts the agent) and STATUS= every few seconds."""
        if not self.enabled:
            return
        every = min(self.watchdog_s or STATUS_EVERY_S, STATUS_EVERY_S)
        since_status = 0.0
        while True:
            if self.watchdog_s:
                self.send("WATCHDOG=1")
            if since_status <= 0:
                self.status(status())
                since_status = STATUS_EVERY_S
            await asyncio.sleep(every)
            since_status -= every


def _watchdog_interval(environ: Mapping[str, str]) -> float:
    """Half of `$WATCHDOG_USEC` in seconds, when the watchdog is meant for this process."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return 0.0
    return int(usec) / 2_000_000


def listen_sockets(environ: Mapping[str, str] | None = None) -> list[tuple[str, socket.socket]]:
    """The listening sockets systemd passed to this process, with their names ([] when
    none). Each descriptor is marked close-on-exec, as sd_listen_fds does."""
    environ = os.environ if environ is None else environ
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(environ.get("LISTEN_FDS", "0") or 0)
    names = environ.get("LISTEN_FDNAMES", "").split(":")
    found = []
    for index in range(count):
        fd = SD_LISTEN_FDS_START + index
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        name = names[index] if index < len(names) and names[index] else f"fd{fd}"
        found.append((name, sock))
    return found
