"""examples/fleet: its configs pass ``check``, and its README's three-process fleet runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from observer_plugins.fleet.testing import require_nats_py

from observer_core.testing import free_port, wait_for

EXAMPLE = Path(__file__).parents[2] / "examples" / "fleet"
CONFIGS = ["edge.toml", "writer.toml", "analyzer.toml"]


@pytest.mark.parametrize("name", CONFIGS)
def test_example_config_passes_check(observer_daemon, name):
    require_nats_py()
    result = observer_daemon.run("check", "--config", str(EXAMPLE / name))
    assert result.returncode == 0, result.stderr
    assert "plugin=nats" in result.stdout


def test_the_readme_fleet_runs(observer_daemon, nats_server):
    for name in CONFIGS:
        shutil.copy(EXAMPLE / name, observer_daemon.directory / name)
    ports = {"edge": free_port(), "writer": free_port(), "analyzer": free_port()}
    base = {"NATS_URL": nats_server.url, "OBSERVER_CYCLE": "1"}
    nodes = {
        role: observer_daemon.start(
            name=f"{role}.toml",
            port=ports[role],
            wait=False,
            env={
                **base,
                "OBSERVER_NODE": role,
                "OBSERVER_PORT": str(ports[role]),
                "OBSERVER_STATUS_PORT": str(ports[role]),
                "LH_LLM_TEAM_URL": "http://127.0.0.1:9",  # nothing there: calls fail, logged
                "LAKEHOUSE_URL": "http://127.0.0.1:9",
                "GATEWAY_URL": "http://127.0.0.1:9",
            },
        )
        for role in ports
    }
    for node in nodes.values():
        node.wait_ready(30)
    nodes["edge"].post_events(
        [{"endpoint": "/search", "success": True}, {"endpoint": "/search", "error": "timeout"}]
    )
    ops = observer_daemon.directory / "data" / "writer" / "ops.jsonl"
    wait_for(lambda: ops.exists() and len(ops.read_text().splitlines()) == 2, timeout=20)
    for role in ("writer", "analyzer"):
        health = httpx.get(f"{nodes[role].url}/health", timeout=5).json()
        assert health["checks"]["sources.bus"]["healthy"] is True
        wait_for(
            lambda role=role: httpx.get(f"{nodes[role].url}/stats", timeout=5).json()["total"] == 2,
            what=f"the {role} to have both ops",
        )
