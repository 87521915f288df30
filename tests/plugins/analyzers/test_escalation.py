"""The escalation analyzer against a stub code-review service, through restarts and errors."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from observer_core.testing import RecordedRequest, StubReply, free_port, wait_for

INSTANCE = "analyzers.escalation"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
REVIEW_ASK = (
    "Review this failure pattern. What is the root cause? What code change would prevent it? "
    "Respond with structured facts + specific file hints."
)


def config(url: str, extra: str = "") -> str:
    return f"""
[observer]
cycle_secs = 0.2
state_dir = "state"
[sources.http]
port = {{port}}
[analyzers.escalation]
url = "{url}"
{extra}
[sinks.escalations]
plugin = "jsonl"
path = "escalations.jsonl"
accepts = ["escalation"]
"""


def failure(sig_hash: str | None, number: int, **fields: Any) -> dict[str, Any]:
    event = {
        "endpoint": "/fill",
        "input_summary": f"fill {number}",
        "success": False,
        "error": f"no staffer {number}",
        "source": "scenario",
        **fields,
    }
    if sig_hash is not None:
        event["sig_hash"] = sig_hash
    return event


def rows(directory: Path) -> list[dict[str, Any]]:
    path = directory / "escalations.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def sigs_posted(service: Any) -> list[str]:
    return [
        request.json()["input"].split(" ", 1)[0].removeprefix("sig_hash=")
        for request in service.received("/api/run")
    ]


def test_escalates_a_cluster_once_with_the_exact_row(observer_daemon, stub_server):
    service = stub_server()
    service.replies["/api/run"] = StubReply(
        body={
            "run_id": "run-7",
            "facts": [{"fact": "pool exhausted"}],
            "entities": ["staffing"],
            "response": "r" * 2500,
            "file_hints": ["fill.py"],
        }
    )
    daemon = observer_daemon.start(config(service.url))
    daemon.post_events(
        [
            failure("abc123", 1, staffer_id="s-1"),
            failure("abc123", 2, staffer_id="s-2"),
            *(failure(None, number) for number in range(5)),  # no sig_hash: ignored
            {"success": True, "sig_hash": "abc123", "source": "scenario"},  # not a failure
        ]
    )
    daemon.wait_cycles(3)
    assert service.received("/api/run") == [], "escalated below the threshold"

    daemon.post_events([failure("abc123", 3, error=None)])
    wait_for(lambda: rows(daemon.directory), what="the escalation row")
    [request] = service.received("/api/run")
    assert request.path == "/api/run?mode=code_review"
    assert request.json() == {
        "input": "sig_hash=abc123 · 3 failures on same signature:\n\n"
        "[1] endpoint=/fill input=fill 1 error=no staffer 1\n"
        "[2] endpoint=/fill input=fill 2 error=no staffer 2\n"
        "[3] endpoint=/fill input=fill 3 error=?\n\n" + REVIEW_ASK
    }
    [row] = rows(daemon.directory)
    assert TIMESTAMP.match(row.pop("ts"))
    assert row == {
        "source": "observer_escalation",
        "mode": "code_review",
        "sig_hash": "abc123",
        "cluster_size": 3,
        "cluster_staffer": "s-1",
        "cluster_endpoint": "/fill",
        "llm_team_run_id": "run-7",
        "facts": [{"fact": "pool exhausted"}],
        "entities": ["staffing"],
        "relationships": [],
        "raw_response": "r" * 2000,
        "recommended_files": ["fill.py"],
    }
    daemon.post_events([failure("abc123", 4)])
    daemon.wait_cycles(4)
    assert len(service.received("/api/run")) == 1, "escalated the same sig_hash twice"
    assert len(rows(daemon.directory)) == 1
    assert daemon.metric("observer_escalations_total", instance=INSTANCE) == 1


def test_ops_whose_client_left_are_not_failures(observer_daemon, stub_server):
    service = stub_server()
    service.replies["/api/run"] = StubReply(body={"run_id": "run-1"})
    daemon = observer_daemon.start(config(service.url))
    left = {"attributes": {"client_left": True}}
    daemon.post_events([failure("stop", number, **left) for number in range(1, 6)])
    daemon.wait_cycles(3)
    assert service.received("/api/run") == [], "escalated ops whose client left"

    daemon.post_events([failure("stop", number) for number in range(6, 9)])
    wait_for(lambda: rows(daemon.directory), what="the escalation row")
    [request] = service.received("/api/run")
    assert request.json()["input"].startswith("sig_hash=stop · 3 failures on same signature")
    assert "fill 5" not in request.json()["input"]


def test_last_eight_failures_and_reply_fallbacks(observer_daemon, stub_server):
    service = stub_server()
    service.replies["/api/run"] = StubReply(
        body={
            "run_id": None,
            "llm_team_run_id": "team-9",
            "files": ["b.py"],
            "response": 42,
            "facts": None,
        }
    )
    daemon = observer_daemon.start(config(service.url))
    daemon.post_events([failure("big", number) for number in range(10)])
    wait_for(lambda: rows(daemon.directory), what="the escalation row")
    text = service.received("/api/run")[0].json()["input"]
    expected = "\n".join(
        f"[{place}] endpoint=/fill input=fill {number} error=no staffer {number}"
        for place, number in enumerate(range(2, 10), 1)
    )
    assert text == f"sig_hash=big · 10 failures on same signature:\n\n{expected}\n\n{REVIEW_ASK}"
    [row] = rows(daemon.directory)
    del row["ts"]
    assert row == {
        "source": "observer_escalation",
        "mode": "code_review",
        "sig_hash": "big",
        "cluster_size": 10,
        "cluster_staffer": None,
        "cluster_endpoint": "/fill",
        "llm_team_run_id": "team-9",
        "facts": [],
        "entities": [],
        "relationships": [],
        "raw_response": None,
        "recommended_files": ["b.py"],
    }


def test_no_re_escalation_after_sigterm_or_kill_9(observer_daemon, stub_server):
    service = stub_server()
    service.replies["/api/run"] = StubReply(body={"run_id": "r"})
    daemon = observer_daemon.start(config(service.url))
    state = daemon.directory / "state" / INSTANCE / "escalated.json"

    def escalate(sig_hash: str, before: int) -> None:
        daemon.post_events([failure(sig_hash, number) for number in range(3)])
        wait_for(lambda: len(service.received("/api/run")) == before + 1, what=sig_hash)
        wait_for(lambda: sig_hash in state.read_text(), what=f"{sig_hash} saved")

    escalate("first", 0)
    assert daemon.stop() == 0

    daemon = observer_daemon.start(config(service.url), port=daemon.port)
    daemon.post_events([failure("first", number) for number in range(3)])
    escalate("second", 1)  # the analyzer works, and passed "first" over
    daemon.kill()

    daemon = observer_daemon.start(config(service.url), port=daemon.port)
    daemon.post_events([failure(sig, number) for sig in ("first", "second") for number in range(3)])
    escalate("third", 2)
    daemon.wait_cycles(3)
    assert sigs_posted(service) == ["first", "second", "third"]
    assert [row["sig_hash"] for row in rows(daemon.directory)] == ["first", "second", "third"]
    assert set(json.loads(state.read_text())) == {"first", "second", "third"}


def test_503_then_success_is_retried_and_written_once(observer_daemon, stub_server):
    service = stub_server()
    answers = iter([StubReply(status=503, body={"error": "busy"})])

    def answer(request: RecordedRequest) -> StubReply:
        return next(answers, StubReply(body={"run_id": "after-retry"}))

    service.replies["/api/run"] = answer
    daemon = observer_daemon.start(config(service.url))
    daemon.post_events([failure("flaky", number) for number in range(3)])
    wait_for(lambda: rows(daemon.directory), what="the row after the retry")
    daemon.wait_cycles(3)
    assert len(service.received("/api/run")) == 2
    assert [row["llm_team_run_id"] for row in rows(daemon.directory)] == ["after-retry"]
    assert (
        daemon.metric("observer_escalation_failures_total", instance=INSTANCE, reason="http_5xx")
        == 1
    )


FAILING = {
    "500": ("service", StubReply(status=500, body={"error": "crash"}), "http_5xx"),
    "429": ("service", StubReply(status=429, body={"error": "slow down"}), "http_429"),
    "404": ("service", StubReply(status=404, body={"error": "no such mode"}), "http_4xx"),
    "garbage": ("service", StubReply(body=b"not json"), "garbage"),
    "timeout": ("service", StubReply(body={"run_id": "late"}, delay=1.0), "timeout"),
    "refused": ("nothing", None, "unreachable"),
}


@pytest.mark.parametrize("case", FAILING, ids=list(FAILING))
def test_max_attempts_is_respected(observer_daemon, stub_server, case):
    target, reply, reason = FAILING[case]
    service = stub_server()
    service.replies["/api/run"] = reply or StubReply()
    url = service.url if target == "service" else f"http://127.0.0.1:{free_port()}"
    daemon = observer_daemon.start(config(url, "max_attempts = 2\ntimeout_secs = 0.3"))
    daemon.post_events([failure("doomed", number) for number in range(3)])

    def attempts() -> float:
        return (
            daemon.metric("observer_escalation_failures_total", instance=INSTANCE, reason=reason)
            or 0
        )

    wait_for(lambda: attempts() == 2, what="two failed attempts")
    daemon.wait_cycles(5)
    assert attempts() == 2
    assert len(service.received("/api/run")) == (2 if target == "service" else 0)
    assert rows(daemon.directory) == []
    assert "attempt 2 of 2, giving up" in daemon.logs()


def test_slow_service_does_not_delay_cycles(observer_daemon, stub_server):
    service = stub_server()
    service.replies["/api/run"] = StubReply(body={"run_id": "slow"}, delay=3.0)
    daemon = observer_daemon.start(config(service.url, "timeout_secs = 10"))
    daemon.post_events([failure("slow", number) for number in range(3)])
    wait_for(lambda: service.received("/api/run"), what="the call to start")
    daemon.wait_cycles(5, timeout=2.5)  # 5 cycles of 0.2 s go by while the call waits
    assert len(service.received("/api/run")) == 1, "a second call for a sig_hash in flight"
    assert rows(daemon.directory) == []
    wait_for(lambda: rows(daemon.directory), what="the row once the service answers")
    assert len(service.received("/api/run")) == 1


def test_reescalates_only_after_reescalate_after_secs(observer_daemon, stub_server):
    service = stub_server()
    moments: list[float] = []

    def answer(request: RecordedRequest) -> StubReply:
        moments.append(time.monotonic())
        return StubReply(body={"run_id": f"run-{len(moments)}"})

    service.replies["/api/run"] = answer
    daemon = observer_daemon.start(config(service.url, "reescalate_after_secs = 1.0"))
    daemon.post_events([failure("again", number) for number in range(3)])
    wait_for(lambda: len(rows(daemon.directory)) == 2, what="a second escalation")
    assert moments[1] - moments[0] >= 1.0
    assert [row["llm_team_run_id"] for row in rows(daemon.directory)] == ["run-1", "run-2"]


def test_a_reply_that_reports_usage_is_counted(observer_daemon, stub_server):
    """The service's own model call (contract §13.2): counted with source ``observer``
    when its reply reports usage as OpenAI does."""
    service = stub_server()
    usage = {"prompt_tokens": 300, "completion_tokens": 80, "total_tokens": 380}
    service.replies["/api/run"] = StubReply(
        body={"run_id": "run-1", "facts": [], "model": "review-model", "usage": usage}
    )
    daemon = observer_daemon.start(config(service.url))
    daemon.post_events([failure("tok", number) for number in range(3)])
    wait_for(lambda: rows(daemon.directory), what="the escalation row")
    labels = {"source": "observer", "model": "review-model"}
    assert daemon.metric("observer_gen_ai_calls_total", outcome="success", **labels) == 1
    assert daemon.metric("observer_gen_ai_tokens_total", type="input", **labels) == 300
    assert daemon.metric("observer_gen_ai_tokens_total", type="output", **labels) == 80
    assert daemon.stop() == 0
