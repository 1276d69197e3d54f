"""Where the configuration comes from: defaults < file < environment < flags, each value's
origin shown by `check-config`, secrets never printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import __version__, config_sources
from agent.config import ConfigError
from agent.config_sources import load
from tests.conftest import record
from tests.integration.agent_process import AgentProcess
from tests.integration.fake_thread import fake_paigo_thread

SECRET = "zq-very-distinctive-secret-81f3"


def test_each_layer_overrides_the_one_below_and_says_so(tmp_path: Path):
    path = tmp_path / "agent.toml"
    path.write_text('[spool]\ndir = "/from/file"\nmax_bytes = 4000000000\n[log]\nlevel = "DEBUG"\n')
    environ = {
        "USAGE_AGENT_SPOOL_MAX_BYTES": "5000000000",
        "USAGE_AGENT_LOG_LEVEL": "WARNING",
        "USAGE_AGENT_UPSTREAM_GZIP": "yes",
        "USAGE_AGENT_UPSTREAM_ORDERED_DIMENSIONS": "a, b",
        "USAGE_AGENT_SHUTDOWN_GRACE_S": "3.5",
    }
    loaded = load(str(path), environ, flags=[("log.level", "ERROR")])
    cfg = loaded.config
    assert cfg.spool.dir == "/from/file" and loaded.origin("spool.dir") == f"file {path}"
    assert cfg.spool.max_bytes == 5_000_000_000
    assert loaded.origin("spool.max_bytes") == "environment USAGE_AGENT_SPOOL_MAX_BYTES"
    assert cfg.log.level == "ERROR" and loaded.origin("log.level") == "command line"
    assert cfg.upstream.gzip is True and cfg.upstream.ordered_dimensions == ("a", "b")
    assert cfg.shutdown_grace_s == 3.5
    assert loaded.origin("ingest.listen") == "default"


def test_the_file_is_the_flag_then_the_variable_then_etc_if_it_exists(tmp_path: Path):
    named = tmp_path / "named.toml"
    named.write_text('[spool]\ndir = "/named"\n')
    environ = {"USAGE_AGENT_CONFIG": str(named)}
    assert load(None, environ).config.spool.dir == "/named"
    other = tmp_path / "other.toml"
    other.write_text('[spool]\ndir = "/other"\n')
    assert load(str(other), environ).config.spool.dir == "/other"
    assert config_sources.config_path(None, {}) == (
        config_sources.DEFAULT_PATH if Path(config_sources.DEFAULT_PATH).exists() else None
    )
    with pytest.raises(ConfigError, match="cannot read the file"):
        load(None, {"USAGE_AGENT_CONFIG": str(tmp_path / "absent.toml")})


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("USAGE_AGENT_SPOOL_MAX_BYTES", "lots", "must be int"),
        ("USAGE_AGENT_UPSTREAM_GZIP", "maybe", "is not one of true"),
        ("USAGE_AGENT_SPOOL_FSYNC", "sometimes", "must be one of always"),
    ],
)
def test_a_bad_environment_value_names_the_variable(name: str, value: str, words: str):
    with pytest.raises(ConfigError, match=words) as caught:
        load(None, {"USAGE_AGENT_CONFIG": os.devnull, name: value})
    assert name in str(caught.value)


def test_variables_that_name_no_key_are_reported_not_refused():
    """Kubernetes injects USAGE_AGENT_SERVICE_HOST for a Service named usage-agent."""
    environ = {"USAGE_AGENT_CONFIG": os.devnull, "USAGE_AGENT_SERVICE_HOST": "10.0.0.1"}
    assert load(None, environ).ignored == ("USAGE_AGENT_SERVICE_HOST",)
    with pytest.raises(ConfigError, match="unknown key"):
        load(None, {"USAGE_AGENT_CONFIG": os.devnull}, flags=[("spool.dri", "/x")])


def test_secrets_are_masked_url_user_info_included_and_their_origin_shown():
    environ = {
        "USAGE_AGENT_CONFIG": os.devnull,
        "PAIGO_CLIENT_SECRET": SECRET,
        "USAGE_AGENT_UPSTREAM_URL": f"https://me:{SECRET}@usage.example.com/usage",
    }
    loaded = load(None, environ)
    shown = config_sources.effective(loaded)
    assert shown["upstream.client_secret"] == ("(set)", "environment PAIGO_CLIENT_SECRET")
    assert shown["upstream.url"][0] == "https://***@usage.example.com/usage"
    assert SECRET not in "\n".join(config_sources.describe(loaded))


def test_http_beyond_this_host_is_refused_unless_allowed():
    environ = {"USAGE_AGENT_CONFIG": os.devnull}
    flags = [("upstream.token_url", "http://auth.example.com/oauth/token")]
    with pytest.raises(ConfigError, match="clear text"):
        load(None, environ, flags)
    allowed = load(None, environ, [*flags, ("upstream.allow_insecure", "true")])
    assert allowed.config.upstream.token_url.startswith("http://auth")
    assert load(None, environ, [("upstream.url", "http://localhost:9/usage")])


def test_a_missing_client_secret_file_is_a_configuration_error(tmp_path: Path):
    flags = [("upstream.client_secret_file", str(tmp_path / "absent"))]
    with pytest.raises(ConfigError, match="does not exist"):
        load(None, {"USAGE_AGENT_CONFIG": os.devnull}, flags)


def usage_agent(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": os.environ["PATH"], **env},
    )


def test_check_config_as_a_process_shows_origins_as_text_and_json_and_never_the_secret(
    tmp_path: Path,
):
    path = tmp_path / "agent.toml"
    path.write_text(f'[upstream]\nclient_secret = "{SECRET}"\n')
    env = {"USAGE_AGENT_CONFIG": str(path), "USAGE_AGENT_SPOOL_DIR": "/env/spool"}
    text = usage_agent("check-config", "--set", "upstream.concurrency=7", env=env)
    assert text.returncode == 0, text.stderr
    assert (
        'dir = "/env/spool"' in text.stdout and "environment USAGE_AGENT_SPOOL_DIR" in text.stdout
    )
    assert "concurrency = 7" in text.stdout
    document = json.loads(usage_agent("check-config", "--json", env=env).stdout)
    assert document["origins"]["upstream.client_secret"] == f"file {path}"
    for result in (text, usage_agent("check-config", "--json", env=env)):
        assert SECRET not in result.stdout + result.stderr
    bad = usage_agent("check-config", "--set", "spool.fsync=never", env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_run_without_config_takes_everything_from_the_environment(tmp_path: Path):
    """No --config, no file: the spool, the listener and the credentials all come from the
    environment, and the stand-in gets the record with those credentials."""
    agent = AgentProcess(tmp_path)
    with fake_paigo_thread(client_secret=SECRET) as paigo:
        env = {
            "USAGE_AGENT_SPOOL_DIR": str(tmp_path / "spool"),
            "USAGE_AGENT_SPOOL_MIN_FREE_BYTES": "0",
            "USAGE_AGENT_INGEST_LISTEN": f"127.0.0.1:{agent.port}",
            "USAGE_AGENT_INGEST_UNIX_SOCKET": "",
            "USAGE_AGENT_UPSTREAM_URL": paigo.usage_url,
            "USAGE_AGENT_UPSTREAM_TOKEN_URL": paigo.token_url,
            "USAGE_AGENT_UPSTREAM_DIMENSIONS": "off",
            "PAIGO_CLIENT_ID": paigo.client_id,
            "PAIGO_CLIENT_SECRET": SECRET,
        }
        agent.start(env=env, with_config=False)
        try:
            assert agent.post(record(1))[0] == 202
            deadline = time.monotonic() + 20
            while not paigo.records:
                assert time.monotonic() < deadline, agent.log()
                time.sleep(0.02)
        finally:
            agent.kill()
        assert SECRET not in agent.log()


def test_the_log_is_json_lines_in_utc_with_the_version_bounds_and_recovered_records(
    tmp_path: Path,
):
    agent = AgentProcess(tmp_path).start()
    try:
        assert agent.post([record(n) for n in range(4)])[0] == 202
        agent.kill()
        agent.start()
    finally:
        agent.kill()
    events = [json.loads(line) for line in agent.log().splitlines()]
    assert all(e["time"].endswith("Z") and e["level"] and e["logger"] for e in events)
    starts = [e["message"] for e in events if "starting" in e["message"]]
    assert len(starts) == 2 and __version__ in starts[0] and "max_bytes" in starts[0]
    assert any(e["message"] == "recovered 4 records pending delivery" for e in events)


def test_the_dev_configuration_runs_from_a_checkout_without_root(tmp_path: Path):
    """config/agent.dev.toml: every path relative, the upstream the stand-in on loopback;
    an agent started with it in an empty directory comes up (on a free port)."""
    dev = Path(__file__).parents[1] / "config" / "agent.dev.toml"
    cfg = load(str(dev), {}).config
    assert not Path(cfg.spool.dir).is_absolute() and not Path(cfg.ingest.unix_socket).is_absolute()
    assert cfg.upstream.url.startswith("http://127.0.0.1:")
    agent = AgentProcess(tmp_path)
    env = {"USAGE_AGENT_CONFIG": str(dev), "USAGE_AGENT_INGEST_LISTEN": f"127.0.0.1:{agent.port}"}
    agent.start(wait=False, env=env, cwd=tmp_path, with_config=False)
    try:
        deadline = time.monotonic() + 20
        while not alive(agent):
            assert time.monotonic() < deadline, agent.log()
            time.sleep(0.05)
        assert (tmp_path / ".usage-agent" / "ingest.sock").exists()
    finally:
        agent.kill()


def alive(agent: AgentProcess) -> bool:
    try:
        return agent.request("GET", "/healthz")[0] == 200
    except OSError:
        return False
