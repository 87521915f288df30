"""The status source: /health, /stats and /metrics for an observer that takes no events
over HTTP (a fleet node), on the address its config names; nothing else."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import httpx
import msgspec
from observer_plugins.sources.status import StatusConfig

SAMPLE = Path(__file__).parents[3] / "plugins" / "sources" / "status" / "sample.toml"

NODE = """
[observer]
cycle_secs = 0.2
[sources.status]
port = {port}
TOKEN
[sources.tail]
plugin = "jsonl_tail"
path = "in.jsonl"
[sinks.ops]
plugin = "jsonl"
path = "ops.jsonl"
"""

OP = (
    '{"timestamp": "2026-01-01T00:00:00.000Z", "endpoint": "/e", "input_summary": "i", '
    '"success": false, "duration_ms": 1, "output_summary": "o", "source": "scenario"}\n'
)


def test_serves_health_stats_and_metrics_of_the_daemon(observer_daemon):
    (observer_daemon.directory / "in.jsonl").write_text(OP * 3)
    node = observer_daemon.start(NODE.replace("TOKEN", ""))
    node.wait_cycles(2)
    health = httpx.get(f"{node.url}/health", timeout=5).json()
    assert health["status"] == "ok"
    assert health["ops_in_ring"] == 3
    stats = httpx.get(f"{node.url}/stats", timeout=5).json()
    assert (stats["total"], stats["failures"]) == (3, 3)
    assert len(stats["recent_scenario_ops"]) == 3
    assert node.metric("observer_ops_received_total", source="scenario", outcome="failure") == 3
    assert httpx.head(f"{node.url}/stats", timeout=5).status_code == 200


def test_takes_no_events_and_keeps_the_http_rules(observer_daemon):
    node = observer_daemon.start(NODE.replace("TOKEN", 'token = "s3cret"'))
    for method, path in (("POST", "/event"), ("POST", "/events"), ("GET", "/nope")):
        assert httpx.request(method, f"{node.url}{path}", timeout=5).status_code == 404
    reply = httpx.post(f"{node.url}/stats", timeout=5)
    assert (reply.status_code, reply.headers["allow"]) == (405, "GET")
    assert httpx.get(f"{node.url}/health", timeout=5).status_code == 200  # open
    assert httpx.get(f"{node.url}/stats", timeout=5).status_code == 401
    authorized = httpx.get(
        f"{node.url}/metrics", headers={"Authorization": "Bearer s3cret"}, timeout=5
    )
    assert authorized.status_code == 200
    assert 'observer_requests_rejected_total{status="404"} 3' in authorized.text


def test_token_list_accepts_each_listed_token(observer_daemon):
    node = observer_daemon.start(NODE.replace("TOKEN", 'token = ["s3cret-a", "s3cret-b"]'))
    for token, status in (("s3cret-a", 200), ("s3cret-b", 200), ("s3cret-c", 401)):
        reply = httpx.get(
            f"{node.url}/stats", headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
        assert reply.status_code == status, token
    assert httpx.get(f"{node.url}/stats", timeout=5).status_code == 401


def test_a_taken_port_stops_the_daemon(observer_daemon):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = observer_daemon.start(NODE.replace("TOKEN", ""), port=port, wait=False)
        assert node.process.wait(15) == 1
    assert "[sources.status] cannot start" in node.logs()


def test_sample_decodes_and_passes_check(observer_daemon):
    table = tomllib.loads(SAMPLE.read_text())["sources"]["status"]
    assert table.pop("plugin", "status") == "status"
    assert msgspec.convert(table, StatusConfig).port == 3801
    result = observer_daemon.run("check", "--config", str(SAMPLE))
    assert result.returncode == 0, result.stderr
    assert "plugin=status" in result.stdout
