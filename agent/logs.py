"""The agent's log: one line per event on stderr, UTC timestamps with their zone, JSON
when stderr is not a terminal (journald, kubectl logs and log shippers read it as is),
and logging that a failure repeated thousands of times a second cannot turn into a flood.

A JSON line: `{"time": "2026-12-01T03:04:05.678Z", "level": "INFO", "logger":
"agent.service", "message": "..."}` (and `"error"` with the exception, on one line).

`Throttled` logs a repeated failure once per interval, then says how many times it
happened in between: a full disk or a dead upstream gives a line every minute, not a
traceback per request into the very disk that is full.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Final, TextIO

EVERY_S: Final = 60.0


def configure(level: str, form: str, stream: TextIO = sys.stderr) -> None:
    """Send the agent's log to `stream`: `form` "json", "text", or "auto" (JSON unless
    `stream` is a terminal). Replaces any handler set before (a re-configuration)."""
    as_json = form == "json" or (form == "auto" and not stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def utc_time(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """`2026-12-01T03:04:05.678Z INFO agent.service: message` (a traceback folded in)."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{utc_time(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": utc_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            event["error"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


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
