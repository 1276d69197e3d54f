"""Logging that a failure repeated thousands of times a second cannot turn into a flood.

`Throttled` logs a repeated failure once per interval, then says how many times it
happened in between: a full disk or a dead upstream gives a line every minute, not a
traceback per request into the very disk that is full.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

EVERY_S: Final = 60.0


class Throttled:
    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        every_s: float = EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._what = what
        self._every = every_s
        self._clock = clock
        self._last = -every_s
        self._skipped = 0

    def error(self, detail: str, *args: object) -> None:
        self.log(logging.ERROR, detail, *args)

    def warning(self, detail: str, *args: object) -> None:
        self.log(logging.WARNING, detail, *args)

    def log(self, level: int, detail: str, *args: object) -> None:
        now = self._clock()
        if now - self._last < self._every:
            self._skipped += 1
            return
        skipped, self._skipped, self._last = self._skipped, 0, now
        more = f" (and {skipped} more times in the last {self._every:.0f} s)" if skipped else ""
        self._log.log(level, f"{self._what}: {detail}{more}", *args)
