"""Where the configuration comes from, and which source set each value.

Precedence, lowest first: the defaults, the TOML file, the environment, the command line.

* The file: `--config PATH`; without it `$USAGE_AGENT_CONFIG`; without that
  `/etc/usage-agent/agent.toml` when it exists; else none (the defaults).
* The environment: `USAGE_AGENT_<SECTION>_<KEY>` for every key (`USAGE_AGENT_SPOOL_DIR`,
  `USAGE_AGENT_UPSTREAM_CONCURRENCY`; a top-level key is `USAGE_AGENT_SHUTDOWN_GRACE_S`).
  Booleans are true/false/1/0/yes/no/on/off, lists are comma-separated. A
  `USAGE_AGENT_...` variable that names no key is reported by `check-config`, not refused:
  Kubernetes injects `USAGE_AGENT_SERVICE_HOST` and the like for a Service of that name.
* The command line: `--set section.key=value`, and the flags `run` maps onto keys.
* Credentials from the environment and `$CREDENTIALS_DIRECTORY` (`agent.credentials`),
  whichever file is used, or none.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]

from agent import config, credentials
from agent.config import Config, ConfigError

ENV_PREFIX: Final = "USAGE_AGENT_"
CONFIG_VARIABLE: Final = "USAGE_AGENT_CONFIG"
DEFAULT_PATH: Final = "/etc/usage-agent/agent.toml"
DEFAULT: Final = "default"
_TRUE: Final = ("true", "1", "yes", "on")
_FALSE: Final = ("false", "0", "no", "off")


@dataclass(frozen=True)
class Loaded:
    """The effective configuration, where each key that is not a default came from
    ("spool.dir" -> "environment USAGE_AGENT_SPOOL_DIR"), and the `USAGE_AGENT_`
    variables that name no key."""

    config: Config
    origins: dict[str, str] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()

    def origin(self, key: str) -> str:
        return self.origins.get(key, DEFAULT)


def settable_keys() -> dict[str, str]:
    """Every key a file, the environment or a flag may set, dotted, with its type's name."""
    keys = dict(config.TOP_LEVEL)
    for section, cls in config.SECTIONS.items():
        for spec in dataclasses.fields(cls):
            if "from" not in spec.metadata:
                keys[f"{section}.{spec.name}"] = str(spec.type)
    return keys


def load(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Sequence[tuple[str, str]] = (),
) -> Loaded:
    """The configuration from every source. `flags`: (dotted key, value as text) pairs."""
    environ = os.environ if environ is None else environ
    path = config_path(path, environ)
    data: dict[str, Any] = read_file(path) if path else {}
    origins = {key: f"file {path}" for key in _dotted(data)}
    keys = settable_keys()
    ignored = []
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_VARIABLE:
            continue
        key = env_key(name, keys)
        if key is None:
            ignored.append(name)
            continue
        _set(data, key, parse_text(text, keys[key], name, "environment"))
        origins[key] = f"environment {name}"
    for key, text in flags:
        if key not in keys:
            raise ConfigError("--set", key, "unknown key; see config/agent.toml for every key")
        _set(data, key, parse_text(text, keys[key], key, "--set"))
        origins[key] = "command line"
    source = path or "<defaults>"
    try:
        built = config.from_mapping(data, source)
    except ConfigError as exc:  # name the variable or flag that set the key, not the file
        if exc.key in origins and not origins[exc.key].startswith("file"):
            raise ConfigError(origins[exc.key], exc.key, exc.reason) from None
        raise
    resolved, secret_origins = credentials.secrets_with_origins(built, environ)
    return Loaded(resolved, {**secret_origins, **origins}, tuple(ignored))


def config_path(explicit: str | None, environ: Mapping[str, str]) -> str | None:
    """The file to read: `explicit`, `$USAGE_AGENT_CONFIG`, the default path if it exists."""
    if explicit:
        return explicit
    if named := environ.get(CONFIG_VARIABLE):
        return named
    return DEFAULT_PATH if Path(DEFAULT_PATH).exists() else None


def read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(path, "-", f"cannot read the file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "-", f"not valid TOML: {exc}") from None


def env_key(name: str, keys: Mapping[str, str]) -> str | None:
    """The dotted key `USAGE_AGENT_<SECTION>_<KEY>` names, or None."""
    rest = name.removeprefix(ENV_PREFIX).lower()
    if rest in keys:
        return rest
    section, _, key = rest.partition("_")
    dotted = f"{section}.{key}"
    return dotted if dotted in keys else None


def parse_text(text: str, kind: str, name: str, source: str) -> object:
    """A value given as text (environment, command line) as the type `kind` names."""
    word = text.strip().lower()
    try:
        if kind == "bool":
            if word not in _TRUE + _FALSE:
                raise ValueError(f"{text!r} is not one of {', '.join(_TRUE + _FALSE)}")
            return word in _TRUE
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError as exc:
        raise ConfigError(source, name, f"must be {kind}: {exc}") from None
    if kind.startswith("tuple"):
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def parse_flag(text: str) -> tuple[str, str]:
    """("spool.dir", "/x") from "spool.dir=/x" (the `--set` flag)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", text, "must be section.key=value")
    return key.strip(), value


def _set(data: dict[str, Any], key: str, value: object) -> None:
    section, _, name = key.rpartition(".")
    table = data.setdefault(section, {}) if section else data
    if not isinstance(table, dict):
        raise ConfigError("configuration", section, "must be a table ([section])")
    table[name] = value


def _dotted(data: Mapping[str, Any]) -> list[str]:
    keys = []
    for name, value in data.items():
        if isinstance(value, dict):
            keys += [f"{name}.{key}" for key in value]
        else:
            keys.append(name)
    return keys


SECRET_KEYS: Final = ("upstream.client_secret",)
URL_KEYS: Final = ("upstream.url", "upstream.token_url", "upstream.read_url")


def effective(loaded: Loaded) -> dict[str, tuple[object, str]]:
    """Every settable key's value in force, secrets masked, with its origin."""
    shown: dict[str, tuple[object, str]] = {}
    for key in settable_keys():
        node: Any = loaded.config
        for part in key.split("."):
            node = getattr(node, part)
        value: object = list(node) if isinstance(node, tuple) else node
        if key in SECRET_KEYS:
            value = "(set)" if value else "(not set)"
        elif key in URL_KEYS:
            value = mask_user_info(str(value))
        shown[key] = (value, loaded.origin(key))
    return shown


def mask_user_info(url: str) -> str:
    """`url` with any user and password replaced by `***`."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if not sep or "@" not in authority:
        return url
    return f"{scheme}://***@{authority.rpartition('@')[2]}{slash}{path}"


def describe(loaded: Loaded) -> list[str]:
    """The effective configuration as TOML, each value commented with its origin."""
    lines = [f"# usage-agent configuration in force (file: {loaded.config.source})"]
    section = ""
    for key, (value, origin) in effective(loaded).items():
        head, _, name = key.rpartition(".")
        if head != section:
            section = head
            lines += ["", f"[{head}]"]
        text = f"{name or key} = {_toml(value)}"
        lines.append(f"{text:<48} # {origin}")
    lines += [f"# ignored: {name} names no key" for name in loaded.ignored]
    return lines


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
