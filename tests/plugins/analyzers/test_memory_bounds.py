"""What analyzers remember across cycles is bounded in bytes (CONTRACT §11.3): a key
longer than 64 bytes is kept as its :func:`~observer_core.memory_key`."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from observer_plugins.analyzers.diagnosis import DiagnosisAnalyzer, DiagnosisConfig

from observer_core import Op, Window, memory_key
from observer_core.testing import StubReply, make_context, wait_for

CONFIG = """
[observer]
cycle_secs = 0.2
state_dir = "state"
[sources.http]
port = {{port}}
{analyzer}
[sinks.findings]
plugin = "jsonl"
path = "findings.jsonl"
accepts = ["escalation", "playbook"]
"""
LONG = "k" * 60_000


def state(directory: Path, instance: str, name: str) -> dict[str, object]:
    path = directory / "state" / instance / name
    return json.loads(path.read_text()) if path.exists() else {}


def rows(directory: Path) -> list[dict[str, object]]:
    path = directory / "findings.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_memory_key_keeps_short_keys_and_digests_long_ones():
    assert memory_key("abc123") == "abc123"
    assert memory_key("é" * 32) == "é" * 32  # 64 bytes: kept
    long = memory_key("é" * 33)
    assert long.startswith("sha256:") and len(long.encode()) == 63
    assert memory_key(LONG) != memory_key(LONG + "x")
    assert memory_key(LONG) == memory_key(LONG)


def test_escalation_remembers_a_long_sig_hash_by_its_digest(observer_daemon, stub_server):
    service = stub_server()
    service.replies["/api/run"] = StubReply(body={"run_id": "r", "facts": [], "entities": []})
    analyzer = f'[analyzers.escalation]\nurl = "{service.url}"\nthreshold = 2'
    daemon = observer_daemon.start(CONFIG.format(analyzer=analyzer))
    failure = {"success": False, "sig_hash": LONG, "source": "s"}
    daemon.post_events([failure, failure])
    wait_for(lambda: rows(daemon.directory), what="the escalation row")
    [row] = rows(daemon.directory)
    assert row["sig_hash"] == LONG  # the row and the request carry the real sig_hash
    assert service.received("/api/run")[0].json()["input"].startswith(f"sig_hash={LONG} ")

    def remembered() -> dict[str, object]:
        return state(daemon.directory, "analyzers.escalation", "escalated.json")

    wait_for(remembered, what="the escalation state")
    assert list(remembered()) == [memory_key(LONG)]
    daemon.wait_cycles(3)
    assert len(service.received("/api/run")) == 1  # remembered: not escalated again


def test_playbook_remembers_a_long_endpoint_by_its_digest(observer_daemon):
    analyzer = "[analyzers.playbook]\nevery = 1\nmin_successes = 3"
    daemon = observer_daemon.start(CONFIG.format(analyzer=analyzer))
    daemon.post_events([{"success": True, "endpoint": LONG, "source": "s"}] * 3)
    wait_for(lambda: rows(daemon.directory), what="the playbook entry")
    [entry] = rows(daemon.directory)
    assert entry["context"] == f"endpoint={LONG}"

    def remembered() -> dict[str, object]:
        return state(daemon.directory, "analyzers.playbook", "emitted.json")

    wait_for(remembered, what="the playbook state")
    assert list(remembered()) == [memory_key(LONG)]
    daemon.wait_cycles(3)
    assert len(rows(daemon.directory)) == 1  # remembered: not posted again


def test_diagnosis_marks_failures_in_a_fleet_by_bounded_identities(tmp_path):
    analyzer = DiagnosisAnalyzer(DiagnosisConfig(), make_context(tmp_path, "analyzers.d"))
    analyzer._fleet = SimpleNamespace(shared=True)  # type: ignore[assignment]
    op = Op(
        timestamp="2026-01-01T00:00:00.000Z",
        endpoint="/e",
        input_summary=LONG,
        success=False,
        duration_ms=1,
        output_summary="o",
        source="s",
    )
    batch = analyzer._pending(Window(ops=[op] * 3, first_seq=0, cycle=1))
    assert batch is not None
    assert len(batch.fresh) == 3
    assert all(len(identity.encode()) <= 64 for identity in batch.fresh)
