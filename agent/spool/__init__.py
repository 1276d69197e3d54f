"""The write-ahead spool: a directory of segment files that usage is appended to durably
before the agent answers, and read from, in order, by delivery."""

from agent.spool.spool import Spool

__all__ = ["Spool"]
