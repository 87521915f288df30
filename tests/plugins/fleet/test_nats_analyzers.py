"""Analyzers on several observers that see the same ops: with a ``fleet`` table each
sig_hash is escalated once, each failure diagnosed once and each playbook group posted
once, fleet-wide. Two engines in one process stand for two observers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest

from observer_core import Op
from observer_core.testing import EngineFactory, RunningEngine, StubReply

ANALYZERS = """
[analyzers.escalation]
url = "STUB"
threshold = 3
fleet = { url = "NATS" }
[analyzers.diagnosis]
url = "STUB"
fleet = { url = "NATS" }
[analyzers.playbook]
every = 1
min_successes = 3
min_group = 3
fleet = { url = "NATS" }
[sinks.findings]
plugin = "collect"
accepts = ["escalation", "diagnosis", "playbook"]
"""


def failure(n: int, sig: str = "sig-a") -> Op:
    return Op(
        timestamp=f"2026-01-01T00:00:{n:02d}.000Z",
        endpoint="/search",
        input_summary=f"q{n}",
        success=False,
        duration_ms=5,
        output_summary="",
        error="boom",
        source="mcp",
        sig_hash=sig,
    )


def success(n: int) -> Op:
    return Op(
        timestamp=f"2026-01-01T00:01:{n:02d}.000Z",
        endpoint="/fill",
        input_summary=f"fill {n}",
        success=True,
        duration_ms=10,
        output_summary="filled",
        source="scenario",
    )


@asynccontextmanager
async def observers(tmp_path, text: str, count: int = 2) -> AsyncIterator[list[RunningEngine]]:
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                EngineFactory(tmp_path / f"observer{n}").start(text, step_timeout=10)
            )
            for n in range(count)
        ]


async def everywhere(engines: list[RunningEngine], ops: list[Op] | None = None) -> None:
    """Hand ``ops`` to every observer, run a cycle on all at once, wait for their work."""
    async with anyio.create_task_group() as group:
        for engine in engines:
            if ops:
                await engine.emit(ops)
            group.start_soon(engine.run_cycle)
    for engine in engines:
        await engine.settle(timeout=15)


def findings(engines: list[RunningEngine], kind: str) -> list[object]:
    return [finding for engine in engines for finding in engine.sink("findings").findings(kind)]


@pytest.fixture
def services(stub_server):
    stub = stub_server()
    stub.replies["/api/run"] = StubReply(body={"run_id": "r1", "facts": ["f"]})
    stub.replies["/ai/generate"] = StubReply(body={"text": "the index is missing"})
    return stub


@pytest.mark.anyio
async def test_each_sig_hash_is_escalated_once_fleet_wide(tmp_path, nats_server, services):
    text = ANALYZERS.replace("STUB", services.url).replace("NATS", nats_server.url)
    cluster = [failure(n) for n in range(3)] + [failure(n, "sig-b") for n in range(3, 6)]
    async with observers(tmp_path, text) as engines:
        await everywhere(engines, cluster)
        await everywhere(engines)  # the loser of a race learns it is done
        await everywhere(engines, [failure(9)])  # the cluster grows: still escalated once
    posted = [request.json()["input"].split(" ")[0] for request in services.received("/api/run")]
    assert sorted(posted) == ["sig_hash=sig-a", "sig_hash=sig-b"]
    rows = findings(engines, "escalation")
    assert sorted(row.data.sig_hash for row in rows) == ["sig-a", "sig-b"]

    async with observers(tmp_path / "new", text, count=1) as [newcomer]:  # empty state_dir
        await everywhere([newcomer], cluster)
        assert newcomer.component("escalation").ctx.status["escalated"] == 2
    assert len(services.received("/api/run")) == 2


@pytest.mark.anyio
async def test_each_failure_is_diagnosed_once_fleet_wide(tmp_path, nats_server, services):
    text = ANALYZERS.replace("STUB", services.url).replace("NATS", nats_server.url)
    async with observers(tmp_path, text, count=3) as engines:
        await everywhere(engines, [failure(n, f"s{n}") for n in range(2)])
        assert len(services.received("/ai/generate")) == 1
        await everywhere(engines)
        assert len(services.received("/ai/generate")) == 1
        await everywhere(engines, [failure(7, "s7")])
        assert len(services.received("/ai/generate")) == 2
        assert len(findings(engines, "diagnosis")) == 2


@pytest.mark.anyio
async def test_a_failed_diagnosis_leaves_its_failures_for_a_later_try(
    tmp_path, nats_server, services
):
    text = ANALYZERS.replace("STUB", services.url).replace("NATS", nats_server.url)
    services.replies["/ai/generate"] = StubReply(status=500)
    async with observers(tmp_path, text) as engines:
        await everywhere(engines, [failure(1, "s1")])
        assert len(services.received("/ai/generate")) == 1
        services.replies["/ai/generate"] = StubReply(body={"text": "retry worked"})
        await everywhere(engines)
        assert len(services.received("/ai/generate")) == 2
        assert [f.data.result for f in findings(engines, "diagnosis")] == ["retry worked"]


@pytest.mark.anyio
async def test_each_playbook_group_is_posted_by_one_observer(tmp_path, nats_server, services):
    text = ANALYZERS.replace("STUB", services.url).replace("NATS", nats_server.url)
    async with observers(tmp_path, text, count=3) as engines:
        await everywhere(engines, [success(n) for n in range(3)])
        await everywhere(engines)
        assert len(findings(engines, "playbook")) == 1
        await everywhere(engines, [success(5)])
        entries = findings(engines, "playbook")
        assert sorted(entry.data.operation for entry in entries) == [
            "consolidated: 3 successful /fill calls",
            "consolidated: 4 successful /fill calls",
        ]


def test_check_accepts_a_fleet_table_and_names_a_wrong_key(observer_daemon):
    path = observer_daemon.write_config(
        '[analyzers.escalation]\nfleet = { url = "nats://127.0.0.1:4222", bucket = "b" }\n'
        '[sinks.rows]\nplugin = "console"\n'
    )
    assert observer_daemon.run("check", "--config", str(path)).returncode == 0
    wrong = observer_daemon.write_config(
        '[analyzers.playbook]\nfleet = { url = "nats://x:1", bukket = "b" }\n', name="wrong.toml"
    )
    result = observer_daemon.run("check", "--config", str(wrong))
    assert result.returncode == 2
    assert "[analyzers.playbook] fleet.bukket: unknown key" in result.stderr
