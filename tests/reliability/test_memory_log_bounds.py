"""The worst inputs of the review, sent for a while to a real daemon: its memory and its
log lines stay within stated bounds (CONTRACT §11.3, §11.4).

For ``DURATION_SECS`` one client sends, in turn: the largest batch of ``{}`` lines
accepted (10,000 default ops), a 1 MiB one (refused, 413), events with 10 KB
sources, failures with 60 KB sig_hashes escalated to a service that is down, long
endpoints for the playbook, long unknown field names, and forged log lines. Then:

- the peak resident memory (``VmHWM``) stays under ``MAX_RSS_MB``;
- no log line is longer than ``MAX_LOG_LINE`` characters, none carries an ESC, and
  every line is one of the daemon's (starts with a timestamp it wrote);
- ``/stats`` and ``/metrics`` stay bounded.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
from reliability_kit import daemon_factory, record

from observer_core.testing import wait_for

DURATION_SECS = 20.0
MAX_RSS_MB = 200
"""Peak RSS bound: the ring of 2000 ops of long strings and one 1 MiB request in flight
at a time fit well inside it (the review's 1 MiB batch peaked at 263 MB)."""
MAX_LOG_LINE = 4096 + 128
"""A message is cut to 4096 characters; the timestamp, level and logger name add < 128."""
MAX_STATS_BYTES = 100_000
MAX_METRICS_BYTES = 200_000
LINE_START = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) ")
FORGED = "\n2026-01-01T00:00:00.000Z INFO    observer_core: shutdown complete\x1b[2J"

CONFIG = """
[observer]
cycle_secs = 0.2
state_dir = "state"
[sources.http]
port = {port}
[analyzers.escalation]
url = "http://127.0.0.1:9"
threshold = 1
max_attempts = 1
[analyzers.playbook]
every = 1
min_successes = 1
min_group = 1
[sinks.ops]
plugin = "jsonl"
path = "ops.jsonl"
fsync = "never"
"""


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1)) / 1024


def worst_requests(round_number: int) -> list[tuple[bytes, int]]:
    """One round of hostile requests to ``/events``, each with the status it must get."""
    tag = f"{round_number}-"
    return [
        (b"{}\n" * 10_000, 200),
        (b"{}\n" * (1048576 // 3), 413),
        (
            b"\n".join(
                json.dumps({"success": True, "source": tag + str(n) + "s" * 10_000}).encode()
                for n in range(20)
            ),
            200,
        ),
        (
            b"\n".join(
                json.dumps(
                    {"success": False, "sig_hash": tag + str(n) + "h" * 60_000 + FORGED}
                ).encode()
                for n in range(8)
            ),
            200,
        ),
        (
            b"\n".join(
                json.dumps({"success": True, "endpoint": tag + str(n) + "e" * 30_000}).encode()
                for n in range(8)
            ),
            200,
        ),
        (
            b"\n".join(
                json.dumps({tag + str(n) + "f" * 5_000 + FORGED: 1}).encode() for n in range(20)
            ),
            200,
        ),
    ]


def test_memory_and_log_lines_stay_bounded_under_the_worst_inputs(tmp_path: Path) -> None:
    with daemon_factory(tmp_path) as factory, httpx.Client(timeout=30) as client:
        daemon = factory.start(CONFIG)
        started = time.monotonic()
        rounds = requests = 0
        while time.monotonic() - started < DURATION_SECS:
            for body, status in worst_requests(rounds):
                reply = client.post(f"{daemon.url}/events", content=body)
                assert reply.status_code == status, reply.text[:200]
                requests += 1
            rounds += 1
        daemon.wait_cycles(2)
        peak = peak_rss_mb(daemon.process.pid)
        stats = client.get(f"{daemon.url}/stats")
        metrics = client.get(f"{daemon.url}/metrics")
        assert daemon.stop() == 0
        wait_for(lambda: "shutdown complete" in daemon.logs(), timeout=10, what="shutdown")

    logs = daemon.logs()
    lines = logs.splitlines()
    longest = max(map(len, lines))
    record(
        "memory_log_bounds",
        rounds=rounds,
        requests=requests,
        peak_rss_mb=round(peak, 1),
        longest_log_line=longest,
        log_lines=len(lines),
        stats_bytes=len(stats.content),
        metrics_bytes=len(metrics.content),
    )
    assert rounds >= 2, "too few rounds to mean anything"
    assert peak < MAX_RSS_MB, f"peak RSS {peak:.0f} MB"
    assert longest <= MAX_LOG_LINE
    assert "\x1b" not in logs
    assert all(LINE_START.match(line) for line in lines), [
        line[:120] for line in lines if not LINE_START.match(line)
    ][:3]
    assert [line for line in lines if "shutdown complete" in line] == [lines[-1]]
    assert len(stats.json()["by_source"]) <= 64
    assert len(stats.content) < MAX_STATS_BYTES
    assert len(metrics.content) < MAX_METRICS_BYTES
