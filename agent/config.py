"""The configuration: read once into frozen dataclasses, one per section (where the
values come from, file, environment and flags: config_sources.py; the credentials:
credentials.py).

Each part of the agent receives its own section and never reads files or the environment
itself. Every error names the file, the key and what is wrong with it. Unknown sections and
keys are errors too: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from agent.errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "IngestConfig",
    "LogConfig",
    "RetryConfig",
    "RollupConfig",
    "SpoolConfig",
    "UpstreamConfig",
    "VerifyConfig",
]

FsyncMode = Literal["always", "interval", "off"]
FSYNC_MODES: Final = ("always", "interval", "off")
MiB: Final = 1024 * 1024
DEFAULT_ID_KEY: Final = "usageAgentRecordId"
DELIVERY_MODES: Final = ("effectively-once", "at-least-once")
UNKNOWN_FIELDS: Final = ("refuse", "drop")
VERIFY_MODES: Final = ("auto", "all", "sample", "off")
CATALOG_MODES: Final = ("auto", "off")
PAIGO_DOMAIN: Final = "paigo.tech"


@dataclass(frozen=True)
class SpoolConfig:
    dir: str = "/var/lib/usage-agent/spool"
    max_bytes: int = 1024 * MiB
    min_free_bytes: int = -1  # -1: the smaller of 256 MiB and 5 % of the volume
    segment_bytes: int = 16 * MiB
    preallocate: bool = True
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
    token: str = field(default="", repr=False, metadata={"from": "ingest.token_file"})
    max_request_bytes: int = MiB
    body_timeout_s: float = 10.0
    keepalive_timeout_s: float = 15.0
    max_records_per_request: int = 10_000
    idempotency_window_s: int = 86_400
    idempotency_max_keys: int = 200_000
    retry_after_s: int = 5
    max_metadata_bytes: int = 16384
    unknown_fields: str = "refuse"  # or "drop", as Paigo does


@dataclass(frozen=True)
class UpstreamConfig:
    enabled: bool = True
    url: str = "https://api.prod.paigo.tech/usage"
    token_url: str = "https://auth.paigo.tech/oauth/token"
    audience: str = "https://qnonyh1pc7.execute-api.us-east-1.amazonaws.com"
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    client_secret_file: str = ""
    mode: str = "single"
    batch_max_records: int = 500
    batch_max_bytes: int = MiB
    linger_ms: int = 20
    concurrency: int = 256
    request_timeout_s: float = 10.0
    gzip: bool = False
    record_id_metadata_key: str = DEFAULT_ID_KEY
    stamp_records: bool = True
    ordered_dimensions: tuple[str, ...] = ()
    max_retry_after_s: float = 300.0
    park_retry_s: float = 60.0
    token_refresh_margin_s: float = 300.0
    delivery: str = "effectively-once"
    unknown_settle_s: float = 10.0
    read_url: str = ""
    read_chunk_s: float = 3600.0
    dimensions: str = "auto"  # or "off": Paigo's dimension catalog (agent.catalog)
    dimensions_refresh_s: float = 300.0
    ledger_max_bytes: int = 256 * MiB
    allow_insecure: bool = False  # http:// to a host beyond this one: the secret in clear text

    @property
    def id_key(self) -> str:
        """The metadata key that carries each record's stable id upstream ("" with
        `stamp_records = false`)."""
        return self.record_id_metadata_key if self.stamp_records else ""

    @property
    def read_base(self) -> str:
        """Where Paigo's read API lives: `read_url`, else `url` without its /usage path."""
        return (self.read_url or self.url.removesuffix("/").removesuffix("/usage")).rstrip("/")


@dataclass(frozen=True)
class VerifyConfig:
    mode: str = "auto"  # "all" | "sample" | "off"; "auto": "all" for Paigo's URL, else "off"
    delay_s: float = 300.0
    sample_fraction: float = 0.01
    max_bytes: int = 256 * MiB
    max_reads_per_s: float = 10.0


@dataclass(frozen=True)
class RollupConfig:
    """Pre-aggregation (`agent.delivery.rollup`): one record per group instead of many."""

    dimensions: tuple[str, ...] = ()  # rolled up when their aggregation allows it
    window_s: int = 10  # must divide 900: a window never straddles a quarter hour
    auto: bool = False  # every catalog dimension whose aggregation allows it


@dataclass(frozen=True)
class RetryConfig:
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 60.0
    multiplier: float = 2.0
    jitter: bool = True
    circuit_failures: int = 5


LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS: Final = ("auto", "json", "text")


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"
    format: str = "auto"  # "json" | "text"; "auto": JSON unless stderr is a terminal


@dataclass(frozen=True)
class Config:
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    rollup: RollupConfig = field(default_factory=RollupConfig)
    log: LogConfig = field(default_factory=LogConfig)
    shutdown_grace_s: float = 10.0
    source: str = "<defaults>"


SECTIONS: Final[dict[str, type[Any]]] = {
    "spool": SpoolConfig,
    "ingest": IngestConfig,
    "upstream": UpstreamConfig,
    "retry": RetryConfig,
    "verify": VerifyConfig,
    "rollup": RollupConfig,
    "log": LogConfig,
}


TOP_LEVEL: Final = {"shutdown_grace_s": "float"}


def from_mapping(data: dict[str, Any], source: str = "<mapping>") -> Config:
    """Build a Config from parsed TOML (also how tests and the CLI make one)."""
    sections: dict[str, Any] = {}
    for name, table in data.items():
        if name in TOP_LEVEL:
            sections[name] = _typed(table, TOP_LEVEL[name], name, source)
            continue
        cls = SECTIONS.get(name)
        if cls is None:
            known = ", ".join([*TOP_LEVEL, *(f"[{s}]" for s in SECTIONS)])
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
        if spec is not None and "from" in spec.metadata:
            raise ConfigError(source, f"{name}.{key}", f"is set from {spec.metadata['from']}")
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


_POSITIVE: Final = (
    "spool.max_bytes",
    "spool.segment_bytes",
    "spool.fsync_interval_ms",
    "spool.cursor_interval_ms",
    "ingest.max_request_bytes",
    "ingest.max_records_per_request",
    "ingest.idempotency_window_s",
    "ingest.idempotency_max_keys",
    "ingest.retry_after_s",
    "ingest.max_metadata_bytes",
    "ingest.body_timeout_s",
    "ingest.keepalive_timeout_s",
    "upstream.batch_max_records",
    "upstream.batch_max_bytes",
    "upstream.concurrency",
    "upstream.request_timeout_s",
    "upstream.max_retry_after_s",
    "upstream.park_retry_s",
    "upstream.ledger_max_bytes",
    "upstream.read_chunk_s",
    "upstream.dimensions_refresh_s",
    "retry.initial_backoff_s",
    "retry.max_backoff_s",
    "retry.circuit_failures",
    "verify.max_bytes",
    "verify.max_reads_per_s",
)
_NON_NEGATIVE: Final = (
    "shutdown_grace_s",
    "upstream.linger_ms",
    "upstream.unknown_settle_s",
    "verify.delay_s",
)


def _value(config: Config, dotted: str) -> float:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node  # type: ignore[no-any-return]


def _check(config: Config) -> None:
    src, spool, ingest = config.source, config.spool, config.ingest
    if spool.fsync not in FSYNC_MODES:
        raise ConfigError(src, "spool.fsync", f"must be one of {', '.join(FSYNC_MODES)}")
    if not spool.dir:
        raise ConfigError(src, "spool.dir", "must not be empty")
    for key in _POSITIVE:
        if (value := _value(config, key)) <= 0:
            raise ConfigError(src, key, f"must be greater than 0, not {value}")
    for key in _NON_NEGATIVE:
        if (value := _value(config, key)) < 0:
            raise ConfigError(src, key, f"must not be negative, not {value}")
    if spool.min_free_bytes < -1:
        raise ConfigError(
            src,
            "spool.min_free_bytes",
            f"must be -1 (scaled to the volume) or more, not {spool.min_free_bytes}",
        )
    _check_upstream(config)
    if spool.segment_bytes > spool.max_bytes:
        raise ConfigError(src, "spool.segment_bytes", "must not be larger than spool.max_bytes")
    try:
        mode = int(ingest.unix_socket_mode, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise ConfigError(src, "ingest.unix_socket_mode", 'must be an octal mode like "0660"')
    if ingest.unknown_fields not in UNKNOWN_FIELDS:
        raise ConfigError(src, "ingest.unknown_fields", 'must be "refuse" or "drop"')
    if config.log.level.upper() not in LOG_LEVELS:
        raise ConfigError(src, "log.level", f"must be one of {', '.join(LOG_LEVELS)}")
    if config.log.format not in LOG_FORMATS:
        raise ConfigError(src, "log.format", f"must be one of {', '.join(LOG_FORMATS)}")
    _check_exposure(config)


def parse_listen(value: str) -> tuple[str, int]:
    """("127.0.0.1", 7411) from "127.0.0.1:7411"; "[::1]:7411" for IPv6."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_exposure(config: Config) -> None:
    """Refuse to listen beyond this host unless told to, and then only with a token."""
    ingest = config.ingest
    if not ingest.listen:
        return
    try:
        host, _ = parse_listen(ingest.listen)
    except ValueError as exc:
        raise ConfigError(config.source, "ingest.listen", str(exc)) from None
    if is_loopback(host):
        return
    if not ingest.allow_remote:
        raise ConfigError(
            config.source,
            "ingest.listen",
            f"{host} is not a loopback address; set ingest.allow_remote = true "
            "(and ingest.token_file) to accept usage from other hosts",
        )
    if not ingest.token_file:
        raise ConfigError(
            config.source, "ingest.token_file", "is required when ingest.allow_remote = true"
        )


def _check_upstream(config: Config) -> None:
    src, up, retry = config.source, config.upstream, config.retry
    if up.mode not in ("single", "array"):
        raise ConfigError(src, "upstream.mode", 'must be "single" or "array"')
    if up.mode == "array" and is_paigo(up.url):
        raise ConfigError(
            src,
            "upstream.mode",
            'Paigo has no batch endpoint: its /usage takes one record a request; "array" '
            "is for other endpoints that take JSON arrays",
        )
    if up.dimensions not in CATALOG_MODES:
        raise ConfigError(src, "upstream.dimensions", 'must be "auto" or "off"')
    if up.delivery not in DELIVERY_MODES:
        raise ConfigError(src, "upstream.delivery", f"must be one of {', '.join(DELIVERY_MODES)}")
    for key in ("url", "token_url", "read_url"):
        _check_url(config, key)
    if up.stamp_records and not up.record_id_metadata_key:
        raise ConfigError(src, "upstream.record_id_metadata_key", "must not be empty")
    if not up.stamp_records and up.delivery == "effectively-once":
        raise ConfigError(
            src,
            "upstream.stamp_records",
            "effectively-once delivery finds records at Paigo by their stamp: set it to true, "
            'or upstream.delivery = "at-least-once"',
        )
    _check_verify(config)
    _check_rollup(config)
    if retry.multiplier < 1:
        raise ConfigError(src, "retry.multiplier", "must be at least 1")


def _check_url(config: Config, key: str) -> None:
    """An upstream URL must be http(s), and http:// only to this host unless
    `upstream.allow_insecure`: the client secret and the bearer token would cross the
    network in clear text."""
    url = getattr(config.upstream, key)
    if key == "read_url" and not url:
        return
    if not url.startswith(("http://", "https://")):
        raise ConfigError(config.source, f"upstream.{key}", "must be an http:// or https:// URL")
    host = urllib.parse.urlsplit(url).hostname or ""
    if url.startswith("http://") and not is_loopback(host) and not config.upstream.allow_insecure:
        raise ConfigError(
            config.source,
            f"upstream.{key}",
            f"http:// to {host} would send the credentials in clear text; use https:// "
            "or set upstream.allow_insecure = true",
        )


def _check_verify(config: Config) -> None:
    src, verify = config.source, config.verify
    if verify.mode not in VERIFY_MODES:
        raise ConfigError(src, "verify.mode", 'must be "all", "sample", "off" or "auto"')
    if not 0 < verify.sample_fraction <= 1:
        raise ConfigError(src, "verify.sample_fraction", "must be more than 0 and at most 1")
    if verify.mode in ("all", "sample") and not config.upstream.stamp_records:
        raise ConfigError(
            src, "verify.mode", "verification finds records by their stamp: needs stamp_records"
        )


def _check_rollup(config: Config) -> None:
    src, rollup, up = config.source, config.rollup, config.upstream
    if rollup.window_s <= 0 or 900 % rollup.window_s:
        raise ConfigError(
            src,
            "rollup.window_s",
            "must divide 900 (1, 2, 3, 4, 5, 6, 9, 10, 12, 15, 18, 20, 25, 30, ... 900): a "
            "window must never straddle a quarter hour, where hours, days and billing "
            "periods begin",
        )
    if not (rollup.dimensions or rollup.auto):
        return
    if up.dimensions != "auto":
        raise ConfigError(
            src,
            "rollup.dimensions" if rollup.dimensions else "rollup.auto",
            "rollups need each dimension's aggregation from Paigo's catalog: set "
            'upstream.dimensions = "auto"',
        )
    if not up.stamp_records:
        raise ConfigError(
            src,
            "upstream.stamp_records",
            "rollups are told apart at Paigo by their stamp: set it to true",
        )


def verify_mode(config: Config) -> str:
    """The verification in force: "all", "sample" or "off" ("auto" decided by the URL)."""
    mode = config.verify.mode
    if mode == "auto":
        mode = "all" if is_paigo(config.upstream.url) and config.upstream.stamp_records else "off"
    return mode if config.upstream.enabled else "off"


def is_paigo(url: str) -> bool:
    """Whether `url` is on Paigo's own hosts."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    return host == PAIGO_DOMAIN or host.endswith("." + PAIGO_DOMAIN)


def socket_mode(ingest: IngestConfig) -> int:
    return int(ingest.unix_socket_mode, 8)
