"""``observer-core replay`` (ANALYSIS §14.1), run as a real subprocess on real files."""

from __future__ import annotations

import gzip
import json
import os
import pty
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from observer_core.testing import StubReply

START = datetime(2026, 3, 1, tzinfo=UTC)

CONFIG = """
[observer]
cycle_secs = 30
state_dir = "state"

[sources.http]
port = {port}

[sinks.ops]
plugin = "jsonl"
path = "sink/ops.jsonl"
accepts = ["op", "diagnosis", "playbook", "escalation"]

[analyzers.escalation]
url = "{service}"
threshold = 3
{escalation}

[analyzers.playbook]
every = 3
min_successes = 2
min_group = 2
"""


def stamp(seconds: float) -> str:
    moment = START + timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def op(seconds: float, success: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "timestamp": stamp(seconds),
        "endpoint": "/search",
        "input_summary": f"q at {seconds}",
        "success": success,
        "duration_ms": 10,
        "output_summary": "ok" if success else "failed",
        "source": "mcp",
        **extra,
    }


def failure(seconds: float, sig_hash: str = "a1") -> dict[str, Any]:
    return op(seconds, False, error="timeout", sig_hash=sig_hash)


def jsonl(rows: list[dict[str, Any] | str]) -> bytes:
    return "".join(f"{row if isinstance(row, str) else json.dumps(row)}\n" for row in rows).encode()


def write_config(factory: Any, service: str = "http://127.0.0.1:9", escalation: str = "") -> None:
    factory.write_config(
        CONFIG.replace("{service}", service)
        .replace("{escalation}", escalation)
        .replace("{port}", "39999")
    )


def findings(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def known_ops() -> tuple[list[dict[str, Any] | str], list[dict[str, Any] | str]]:
    """Two files: a success every 10 s for 200 s; sig_hash a1 fails at 40, 50 and 70 s
    (the third crosses the threshold in cycle 3, which ends at 90 s); b2 fails twice."""
    first: list[dict[str, Any] | str] = [op(seconds) for seconds in range(0, 40, 10)]
    first += [failure(40), failure(50), "not json", failure(55, "b2")]
    second: list[dict[str, Any] | str] = [failure(70), failure(80, "b2")]
    second += [op(seconds) for seconds in range(90, 201, 10)]
    return first, second


def test_replay_emits_the_findings_known_in_advance(observer_daemon):
    write_config(observer_daemon)
    first, second = known_ops()
    (observer_daemon.directory / "day1.jsonl").write_bytes(jsonl(first))
    (observer_daemon.directory / "day2.jsonl.gz").write_bytes(gzip.compress(jsonl(second)))

    result = observer_daemon.run(
        "replay", "day1.jsonl", "day2.jsonl.gz", "--config", "observer.toml"
    )

    assert result.returncode == 0, result.stderr
    lines = findings(result.stdout)
    [call] = [line for line in lines if line["kind"] == "would_call"]
    assert call["cycle"] == 3 and call["instance"] == "analyzers.escalation"
    assert call["request"]["method"] == "POST"
    assert call["request"]["url"] == "http://127.0.0.1:9/api/run?mode=code_review"
    assert call["request"]["body"]["input"].startswith("sig_hash=a1 · 3 failures")
    [row] = [line for line in lines if line["kind"] == "escalation"]
    assert row["cycle"] == 3
    assert row["at"] == stamp(90), "the cycle's end is its virtual time"
    assert row["record"]["ts"] == stamp(90), "the analyzer read the virtual clock"
    assert row["record"]["sig_hash"] == "a1" and row["record"]["cluster_size"] == 3
    playbook = [line for line in lines if line["kind"] == "playbook"]
    assert [line["cycle"] for line in playbook] == [3, 6], "every = 3 runs on cycles 3 and 6"
    assert playbook[1]["record"]["operation"] == "consolidated: 14 successful /search calls"
    summary = result.stderr.strip().splitlines()[-1]
    assert summary == (
        "replay: 21 ops read; 7 cycles; findings: escalation=1, playbook=2, would_call=1; "
        "1 lines skipped as invalid"
    )
    assert "day1.jsonl:7: skipped: invalid JSON" in result.stderr
    assert not (observer_daemon.directory / "state").exists(), "replay touched state_dir"
    assert not (observer_daemon.directory / "sink").exists(), "replay wrote to a sink"


def test_replay_runs_beside_the_live_daemon_and_leaves_its_state_alone(observer_daemon):
    write_config(observer_daemon)
    daemon = observer_daemon.start(
        CONFIG.replace("{service}", "http://127.0.0.1:9").replace("{escalation}", "")
    )
    state = observer_daemon.directory / "state"
    before = sorted(str(path.relative_to(state)) for path in state.rglob("*"))
    rows = [failure(seconds, f"s{seconds}") for seconds in range(3)] * 3
    (observer_daemon.directory / "ops.jsonl").write_bytes(jsonl(rows))

    result = observer_daemon.run(
        "replay", "ops.jsonl", "--config", "observer.toml", "--output", "found.jsonl", "--dry-run"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    found = findings((observer_daemon.directory / "found.jsonl").read_text())
    assert sum(line["kind"] == "escalation" for line in found) == 3
    assert sorted(str(path.relative_to(state)) for path in state.rglob("*")) == before
    assert daemon.process.poll() is None
    assert daemon.stop() == 0


def test_virtual_time_reaches_reescalate_after_secs(observer_daemon):
    """Re-escalation after 60 s of virtual time: two 30 s cycles, not a minute of waiting."""
    write_config(observer_daemon, escalation="reescalate_after_secs = 60")
    rows = [failure(seconds) for seconds in range(0, 300, 10)]
    (observer_daemon.directory / "ops.jsonl").write_bytes(jsonl(rows))

    result = observer_daemon.run(
        "replay", "ops.jsonl", "--config", "observer.toml", "--analyzers", "escalation"
    )

    assert result.returncode == 0, result.stderr
    cycles = [line["cycle"] for line in findings(result.stdout) if line["kind"] == "escalation"]
    assert cycles == [1, 3, 5, 7, 9]


def test_from_and_to_bound_the_ops_and_start_the_cycles(observer_daemon):
    write_config(observer_daemon)
    rows = [failure(seconds, "early") for seconds in range(0, 30, 10)]
    rows += [failure(seconds, "late") for seconds in range(100, 130, 10)]
    rows += [failure(seconds, "after") for seconds in range(200, 230, 10)]
    (observer_daemon.directory / "ops.jsonl").write_bytes(jsonl(rows))

    result = observer_daemon.run(
        "replay",
        "ops.jsonl",
        "--config",
        "observer.toml",
        "--from",
        stamp(100),
        "--to",
        stamp(150).replace("Z", "+00:00"),
        "--analyzers",
        "analyzers.escalation",
    )

    assert result.returncode == 0, result.stderr
    [row] = [line for line in findings(result.stdout) if line["kind"] == "escalation"]
    assert row["record"]["sig_hash"] == "late"
    assert row["cycle"] == 1 and row["at"] == stamp(130), "cycle 1 starts at the first op kept"
    assert "9 ops read; 1 cycles" in result.stderr
    assert "6 ops outside --from/--to" in result.stderr


def test_call_services_calls_the_configured_service(observer_daemon, stub_server):
    service = stub_server()
    service.replies["/api/run"] = StubReply(body={"run_id": "r-9", "files": ["a.py"]})
    write_config(observer_daemon, service=service.url)
    (observer_daemon.directory / "ops.jsonl").write_bytes(jsonl([failure(0)] * 3))

    result = observer_daemon.run(
        "replay", "ops.jsonl", "--config", "observer.toml", "--call-services"
    )

    assert result.returncode == 0, result.stderr
    lines = findings(result.stdout)
    assert [line["kind"] for line in lines] == ["escalation"]
    assert lines[0]["record"]["llm_team_run_id"] == "r-9"
    assert len(service.received("/api/run")) == 1


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["missing.jsonl"], 1, "No such file or directory"),
        (["ops.jsonl", "--from", "yesterday"], 2, "--from: expected an RFC 3339 timestamp"),
        (["ops.jsonl", "--analyzers", "nope"], 2, "no analyzer named 'nope'"),
        (["ops.jsonl", "--dry-run", "--call-services"], 2, "not allowed with argument"),
    ],
)
def test_bad_input_is_one_line_without_traceback(observer_daemon, args, status, message):
    write_config(observer_daemon)
    (observer_daemon.directory / "ops.jsonl").write_bytes(jsonl([op(0)]))
    result = observer_daemon.run("replay", *args, "--config", "observer.toml")
    assert result.returncode == status
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_progress_bar_only_when_stderr_is_a_terminal(observer_daemon):
    write_config(observer_daemon)
    (observer_daemon.directory / "ops.jsonl").write_bytes(jsonl([op(n) for n in range(100)]))
    command = [sys.executable, "-m", "observer_core", "replay", "ops.jsonl"]
    command += ["--config", "observer.toml", "--output", "out.jsonl"]

    main, child = pty.openpty()
    try:
        process = subprocess.run(
            command, cwd=observer_daemon.directory, stderr=child, timeout=60, check=False
        )
        os.close(child)
        shown = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the child's end is closed and everything was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(main)
    assert process.returncode == 0
    assert b"\r[##############################] 100% 100 ops" in shown
    assert b"replay: 100 ops read" in shown

    piped = observer_daemon.run(*command[3:])
    assert piped.returncode == 0
    assert "[#" not in piped.stderr and "\r" not in piped.stderr


@pytest.mark.parametrize("command", ["replay", "test"])
def test_help(observer_daemon, command):
    result = observer_daemon.run(command, "--help")
    assert result.returncode == 0
    assert f"usage: observer-core {command}" in result.stdout


def test_an_analyzer_that_cannot_start_is_one_line_naming_it(observer_daemon):
    observer_daemon.write_config(
        '[analyzers.llm]\nplugin = "diagnosis"\napi_key_env = "NO_SUCH_KEY_SET"\n'
    )
    (observer_daemon.directory / "ops.jsonl").write_bytes(jsonl([failure(0)]))
    result = observer_daemon.run("replay", "ops.jsonl", "--config", "observer.toml")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "observer-core: [analyzers.llm] cannot start: api_key_env: the environment variable "
        "NO_SUCH_KEY_SET is not set (it should hold the API key)"
    )


def test_alert_windows_start_at_the_first_op_replayed(observer_daemon):
    """No decision before window_secs of virtual time: the rule starts at the first op."""
    observer_daemon.write_config(
        """
        [analyzers.alerts]
        [[analyzers.alerts.rules]]
        name = "failing"
        when = "failure_rate"
        above = 0.5
        window_secs = 60
        min_ops = 3
        """
    )
    rows = [op(0), *(failure(10) for _ in range(5)), op(65)]
    (observer_daemon.directory / "ops.jsonl").write_bytes(jsonl(rows))

    result = observer_daemon.run("replay", "ops.jsonl", "--config", "observer.toml")

    assert result.returncode == 0, result.stderr
    [alert] = findings(result.stdout)
    assert (alert["kind"], alert["cycle"], alert["at"]) == ("alert", 2, stamp(60))
    assert alert["record"]["state"] == "firing" and alert["record"]["since"] == stamp(60)
