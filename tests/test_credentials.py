"""Credentials: where Paigo's client id and secret and the ingest token come from, and that
a secret is never printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import config_sources
from agent.config import Config, ConfigError


def load(path: Path, environ: dict[str, str]) -> Config:
    return config_sources.load(str(path), environ).config


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
    token_file = tmp_path / "token"
    token_file.write_text("ingest-s3cret\n")
    config_file.write_text(
        f'[upstream]\nclient_secret = "hunter2"\n[ingest]\ntoken_file = "{token_file}"\n'
    )
    assert main(["check-config", "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "ingest-s3cret" not in out and "(set)" in out


def test_an_unreadable_or_empty_token_file_is_a_config_error(tmp_path: Path):
    config_file = tmp_path / "agent.toml"
    config_file.write_text(f'[ingest]\ntoken_file = "{tmp_path / "absent"}"\n')
    with pytest.raises(ConfigError, match=r"ingest\.token_file: cannot read"):
        load(config_file, {})
    (tmp_path / "empty").write_text("\n")
    config_file.write_text(f'[ingest]\ntoken_file = "{tmp_path / "empty"}"\n')
    with pytest.raises(ConfigError, match="is empty"):
        load(config_file, {})
