"""The agent's errors: one root, and a few kinds that callers act on differently.

AgentError
├── ConfigError            the configuration cannot be used (names file, key, reason)
├── RecordInvalid          a usage record breaks the contract (carries every problem)
└── SpoolError             the spool cannot do what was asked
    ├── SpoolFull          over spool.max_bytes, under spool.min_free_bytes, or ENOSPC
    ├── SpoolLocked        another process owns the spool directory
    └── SpoolFormatError   a file in the spool directory is not in a format we can read
"""

from __future__ import annotations

from dataclasses import dataclass


class AgentError(Exception):
    """The root of every error the agent raises on purpose."""


class ConfigError(AgentError):
    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one record: which record, which field, and why."""

    index: int
    field: str
    message: str

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "field": self.field, "message": self.message}


class RecordInvalid(AgentError, ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"record {first.index}: {first.field}: {first.message}{more}")
        self.problems = problems


class SpoolError(AgentError, OSError):
    """The spool failed; nothing of the failed operation was stored."""


class SpoolFull(SpoolError):
    """An append would pass a limit; nothing was stored. Retry once space is freed."""

    def __init__(self, reason: str, retry_after_s: int = 5) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class SpoolLocked(SpoolError):
    """Another process holds the spool directory's lock."""


class SpoolFormatError(SpoolError):
    """A spool file carries a version or layout this agent cannot read."""

    def __init__(self, path: str, reason: str, hint: str = "") -> None:
        text = f"{path}: {reason}" + (f" ({hint})" if hint else "")
        super().__init__(text)
        self.path = path
        self.reason = reason
