"""Configuration: read once, checked, and every error names the file, the key and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config, ConfigError, from_mapping, load

ROOT = Path(__file__).parent.parent


def test_the_shipped_example_is_exactly_the_defaults():
    loaded = load(ROOT / "config" / "agent.toml", environ={})
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


def test_secrets_come_from_the_environment_a_file_or_systemd_credentials(tmp_path: Path):
    config_file = tmp_path / "agent.toml"
    config_file.write_text('[upstream]\nclient_id = "from-file"\n')
    loaded = load(config_file, {"PAIGO_CLIENT_SECRET": "env-secret", "PAIGO_CLIENT_ID": "env-id"})
    assert loaded.upstream.client_id == "from-file"  # the TOML file wins
    assert loaded.upstream.client_secret == "env-secret"
    assert "env-secret" not in repr(loaded)  # never in a log line that prints the config

    secret_file = tmp_path / "secret"
    secret_file.write_text("file-secret\n")
    config_file.write_text(f'[upstream]\nclient_secret_file = "{secret_file}"\n')
    assert load(config_file, {}).upstream.client_secret == "file-secret"

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "paigo_client_id").write_text("sd-id")
    (creds / "paigo_client_secret").write_text("sd-secret")
    config_file.write_text("")
    loaded = load(config_file, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert (loaded.upstream.client_id, loaded.upstream.client_secret) == ("sd-id", "sd-secret")


def test_check_config_never_prints_the_secret(tmp_path: Path, capsys):
    from agent.cli import main

    config_file = tmp_path / "agent.toml"
    config_file.write_text('[upstream]\nclient_secret = "hunter2"\n')
    assert main(["check-config", "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "(set)" in out
