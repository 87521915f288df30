"""Listeners exposed beyond the host (contract §11.1): a warning, or with
``require_token = true`` a config error.

The daemon and ``observer-core check`` run for real; the address rules are checked
in-process on configs loaded from real files.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import msgspec
import pytest

from observer_core.components import ComponentConfig
from observer_core.config import ConfigError, InstanceConfig, exposed_listener, load_config
from observer_core.plugins import load_registry
from observer_core.testing import free_port


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def warnings_of(tmp_path: Path, registry, text: str) -> list[str]:
    path = tmp_path / "observer.toml"
    path.write_text(textwrap.dedent(text))
    return load_config(path, registry, {}).warnings(registry)


def test_the_daemon_warns_at_start_with_one_line_naming_instance_and_address(observer_daemon):
    daemon = observer_daemon.start('[sources.http]\nhost = "0.0.0.0"\nport = {port}\n')
    lines = [line for line in daemon.logs().splitlines() if "without a token" in line]
    assert len(lines) == 1
    assert "WARNING" in lines[0]
    assert "[sources.http] listens on 0.0.0.0 without a token" in lines[0]
    assert daemon.stop() == 0


def test_check_warns_on_stderr_and_exits_0(observer_daemon):
    port = free_port()
    observer_daemon.write_config(
        f'[sources.http]\nhost = "0.0.0.0"\nport = {port}\n'
        f'[sources.gateway]\nlisten = "0.0.0.0:{port + 1}"\n'
    )
    result = observer_daemon.run("check", "--config", "observer.toml")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: observer.toml: [sources.http] listens on 0.0.0.0 without a token: anyone "
        "who can reach it can use it (set token, or bind a loopback address)",
        f"warning: observer.toml: [sources.gateway] listens on 0.0.0.0:{port + 1} without a "
        "listen_token: anyone who can reach it can use it (set listen_token, or bind a "
        "loopback address)",
    ]


@pytest.mark.parametrize("command", ["check", "run"])
def test_require_token_makes_it_a_config_error(observer_daemon, command):
    observer_daemon.write_config(
        '[observer]\nrequire_token = true\n[sources.status]\nhost = "192.0.2.1"\n'
    )
    result = observer_daemon.run(command, "--config", "observer.toml")
    assert result.returncode == 2
    assert result.stderr == (
        "observer-core: config error: observer.toml: [sources.status] host: listens on "
        "192.0.2.1 without a token, and [observer] require_token = true (set token, or bind "
        "a loopback address)\n"
    )


def test_require_token_accepts_a_token_or_loopback(tmp_path, registry):
    text = """
        [observer]
        require_token = true
        [sources.http]
        host = "0.0.0.0"
        token = "s3cret"
        [sources.status]
        host = "::1"
        [sources.gateway]
        listen = "localhost:3701"
        """
    assert warnings_of(tmp_path, registry, text) == []


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.8.9.10", "localhost", "LOCALHOST", "::1", "[::1]"]
)
def test_loopback_binds_do_not_warn(tmp_path, registry, host):
    assert warnings_of(tmp_path, registry, f'[sources.http]\nhost = "{host}"\n') == []


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3", "example.internal"])
def test_other_binds_without_token_warn(tmp_path, registry, host):
    [warning] = warnings_of(tmp_path, registry, f'[sources.http]\nhost = "{host}"\n')
    assert f"[sources.http] listens on {host} without a token" in warning


def test_a_disabled_listener_or_a_gateway_without_proxy_does_not_warn(tmp_path, registry):
    text = """
        [sources.http]
        host = "0.0.0.0"
        enabled = false
        [sources.gateway]
        listen = ""
        """
    assert warnings_of(tmp_path, registry, text) == []


class _ListConfig(ComponentConfig, kw_only=True):
    """A listener whose token may be a list (as the http source's will)."""

    listen_keys = ("bind", "tokens")
    bind: str = "0.0.0.0:9"
    tokens: list[str] = msgspec.field(default_factory=list)


@pytest.mark.parametrize(("tokens", "exposed"), [([], True), ([""], True), (["a"], False)])
def test_any_non_empty_token_counts_including_a_list(tokens, exposed):
    item = InstanceConfig("sources", "x", None, True, _ListConfig(tokens=tokens))  # type: ignore[arg-type]
    assert (exposed_listener(item) == ("bind", "0.0.0.0:9", "tokens")) is exposed


def test_require_token_must_be_a_boolean(tmp_path, registry):
    path = tmp_path / "observer.toml"
    path.write_text('[observer]\nrequire_token = "yes"\n')
    with pytest.raises(ConfigError, match=r"\[observer\] require_token: Expected `bool`"):
        load_config(path, registry, {})
