"""The soak: a steady stream for ``OBSERVER_SOAK_SECS`` (CI: 600) with every analyzer on.

The daemon runs a pipeline like the shipped one (http source, jsonl sink with
``fsync = "batch"``, the gateway_log sink, diagnosis, escalation and playbook against
stub model, code-review and gateway servers, a cycle every second) while
``bench/constload.py`` posts ``OBSERVER_SOAK_RATE`` events a second (default 2000;
2% failures, so the analyzers have work). What must hold at the end: every
acknowledged event written, none refused, no error logged, resident memory flat
(end against the start after warm-up) and the event loop never held up for long
(``observer_event_loop_lag_seconds{stat="max"}``). Skipped unless the variable is set.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from reliability_kit import errors_logged, line_count, record, rss_kb

from observer_core.testing import Daemon, DaemonFactory, StubReply, daemon_config

SOAK_SECS = float(os.environ.get("OBSERVER_SOAK_SECS") or "0")
RATE = float(os.environ.get("OBSERVER_SOAK_RATE") or "2000")
FAILURE_SHARE = 0.02
WARMUP_SHARE = 0.1
"""The "start" memory is taken this far into the run (the ring and buffers fill first)."""
RSS_GROWTH_MAX = 0.25
LOOP_LAG_MAX_SECS = 0.5

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SOAK_SECS, reason="set OBSERVER_SOAK_SECS to run the soak (CI: 600)"),
]

CONFIG = (
    daemon_config(cycle_secs=1, state_dir="state", fsync="batch")
    + """\
[sinks.gateway_log]
url = "GATEWAY"
[sinks.escalations]
plugin = "jsonl"
path = "escalations.jsonl"
accepts = ["escalation"]
[analyzers.escalation]
url = "REVIEW"
[analyzers.diagnosis]
url = "LLM"
timeout_secs = 10
[analyzers.playbook]
every = 5
"""
)
SUCCESS = {"endpoint": "/search", "input_summary": "q", "success": True, "duration_ms": 12}
FAILURE = {"endpoint": "/fill", "success": False, "error": "timeout", "sig_hash": "soak"}


def _constload() -> Any:
    sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
    try:
        import constload  # the benchmarks' constant-rate generator (wrk2's way)
    finally:
        sys.path.pop(0)
    return constload


class Memory(threading.Thread):
    """Samples the daemon's resident memory once a second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self._pid = pid
        self._done = threading.Event()
        self.samples: list[tuple[float, int]] = []

    def run(self) -> None:
        started = time.monotonic()
        while not self._done.wait(1.0):
            self.samples.append((time.monotonic() - started, rss_kb(self._pid)))

    def stop(self) -> tuple[int, int, int]:
        """(at the end of warm-up, at the end, the most), in KiB."""
        self._done.set()
        self.join(10)
        start = next(kb for at, kb in self.samples if at >= SOAK_SECS * WARMUP_SHARE)
        return start, self.samples[-1][1], max(kb for _, kb in self.samples)


async def _load(port: int) -> list[dict[str, Any]]:
    generate = _constload().generate
    bodies = [(json.dumps(SUCCESS), 1 - FAILURE_SHARE, 12), (json.dumps(FAILURE), FAILURE_SHARE, 2)]
    return list(
        await asyncio.gather(
            *(
                generate(port, body.encode(), RATE * share, SOAK_SECS, conns)
                for body, share, conns in bodies
            )
        )
    )


def test_soak(observer_daemon: DaemonFactory, stub_server: Any) -> None:
    llm, review, gateway = stub_server(), stub_server(), stub_server()
    llm.default = StubReply(body={"text": "Retry with a longer timeout."})
    review.default = StubReply(body={"run_id": "soak", "facts": ["f"]})
    config = (
        CONFIG.replace("GATEWAY", gateway.url).replace("REVIEW", review.url).replace("LLM", llm.url)
    )
    daemon: Daemon = observer_daemon.start(config)
    assert daemon.port is not None
    memory = Memory(daemon.process.pid)
    memory.start()
    results = asyncio.run(_load(daemon.port))
    start_kb, end_kb, most_kb = memory.stop()
    lag_max = daemon.metric("observer_event_loop_lag_seconds", stat="max") or 0.0
    cycles = daemon.cycles()
    assert daemon.stop() == 0

    acked = sum(result["acked"] for result in results)
    written = line_count(daemon.directory / "ops.jsonl")
    growth = (end_kb - start_kb) / start_kb
    record(
        "soak",
        seconds=SOAK_SECS,
        target_rate=RATE,
        achieved_rate=round(acked / SOAK_SECS),
        events_acked=acked,
        events_written=written,
        refused_or_failed=sum(result["non_2xx"] + result["errors"] for result in results),
        p99_ms=round(max(result["p99_ms"] for result in results), 2),
        rss_start_mb=round(start_kb / 1024, 1),
        rss_end_mb=round(end_kb / 1024, 1),
        rss_max_mb=round(most_kb / 1024, 1),
        rss_growth_pct=round(100 * growth, 1),
        loop_lag_max_ms=round(lag_max * 1000, 1),
        cycles=cycles,
        diagnoses_posted=len(llm.requests),
        log_entries_posted=len(gateway.received("/log")),
        escalations=len(review.requests),
        errors_logged=len(errors_logged(daemon)),
    )
    assert written == acked, f"{acked} acknowledged, {written} written"
    assert all(result["non_2xx"] == 0 and result["errors"] == 0 for result in results), results
    assert acked >= 0.95 * RATE * SOAK_SECS, f"only {acked / SOAK_SECS:.0f} events/s"
    assert not errors_logged(daemon), errors_logged(daemon)[:5]
    assert growth < RSS_GROWTH_MAX, f"RSS grew {100 * growth:.1f}%"
    assert lag_max < LOOP_LAG_MAX_SECS, f"event loop held up {lag_max:.3f}s"
    assert len(review.requests) == 1, "the one failure signature was escalated more than once"
    assert llm.requests and gateway.received("/log"), "the analyzers did not run"
