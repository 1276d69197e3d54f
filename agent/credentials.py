"""Where the credentials come from: Paigo's client id and secret, and the ingest token.

They are not in `Config` as read from its sources (`agent.config_sources`) until
`resolve_secrets` fills them, first found wins:

* `upstream.client_id` / `client_secret`: the TOML file, then the environment
  (`PAIGO_CLIENT_ID`, `PAIGO_CLIENT_SECRET`), then `upstream.client_secret_file`, then
  systemd's credentials (`$CREDENTIALS_DIRECTORY/paigo_client_id`, `paigo_client_secret`).
* `ingest.token`: the contents of `ingest.token_file` (whitespace trimmed), when one is set;
  an empty file is an error.

An unreadable file named by the configuration is a ConfigError naming its key; a secret is
never part of an error, a log line or `check-config`'s output (only where it came from).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.config import Config
from agent.errors import ConfigError


def resolve_secrets(config: Config, environ: Mapping[str, str]) -> Config:
    """Fill upstream.client_id / client_secret, first found wins: the TOML file, then
    PAIGO_CLIENT_ID / PAIGO_CLIENT_SECRET, then upstream.client_secret_file, then
    systemd's $CREDENTIALS_DIRECTORY/paigo_client_id and paigo_client_secret."""
    return secrets_with_origins(config, environ)[0]


def secrets_with_origins(
    config: Config, environ: Mapping[str, str]
) -> tuple[Config, dict[str, str]]:
    """`resolve_secrets`, and where each secret came from ("upstream.client_secret" ->
    "environment PAIGO_CLIENT_SECRET", ...), for `check-config`."""
    up = config.upstream
    credentials = environ.get("CREDENTIALS_DIRECTORY", "")
    systemd = f"systemd credential in {credentials}"

    def credential(name: str, key: str) -> str:
        if not credentials:
            return ""
        return _read_secret(Path(credentials) / name, config, key, missing_ok=True)

    client_id, id_origin = _first(
        (f"file {config.source}", lambda: up.client_id),
        ("environment PAIGO_CLIENT_ID", lambda: environ.get("PAIGO_CLIENT_ID", "")),
        (systemd, lambda: credential("paigo_client_id", "upstream.client_id")),
    )
    secret_file = Path(up.client_secret_file)
    secret, secret_origin = _first(
        (f"file {config.source}", lambda: up.client_secret),
        ("environment PAIGO_CLIENT_SECRET", lambda: environ.get("PAIGO_CLIENT_SECRET", "")),
        (
            f"file {secret_file}",
            lambda: (
                up.client_secret_file
                and _read_secret(secret_file, config, "upstream.client_secret_file")
            ),
        ),
        (systemd, lambda: credential("paigo_client_secret", "upstream.client_secret")),
    )
    upstream = dataclasses.replace(up, client_id=client_id, client_secret=secret)
    ingest = dataclasses.replace(config.ingest, token=_read_token(config))
    resolved = dataclasses.replace(config, upstream=upstream, ingest=ingest)
    return resolved, {"upstream.client_id": id_origin, "upstream.client_secret": secret_origin}


def _first(*candidates: tuple[str, Callable[[], str]]) -> tuple[str, str]:
    """The first non-empty value of `candidates` (each read only when those before are
    empty), with its origin."""
    for origin, read in candidates:
        if value := read():
            return value, origin
    return "", "not set"


def _read_token(config: Config) -> str:
    path = config.ingest.token_file
    if not path:
        return ""
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not text"
        raise ConfigError(
            config.source, "ingest.token_file", f"cannot read {path}: {why}"
        ) from None
    if not token:
        raise ConfigError(config.source, "ingest.token_file", f"{path} is empty")
    return token


def _read_secret(path: Path, config: Config, key: str, missing_ok: bool = False) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        if missing_ok:
            return ""
        raise ConfigError(config.source, key, f"{path} does not exist") from None
    except OSError as exc:
        raise ConfigError(config.source, key, f"cannot read {path}: {exc.strerror}") from None
