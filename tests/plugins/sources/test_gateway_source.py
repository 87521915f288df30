"""The gateway source as the daemon runs it: config, start-up, the health check."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from gateway_upstream import Upstream, daemon_config
from observer_plugins.sources.gateway import GatewayConfig

from observer_core.testing import Daemon, DaemonFactory, free_port, wait_for

SAMPLE = Path(__file__).parents[3] / "plugins" / "sources" / "gateway" / "sample.toml"


def config(url: str, extra: str = "") -> str:
    return daemon_config(f'[sources.gateway]\nurl = "{url}"\n{extra}')


def gateway_check(daemon: Daemon) -> dict[str, Any] | None:
    check: dict[str, Any] | None = httpx.get(f"{daemon.url}/health").json()["checks"].get("gateway")
    return check


def test_sample_decodes_against_the_config() -> None:
    table = tomllib.loads(SAMPLE.read_text())["sources"]["gateway"]
    sample = msgspec.convert(table, GatewayConfig)
    assert sample.listen == "127.0.0.1:3701"
    assert msgspec.structs.asdict(GatewayConfig()) == {
        **msgspec.structs.asdict(sample),
        "listen": None,
    }


def test_defaults_are_the_contracts() -> None:
    assert msgspec.structs.asdict(GatewayConfig()) == {
        "url": "http://localhost:3700",
        "listen": None,
        "health_check": True,
        "timeout_secs": 300,
        "exclude_paths": ["/health"],
        "listen_token": None,
        "forwarded_headers": False,
        # contract §11.2, the proxy's column
        "max_url_bytes": 8192,
        "max_header_bytes": 32768,
        "max_headers": 100,
        "max_body_bytes": 64 << 20,
        "header_timeout_secs": 10,
        "body_timeout_secs": 300,
        "idle_timeout_secs": 60,
        "send_timeout_secs": 30,  # slow readers: not the contract's, ours (docs/security.md)
        "max_connections": 1024,
        "max_inflight_bytes": 256 << 20,
        "allowed_hosts": [],  # contract §11.4
    }


def test_empty_listen_means_no_proxy() -> None:
    assert msgspec.convert({"listen": ""}, GatewayConfig).listen is None
    assert msgspec.convert({"listen": "[::1]:3701"}, GatewayConfig).listen == "[::1]:3701"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('listen = "3701"', 'listen: expected "host:port"'),
        ('listen = "127.0.0.1:99999"', 'listen: expected "host:port"'),
        ("timeout_secs = 0", "timeout_secs: Expected `float` > 0.0"),
        ('exclude_paths = ["health"]', "exclude_paths: a path starts with '/'"),
        ("retries = 3", "retries: unknown key"),
    ],
)
def test_bad_config_is_refused(observer_daemon: DaemonFactory, line: str, message: str) -> None:
    observer_daemon.write_config(config("http://127.0.0.1:1", line).replace("{port}", "1"))
    result = observer_daemon.run("check", "--config", "observer.toml")
    assert result.returncode == 2
    assert "[sources.gateway]" in result.stderr and message in result.stderr


@pytest.mark.parametrize("value", ['"pr0xy-s3cret"', '["pr0xy-s3cret", "pr0xy-n3xt"]'])
def test_listen_token_is_masked_in_check_resolved(
    observer_daemon: DaemonFactory, value: str
) -> None:
    table = f'listen = "127.0.0.1:{free_port()}"\nlisten_token = {value}'
    observer_daemon.write_config(config("http://127.0.0.1:1", table).replace("{port}", "1"))
    result = observer_daemon.run("check", "--resolved", "--config", "observer.toml")
    assert result.returncode == 0, result.stderr
    shown = result.stdout.split("listen_token = ", 1)[1].split("\n[", 1)[0]
    assert shown.startswith(('"********"', "[")) and shown.count("********") == value.count(",") + 1
    assert "pr0xy" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('""', "listen_token: Expected `str` of length >= 1"),
        ("[]", "listen_token: Expected `array` of length >= 1"),
        ('["a", ""]', "listen_token[1]: Expected `str` of length >= 1"),
    ],
)
def test_empty_listen_token_is_refused(
    observer_daemon: DaemonFactory, value: str, message: str
) -> None:
    observer_daemon.write_config(
        config("http://127.0.0.1:1", f"listen_token = {value}").replace("{port}", "1")
    )
    result = observer_daemon.run("check", "--config", "observer.toml")
    assert result.returncode == 2
    assert f"[sources.gateway] {message}" in result.stderr


def test_bad_url_is_refused(observer_daemon: DaemonFactory) -> None:
    observer_daemon.write_config(config("ftp://gateway").replace("{port}", "1"))
    result = observer_daemon.run("check", "--config", "observer.toml")
    assert result.returncode == 2
    assert "url: expected an http:// or https:// URL, got 'ftp://gateway'" in result.stderr


def test_taken_listen_port_stops_the_daemon(observer_daemon: DaemonFactory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = observer_daemon.start(
            config("http://127.0.0.1:1", f'listen = "127.0.0.1:{port}"'), wait=False
        )
        assert daemon.process.wait(15) == 1
    assert "[sources.gateway] cannot start" in daemon.logs()


def test_gateway_down_at_start_then_up(observer_daemon: DaemonFactory) -> None:
    port = free_port()
    daemon = observer_daemon.start(config(f"http://127.0.0.1:{port}"))
    down = wait_for(lambda: gateway_check(daemon), what="the gateway check")
    assert down["healthy"] is False
    assert "ConnectError" in down["error"]
    assert httpx.get(f"{daemon.url}/health").json()["status"] == "ok"  # the daemon keeps running
    upstream = Upstream(port)
    try:
        up = wait_for(lambda: (check := gateway_check(daemon)) and check["healthy"] and check)
        assert up["since"] > down["since"]
        assert upstream.received("/health")
        stats = httpx.get(f"{daemon.url}/stats").json()["instances"]["sources.gateway"]
        assert stats["checks"]["gateway"]["healthy"] is True
    finally:
        upstream.close()
    assert daemon.stop() == 0


def test_unhealthy_answer_is_logged_once_and_retried(
    observer_daemon: DaemonFactory,
) -> None:
    upstream = Upstream()
    status = {"code": 503}
    upstream.routes["/health"] = lambda exchange, seen: exchange.send_json(status["code"], {})
    try:
        daemon = observer_daemon.start(config(upstream.url))
        wait_for(lambda: len(upstream.received("/health")) >= 2, what="a second probe")
        check = gateway_check(daemon)
        assert check is not None and check["healthy"] is False
        assert check["error"] == "HTTP 503"
        assert daemon.logs().count("gateway unhealthy") == 1
        status["code"] = 200
        wait_for(lambda: (check := gateway_check(daemon)) and check["healthy"], what="healthy")
        assert "gateway healthy again" in daemon.logs()
    finally:
        upstream.close()


def test_no_health_check_when_disabled(observer_daemon: DaemonFactory) -> None:
    upstream = Upstream()
    try:
        daemon = observer_daemon.start(config(upstream.url, "health_check = false"))
        assert "gateway" not in httpx.get(f"{daemon.url}/health").json()["checks"]
        assert upstream.received("/health") == []
    finally:
        upstream.close()
