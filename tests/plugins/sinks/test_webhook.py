"""The webhook sink in a real daemon, fed by real alerts, against a stub receiver.

A ``jsonl`` sink that accepts the same alerts is the oracle: what the receiver
gets must be exactly what the daemon emitted, once each, in order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from observer_core.testing import (
    Daemon,
    RecordedRequest,
    StubReply,
    StubServer,
    free_port,
    wait_for,
)

PATH = "/services/T000/B000/PATHSECRET"
QUERY = "?sig=QUERYSECRET"
HEADER = "HEADERSECRET"
INSTANCE = "sinks.hook"
ENDPOINTS = [f"/e{n}" for n in range(5)]


def config(url: str, extra: str = "") -> str:
    rules = "".join(
        f"""
[[analyzers.alerts.rules]]
name = "{endpoint} failing"
when = "failure_rate"
above = 0.5
window_secs = 1
endpoint = "{endpoint}"
repeat_secs = 0
"""
        for endpoint in ENDPOINTS
    )
    return f"""
[observer]
cycle_secs = 1
state_dir = "state"
[sources.http]
port = {{port}}
[analyzers.alerts]
{rules}
[sinks.log]
plugin = "jsonl"
path = "alerts.jsonl"
accepts = ["alert"]
[sinks.hook]
plugin = "webhook"
url = "{url}{PATH}{QUERY}"
headers = {{ Authorization = "Bearer ${{HOOK_TOKEN}}" }}
{extra}
"""


ENV = {"HOOK_TOKEN": HEADER}


def emitted(daemon: Daemon) -> list[dict[str, Any]]:
    path = daemon.directory / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def delivered(hook: StubServer) -> list[dict[str, Any]]:
    return [request.json() for request in hook.received(PATH)]


def fire(daemon: Daemon, endpoints: list[str]) -> None:
    """Make each endpoint's rule fire, one after the other (one alert per cycle or so)."""
    for endpoint in endpoints:
        target = len(emitted(daemon)) + 1
        daemon.post_events([{"endpoint": endpoint, "success": False, "error": "boom"}])
        wait_for(lambda: len(emitted(daemon)) >= target, timeout=10, what=f"{endpoint} firing")  # noqa: B023


def depth(daemon: Daemon) -> float | None:
    return daemon.metric("observer_sink_queue_depth", instance=INSTANCE)


def outcome(daemon: Daemon, name: str) -> float:
    value = daemon.metric("observer_webhook_deliveries_total", instance=INSTANCE, outcome=name)
    return value or 0.0


def test_receiver_down_then_back_gets_every_alert_once_in_order(observer_daemon, stub_server):
    port = free_port()
    daemon = observer_daemon.start(config(f"http://127.0.0.1:{port}"), env=ENV)
    fire(daemon, ENDPOINTS[:3])
    wait_for(lambda: depth(daemon) == 3, what="three queued")
    wait_for(lambda: outcome(daemon, "failed_attempt") >= 2, what="retries while it is down")
    fire(daemon, ENDPOINTS[3:])

    hook = stub_server(port=port)
    wait_for(lambda: len(delivered(hook)) == 5, timeout=40, what="delivery once it is back")
    daemon.wait_cycles(2)
    sent = emitted(daemon)
    assert [a["rule"] for a in sent] == [f"{e} failing" for e in ENDPOINTS]
    assert delivered(hook) == [{"kind": "alert", "record": alert} for alert in sent]
    assert {request.headers["authorization"] for request in hook.requests} == {f"Bearer {HEADER}"}
    assert {request.headers["content-type"] for request in hook.requests} == {"application/json"}
    assert outcome(daemon, "delivered") == 5
    assert depth(daemon) == 0
    assert f"webhook http://127.0.0.1:{port}/******** unreachable" in daemon.logs()
    assert "PATHSECRET" not in daemon.logs() and "QUERYSECRET" not in daemon.logs()


def test_a_kill_9_in_the_middle_loses_nothing(observer_daemon, stub_server):
    port = free_port()
    text = config(f"http://127.0.0.1:{port}")
    daemon = observer_daemon.start(text, env=ENV)
    fire(daemon, ENDPOINTS[:3])
    wait_for(lambda: depth(daemon) == 3, what="three queued")
    daemon.kill()

    daemon = observer_daemon.start(text, env=ENV, port=daemon.port)
    assert depth(daemon) == 3, "the spool is replayed"
    fire(daemon, ENDPOINTS[3:])
    hook = stub_server(port=port)
    wait_for(lambda: len(delivered(hook)) == 5, timeout=40, what="every alert")
    daemon.wait_cycles(2)
    sent = emitted(daemon)
    assert len(sent) == 5, "the restart fired nothing again"
    assert delivered(hook) == [{"kind": "alert", "record": alert} for alert in sent]


def test_slack_format_is_one_escaped_line(observer_daemon, stub_server):
    hook = stub_server()
    daemon = observer_daemon.start(config(hook.url, 'format = "slack"'), env=ENV)
    daemon.post_events(
        [{"endpoint": "/e0", "success": False, "error": "bad <!channel> & line\nbreak"}]
    )
    wait_for(lambda: delivered(hook), timeout=15, what="the slack message")
    [body] = delivered(hook)
    assert list(body) == ["text"]
    text = body["text"]
    assert text.startswith("[alert] FIRING /e0 failing: failure_rate = 1 (threshold 0.5, window 1s")
    assert "1 evaluation)" in text
    assert "bad &lt;!channel&gt; &amp; line break" in text
    assert "\n" not in text


def test_secrets_are_never_shown(observer_daemon, stub_server):
    hook = stub_server()
    hook.replies[PATH] = StubReply(status=500, body={"error": "no"})
    daemon = observer_daemon.start(config(hook.url, "max_attempts = 1"), env=ENV)
    fire(daemon, ENDPOINTS[:1])
    wait_for(lambda: outcome(daemon, "dead_lettered") == 1, what="a dead letter")
    hook.replies[PATH] = lambda request: StubReply(status=400, body={"error": "bad"})
    fire(daemon, ENDPOINTS[1:2])
    wait_for(lambda: outcome(daemon, "rejected") == 1, what="a rejection")
    hook.replies[PATH] = StubReply(disconnect=True)
    fire(daemon, ENDPOINTS[2:3])
    wait_for(lambda: outcome(daemon, "dead_lettered") == 2, what="a dropped connection")

    stats = httpx.get(f"{daemon.url}/stats", timeout=10).text
    health = httpx.get(f"{daemon.url}/health", timeout=10).text
    metrics = httpx.get(f"{daemon.url}/metrics", timeout=10).text
    assert f"{hook.url.split('//')[1]}/********" in stats, "the host is shown, the path masked"
    dead = daemon.directory / "state" / INSTANCE / "dead_letter.jsonl"
    assert dead.read_text().count("\n") == 2
    assert daemon.stop() == 0
    assert "webhook message failed 1 times" in daemon.logs()
    assert "refused a webhook message (HTTP 400" in daemon.logs()
    for text in (health, stats, metrics, daemon.logs(), daemon.stdout(), dead.read_text()):
        for secret in ("PATHSECRET", "QUERYSECRET", HEADER, "T000"):
            assert secret not in text


def test_health_and_metrics_do_not_show_the_url(observer_daemon, stub_server):
    hook = stub_server()
    daemon = observer_daemon.start(config(hook.url), env=ENV)
    fire(daemon, ENDPOINTS[:1])
    wait_for(lambda: delivered(hook), what="a delivery")
    seen: list[RecordedRequest] = hook.requests
    assert seen[0].path == PATH + QUERY
    for path in ("/health", "/stats", "/metrics"):
        text = httpx.get(f"{daemon.url}{path}", timeout=10).text
        for secret in ("PATHSECRET", "QUERYSECRET", HEADER):
            assert secret not in text, path


def test_bad_config_is_named_without_the_secret(observer_daemon, tmp_path: Path):
    path = observer_daemon.write_config(
        '[sinks.w]\nplugin = "webhook"\nurl = "ftp://host/PATHSECRET"\n'
    )
    result = observer_daemon.run("check", "--config", str(path))
    assert result.returncode == 2
    assert "[sinks.w] url: expected an http:// or https:// URL" in result.stderr
    assert "PATHSECRET" not in result.stderr
    path = observer_daemon.write_config(
        '[sinks.w]\nplugin = "webhook"\nurl = "https://h/x"\nheaders = { "X Bad" = "v" }\n'
    )
    result = observer_daemon.run("check", "--config", str(path))
    assert result.returncode == 2 and "headers: 'X Bad' is not a valid header name" in result.stderr


def test_check_resolved_masks_the_url_path_and_the_headers(observer_daemon):
    path = observer_daemon.write_config(config("https://hooks.example.com").replace("{port}", "0"))
    result = observer_daemon.run("check", "--resolved", "--config", str(path), env=ENV)
    assert result.returncode == 0, result.stderr
    assert 'url = "https://hooks.example.com/********"' in result.stdout
    for secret in ("PATHSECRET", "QUERYSECRET", HEADER):
        assert secret not in result.stdout + result.stderr
