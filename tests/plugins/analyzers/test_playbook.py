"""The playbook analyzer: exact entries, no repeats, restart safety, and speed."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from observer_plugins.analyzers.playbook import (
    PlaybookAnalyzer,
    PlaybookConfig,
    round_half_away,
)
from observer_plugins.sinks.gateway_log.entry import LogEntry

from observer_core import Finding, Op, Window
from observer_core.testing import make_context, wait_for

CONFIG = """
[observer]
cycle_secs = 0.2
state_dir = "state"
[sources.http]
port = {port}
[analyzers.playbook]
every = 1
[sinks.playbook]
plugin = "jsonl"
path = "playbook.jsonl"
accepts = ["playbook"]
"""


def success(endpoint: str, summary: str, duration: float, source: str = "mcp") -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "input_summary": summary,
        "success": True,
        "duration_ms": duration,
        "source": source,
    }


def entries(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_exact_entries_no_repeat_then_repeat_after_new_successes(observer_daemon):
    daemon = observer_daemon.start(CONFIG)
    out = daemon.directory / "playbook.jsonl"
    long_summary = "x" * 90
    daemon.post_events(
        [
            *(success("/search", f"q{i}", i) for i in range(1, 5)),  # mean 2.5 -> 3 (not 2)
            success("/search", "correction", 1000, source="overseer_correction"),  # excluded
            *(success("/sql", f"s{i}", 1) for i in range(2)),  # a group of 2: too small
            *(success("/long", f"{long_summary}{i}", 0.5) for i in range(3)),  # 0.5 -> 1 (not 0)
        ]
    )
    wait_for(lambda: len(entries(out)) == 2, what="two playbook entries")
    assert entries(out) == [
        {
            "operation": "consolidated: 4 successful /search calls",
            "approach": "common pattern: q2; q3; q4",
            "result": "avg_duration=3ms, 4 successes",
            "context": "endpoint=/search",
        },
        {
            "operation": "consolidated: 3 successful /long calls",
            "approach": "common pattern: "
            + f"{long_summary}0; {long_summary}1; {long_summary}2"[:200],
            "result": "avg_duration=1ms, 3 successes",
            "context": "endpoint=/long",
        },
    ]
    daemon.wait_cycles(4)
    assert len(entries(out)) == 2, "posted again without new successes"

    daemon.post_events([success("/search", "q5", 5)])
    wait_for(lambda: len(entries(out)) == 3, what="a new /search entry")
    daemon.wait_cycles(3)
    assert entries(out)[2:] == [
        {
            "operation": "consolidated: 5 successful /search calls",
            "approach": "common pattern: q3; q4; q5",
            "result": "avg_duration=3ms, 5 successes",
            "context": "endpoint=/search",
        }
    ]
    assert daemon.stop() == 0


def test_nothing_below_min_successes(observer_daemon):
    daemon = observer_daemon.start(CONFIG)
    out = daemon.directory / "playbook.jsonl"
    daemon.post_events([success("/a", f"a{i}", 10) for i in range(4)])
    daemon.wait_cycles(3)
    assert entries(out) == [], "4 successes are fewer than min_successes = 5"
    daemon.post_events([success("/b", "b", 20)])
    wait_for(lambda: entries(out), what="an entry once 5 successes are in the ring")
    daemon.wait_cycles(2)
    assert [entry["operation"] for entry in entries(out)] == ["consolidated: 4 successful /a calls"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.5, 1), (1.5, 2), (2.5, 3), (2.4999999, 2), (-2.5, -3), (7, 7), (0.49999999999999994, 0)],
)
def test_rounds_halves_away_from_zero(value: float, expected: int):
    assert round_half_away(value) == expected


# -- in-process: persistence across restarts, and speed -------------------------------


def _op(endpoint: str, second: int, duration: float = 10) -> Op:
    return Op(
        timestamp=f"2026-01-01T00:00:{second:02d}.000Z",
        endpoint=endpoint,
        input_summary=f"in{second}",
        success=True,
        duration_ms=duration,
        output_summary="ok",
        source="mcp",
    )


Spawned = list[Callable[[], Awaitable[None]]]


def _analyzer(
    directory: Path, config: PlaybookConfig | None = None
) -> tuple[PlaybookAnalyzer, Spawned]:
    spawned: Spawned = []

    def spawn(fn: Callable[..., Awaitable[None]], *args: Any, timeout: float | None = None) -> None:
        spawned.append(lambda: fn(*args))

    ctx = dataclasses.replace(make_context(directory, "analyzers.playbook"), spawn=spawn)
    return PlaybookAnalyzer(config or PlaybookConfig(min_successes=1, min_group=1), ctx), spawned


async def _run(analyzer: PlaybookAnalyzer, ops: list[Op], spawned: Spawned) -> list[Finding]:
    findings = list(await analyzer.analyze(Window(ops=ops, first_seq=0, cycle=1)))
    for work in spawned:
        await work()
    spawned.clear()
    return findings


@pytest.mark.anyio
async def test_restart_does_not_repost_replayed_ops(tmp_path: Path):
    ops = [_op("/a", 1), _op("/a", 2)]
    first, spawned = _analyzer(tmp_path)
    await first.open()
    assert len(await _run(first, ops, spawned)) == 1

    again, spawned = _analyzer(tmp_path)  # a restarted daemon: new sequence numbers
    await again.open()
    assert await _run(again, ops, spawned) == [], "replayed ops were posted again"
    findings = await _run(again, [*ops, _op("/a", 3)], spawned)
    assert [finding.data for finding in findings] == [
        LogEntry(
            operation="consolidated: 3 successful /a calls",
            approach="common pattern: in1; in2; in3",
            result="avg_duration=10ms, 3 successes",
            context="endpoint=/a",
        )
    ]


@pytest.mark.anyio
async def test_full_ring_takes_well_under_5_ms(tmp_path: Path):
    ring = [_op(f"/endpoint/{i % 50}", i % 60, duration=i) for i in range(2000)]
    window = Window(ops=ring, first_seq=10_000, cycle=5)
    emitting: list[float] = []
    quiet: list[float] = []
    for _ in range(5):
        analyzer, _spawned = _analyzer(tmp_path, PlaybookConfig())
        started = time.perf_counter()
        assert len(await analyzer.analyze(window)) == 50
        emitting.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert await analyzer.analyze(window) == []
        quiet.append(time.perf_counter() - started)
    assert min(emitting) < 0.005, f"emitting run took {min(emitting) * 1000:.2f} ms"
    assert min(quiet) < 0.005, f"quiet run took {min(quiet) * 1000:.2f} ms"
