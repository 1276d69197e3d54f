"""The configuration: one TOML file read once into frozen dataclasses, one per section.

Each part of the agent receives its own section and never reads files or the environment
itself. Every error names the file, the key and what is wrong with it. Unknown sections and
keys are errors too: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]

from agent.errors import ConfigError

__all__ = ["Config", "ConfigError", "IngestConfig", "LogConfig", "SpoolConfig", "load"]

FsyncMode = Literal["always", "interval", "off"]
FSYNC_MODES: Final = ("always", "interval", "off")
MiB: Final = 1024 * 1024


@dataclass(frozen=True)
class SpoolConfig:
    dir: str = "/var/lib/usage-agent/spool"
    max_bytes: int = 1024 * MiB
    min_free_bytes: int = 256 * MiB
    segment_bytes: int = 16 * MiB
    fsync: str = "always"
    fsync_interval_ms: int = 50
    cursor_interval_ms: int = 50


@dataclass(frozen=True)
class IngestConfig:
    listen: str = "127.0.0.1:7411"
    unix_socket: str = "/run/usage-agent/ingest.sock"
    unix_socket_mode: str = "0660"
    allow_remote: bool = False
    token_file: str = ""
    max_request_bytes: int = MiB
    body_timeout_s: float = 10.0
    keepalive_timeout_s: float = 15.0
    max_records_per_request: int = 10_000
    idempotency_window_s: int = 86_400
    idempotency_max_keys: int = 1_000_000
    retry_after_s: int = 5


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"


@dataclass(frozen=True)
class Config:
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    log: LogConfig = field(default_factory=LogConfig)
    shutdown_grace_s: float = 10.0
    source: str = "<defaults>"


_SECTIONS: Final[dict[str, type[Any]]] = {
    "spool": SpoolConfig,
    "ingest": IngestConfig,
    "log": LogConfig,
}


_TOP_LEVEL: Final = {"shutdown_grace_s": "float"}


def load(path: str | Path) -> Config:
    """Read and check the TOML file at `path`."""
    source = str(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(source, "-", f"cannot read the file: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "-", f"not valid TOML: {exc}") from exc
    return from_mapping(data, source)


def from_mapping(data: dict[str, Any], source: str = "<mapping>") -> Config:
    """Build a Config from parsed TOML (also how tests and the CLI make one)."""
    sections: dict[str, Any] = {}
    for name, table in data.items():
        if name in _TOP_LEVEL:
            sections[name] = _typed(table, _TOP_LEVEL[name], name, source)
            continue
        cls = _SECTIONS.get(name)
        if cls is None:
            known = ", ".join([*_TOP_LEVEL, *(f"[{s}]" for s in _SECTIONS)])
            raise ConfigError(source, name, f"unknown key or section; known: {known}")
        if not isinstance(table, dict):
            raise ConfigError(source, name, "must be a table ([section])")
        sections[name] = _section(cls, name, table, source)
    config = Config(**sections, source=source)
    _check(config)
    return config


def _section(cls: type[Any], name: str, table: dict[str, Any], source: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        spec = known.get(key)
        if spec is None:
            raise ConfigError(source, f"{name}.{key}", f"unknown key; known: {', '.join(known)}")
        values[key] = _typed(value, str(spec.type), f"{name}.{key}", source)
    return cls(**values)


def _typed(value: Any, type_name: str, key: str, source: str) -> Any:
    expected: dict[str, tuple[type, ...]] = {
        "int": (int,),
        "float": (int, float),
        "str": (str,),
        "bool": (bool,),
        "tuple[str, ...]": (list,),
    }
    allowed = expected[type_name]
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(source, key, f"must be {type_name}, not a boolean")
    if not isinstance(value, allowed):
        raise ConfigError(source, key, f"must be {type_name}, not {type(value).__name__}")
    if isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            raise ConfigError(source, key, "must be a list of strings")
        return tuple(value)
    if type_name == "float":
        return float(value)  # type: ignore[arg-type]  # int or float, checked above
    return value


def _check(config: Config) -> None:
    src, spool, ingest = config.source, config.spool, config.ingest
    if spool.fsync not in FSYNC_MODES:
        raise ConfigError(src, "spool.fsync", f"must be one of {', '.join(FSYNC_MODES)}")
    if not spool.dir:
        raise ConfigError(src, "spool.dir", "must not be empty")
    positive = {
        "spool.max_bytes": spool.max_bytes,
        "spool.segment_bytes": spool.segment_bytes,
        "spool.fsync_interval_ms": spool.fsync_interval_ms,
        "spool.cursor_interval_ms": spool.cursor_interval_ms,
        "ingest.max_request_bytes": ingest.max_request_bytes,
        "ingest.max_records_per_request": ingest.max_records_per_request,
        "ingest.idempotency_window_s": ingest.idempotency_window_s,
        "ingest.idempotency_max_keys": ingest.idempotency_max_keys,
        "ingest.retry_after_s": ingest.retry_after_s,
        "ingest.body_timeout_s": ingest.body_timeout_s,
        "ingest.keepalive_timeout_s": ingest.keepalive_timeout_s,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(src, key, f"must be greater than 0, not {value}")
    if config.shutdown_grace_s < 0:
        raise ConfigError(src, "shutdown_grace_s", "must not be negative")
    if spool.min_free_bytes < 0:
        raise ConfigError(src, "spool.min_free_bytes", "must not be negative")
    if spool.segment_bytes > spool.max_bytes:
        raise ConfigError(src, "spool.segment_bytes", "must not be larger than spool.max_bytes")
    try:
        mode = int(ingest.unix_socket_mode, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise ConfigError(src, "ingest.unix_socket_mode", 'must be an octal mode like "0660"')


def socket_mode(ingest: IngestConfig) -> int:
    return int(ingest.unix_socket_mode, 8)
