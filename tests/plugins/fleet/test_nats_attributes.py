"""The fleet carries an op's attributes (contract §13.2): an edge daemon publishes it through
the nats sink, a central daemon takes it from the nats source, and the op arrives unchanged,
its token usage counted where it lands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from observer_core.testing import wait_for

EDGE = """
[observer]
cycle_secs = 60
state_dir = "edge-state"
[sources.http]
port = {port}
[sinks.bus]
plugin = "nats"
url = "URL"
timeout_secs = 5
[sinks.ops]
plugin = "jsonl"
path = "edge-ops.jsonl"
fsync = "never"
"""

CENTRAL = """
[observer]
cycle_secs = 60
state_dir = "central-state"
[sources.http]
port = {port}
[sources.bus]
plugin = "nats"
url = "URL"
durable = "central"
[sinks.ops]
plugin = "jsonl"
path = "central-ops.jsonl"
fsync = "never"
"""

ATTRIBUTES: dict[str, Any] = {
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    "gen_ai.usage.input_tokens": 1234,
    "gen_ai.usage.output_tokens": 56,
    "http_status": 200,
    "latency.share": 0.125,
    "big": 2**53,
    "client_left": False,
    "note": "naïve → “quoted” \\ \n end",
    "trace_id": "0af7651916cd43dd8448eb211c80319c",
}

OP: dict[str, Any] = {
    "timestamp": "2026-01-01T00:00:00.000Z",
    "endpoint": "/v1/chat/completions",
    "input_summary": "POST /v1/chat/completions",
    "success": True,
    "duration_ms": 812.5,
    "output_summary": "ok",
    "source": "mcp",
    "id": "with-attributes",
    "attributes": ATTRIBUTES,
}


def written(path: Path) -> list[dict[str, Any]]:
    """The ops in a jsonl sink's file (waits for the first)."""
    text = wait_for(lambda: path.exists() and path.read_text().strip(), what=f"ops in {path}")
    return [json.loads(line) for line in text.splitlines()]


def test_an_op_with_attributes_crosses_the_fleet_unchanged(observer_daemon, nats_server):
    central = observer_daemon.start(CENTRAL.replace("URL", nats_server.url), name="central.toml")
    edge = observer_daemon.start(EDGE.replace("URL", nats_server.url), name="edge.toml")
    edge.post_events([OP])
    [sent] = written(edge.directory / "edge-ops.jsonl")
    [arrived] = written(central.directory / "central-ops.jsonl")
    assert arrived == sent
    assert arrived["attributes"] == ATTRIBUTES
    assert {key: arrived[key] for key in OP} == OP
    assert arrived["attributes"]["big"] == 2**53  # an integer still, not a double
    labels = {"source": "mcp", "model": "gpt-4o-mini-2024-07-18"}
    for daemon in (edge, central):  # counted where it was accepted, and where it landed
        assert daemon.metric("observer_gen_ai_tokens_total", type="input", **labels) == 1234
        assert daemon.metric("observer_gen_ai_tokens_total", type="output", **labels) == 56
    assert edge.stop() == 0
    assert central.stop() == 0
