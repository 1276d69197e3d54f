"""Configuration: read once, checked, and every error names the file, the key and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config, ConfigError, from_mapping, load

ROOT = Path(__file__).parent.parent


def test_the_shipped_example_is_exactly_the_defaults():
    loaded = load(ROOT / "config" / "agent.toml")
    assert loaded == Config(source=str(ROOT / "config" / "agent.toml"))


def test_the_systemd_example_loads():
    assert load(ROOT / "config" / "agent.systemd.toml").spool.dir == "/var/lib/usage-agent/spool"


@pytest.mark.parametrize(
    ("data", "key", "words"),
    [
        ({"spool": {"fsync": "sometimes"}}, "spool.fsync", "one of always"),
        ({"spool": {"max_bytes": "1GB"}}, "spool.max_bytes", "must be int, not str"),
        ({"spool": {"max_bytes": True}}, "spool.max_bytes", "not a boolean"),
        ({"spool": {"max_bytes": 0}}, "spool.max_bytes", "greater than 0"),
        ({"spool": {"segment_bytes": 10, "max_bytes": 5}}, "spool.segment_bytes", "larger"),
        ({"spool": {"dirr": "/x"}}, "spool.dirr", "unknown key"),
        ({"spool": 3}, "spool", "must be a table"),
        ({"upstreem": {}}, "upstreem", "unknown key or section"),
        ({"ingest": {"unix_socket_mode": "rw"}}, "ingest.unix_socket_mode", "octal"),
        ({"shutdown_grace_s": -1}, "shutdown_grace_s", "negative"),
    ],
)
def test_bad_values_are_refused_naming_file_key_and_reason(data, key: str, words: str):
    with pytest.raises(ConfigError) as caught:
        from_mapping(data, "/etc/usage-agent/agent.toml")
    assert caught.value.key == key
    assert words in caught.value.reason
    assert str(caught.value).startswith(f"/etc/usage-agent/agent.toml: {key}: ")


def test_a_missing_or_broken_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[spool\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(broken)


def test_floats_take_integers_and_top_level_keys_are_read():
    config = from_mapping({"shutdown_grace_s": 3, "ingest": {"body_timeout_s": 2}})
    assert config.shutdown_grace_s == 3.0
    assert config.ingest.body_timeout_s == 2.0
