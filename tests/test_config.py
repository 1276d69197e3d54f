"""Configuration: read once, checked, and every error names the file, the key and why."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent import config_sources
from agent.config import Config, ConfigError, from_mapping, verify_mode

ROOT = Path(__file__).parent.parent


def load(path: Path, environ: dict[str, str] | None = None) -> Config:
    return config_sources.load(str(path), {} if environ is None else environ).config


def test_the_shipped_example_is_exactly_the_defaults():
    loaded = load(ROOT / "config" / "agent.toml", environ={})
    assert loaded == Config(source=str(ROOT / "config" / "agent.toml"))


def test_array_mode_is_kept_for_endpoints_that_are_not_paigos():
    data = {"upstream": {"mode": "array", "url": "https://usage.example.com/batch"}}
    assert from_mapping(data).upstream.mode == "array"


def test_without_the_stamp_at_least_once_sends_no_id():
    data = {"upstream": {"stamp_records": False, "delivery": "at-least-once"}}
    assert from_mapping(data).upstream.id_key == ""
    assert from_mapping({}).upstream.id_key == "usageAgentRecordId"


def test_verification_is_on_for_paigos_url_and_off_elsewhere_by_default():
    assert verify_mode(from_mapping({})) == "all"
    elsewhere = {"upstream": {"url": "http://127.0.0.1:9/usage"}}
    assert verify_mode(from_mapping(elsewhere)) == "off"
    assert verify_mode(from_mapping({**elsewhere, "verify": {"mode": "sample"}})) == "sample"
    assert verify_mode(from_mapping({"upstream": {"enabled": False}})) == "off"


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
        ({"ingest": {"unknown_fields": "ignore"}}, "ingest.unknown_fields", '"refuse" or "drop"'),
        ({"ingest": {"max_metadata_bytes": 0}}, "ingest.max_metadata_bytes", "greater than 0"),
        ({"upstream": {"mode": "array"}}, "upstream.mode", "Paigo has no batch endpoint"),
        (
            {"upstream": {"mode": "array", "url": "https://api.sandbox.paigo.tech/usage"}},
            "upstream.mode",
            "one record a request",
        ),
        ({"upstream": {"dimensions": "on"}}, "upstream.dimensions", '"auto" or "off"'),
        ({"upstream": {"dimensions_refresh_s": 0}}, "upstream.dimensions_refresh_s", "than 0"),
        ({"upstream": {"read_chunk_s": -1}}, "upstream.read_chunk_s", "greater than 0"),
        ({"upstream": {"stamp_records": False}}, "upstream.stamp_records", "at-least-once"),
        ({"verify": {"mode": "some"}}, "verify.mode", '"all", "sample", "off"'),
        ({"verify": {"sample_fraction": 0}}, "verify.sample_fraction", "more than 0"),
        ({"verify": {"delay_s": -1}}, "verify.delay_s", "negative"),
        (
            {
                "upstream": {"stamp_records": False, "delivery": "at-least-once"},
                "verify": {"mode": "all"},
            },
            "verify.mode",
            "stamp",
        ),
        (
            {"upstream": {"record_id_metadata_key": ""}},
            "upstream.record_id_metadata_key",
            "must not be empty",
        ),
        ({"rollup": {"window_s": 7}}, "rollup.window_s", "must divide 900"),
        ({"rollup": {"window_s": 0}}, "rollup.window_s", "must divide 900"),
        ({"rollup": {"window_s": 1800}}, "rollup.window_s", "must divide 900"),
        ({"rollup": {"dimensions": "bytes"}}, "rollup.dimensions", "must be tuple"),
        (
            {"rollup": {"dimensions": ["bytes"]}, "upstream": {"dimensions": "off"}},
            "rollup.dimensions",
            "catalog",
        ),
        (
            {"rollup": {"auto": True}, "upstream": {"dimensions": "off"}},
            "rollup.auto",
            "catalog",
        ),
        (
            {
                "rollup": {"dimensions": ["bytes"]},
                "upstream": {"stamp_records": False, "delivery": "at-least-once"},
            },
            "upstream.stamp_records",
            "rollups are told apart",
        ),
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


@pytest.mark.parametrize(
    ("data", "key", "words"),
    [
        ({"log": {"level": "LOUD"}}, "log.level", "one of DEBUG"),
        ({"ingest": {"listen": "0.0.0.0:7411"}}, "ingest.listen", "allow_remote"),
        ({"ingest": {"listen": "192.0.2.1:7411"}}, "ingest.listen", "allow_remote"),
        (
            {"ingest": {"listen": "0.0.0.0:7411", "allow_remote": True}},
            "ingest.token_file",
            "required",
        ),
        ({"ingest": {"listen": "nowhere"}}, "ingest.listen", "not host:port"),
        ({"ingest": {"token": "x"}}, "ingest.token", "is set from ingest.token_file"),
        ({"spool": {"min_free_bytes": -2}}, "spool.min_free_bytes", "-1"),
    ],
)
def test_what_run_would_refuse_is_refused_by_the_configuration(data, key: str, words: str):
    with pytest.raises(ConfigError) as caught:
        from_mapping(data, "agent.toml")
    assert (caught.value.key, words in caught.value.reason) == (key, True)


def run_agent(config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args, "--config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_a_bad_configuration_exits_2_with_one_line_and_no_traceback(tmp_path: Path, command: str):
    config_file = tmp_path / "agent.toml"
    config_file.write_text('[log]\nlevel = "LOUD"\n')
    result = run_agent(config_file, command)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "log.level" in result.stderr


def test_a_port_in_use_exits_2_naming_the_address(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config_file = tmp_path / "agent.toml"
        config_file.write_text(
            f'[spool]\ndir = "{tmp_path / "spool"}"\nmin_free_bytes = 0\n'
            f'[ingest]\nlisten = "127.0.0.1:{port}"\nunix_socket = ""\n'
            "[upstream]\nenabled = false\n"
        )
        result = run_agent(config_file, "run")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "usage-agent:" in line]
    assert len(lines) == 1 and str(port) in lines[0]
    assert "Traceback" not in result.stderr
