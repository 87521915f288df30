"""The gateway_log sink against a stub gateway: order, retries, dead letters, bounds, crashes.

The log entries come from a real ``playbook`` analyzer (one success per
endpoint makes one entry per endpoint, in order), so every test runs the
whole path: ring -> analyzer -> sink -> spool -> HTTP.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

from observer_core.testing import Daemon, RecordedRequest, StubReply, free_port, wait_for

INSTANCE = "sinks.gw"


def config(url: str, extra: str = "") -> str:
    return f"""
[observer]
cycle_secs = 0.2
state_dir = "state"
[sources.http]
port = {{port}}
[analyzers.playbook]
every = 1
min_successes = 1
min_group = 1
[sinks.gw]
plugin = "gateway_log"
url = "{url}"
{extra}
"""


def entry(number: int) -> dict[str, str]:
    return {
        "operation": f"consolidated: 1 successful /e{number} calls",
        "approach": f"common pattern: in{number}",
        "result": "avg_duration=7ms, 1 successes",
        "context": f"endpoint=/e{number}",
    }


def make_entries(daemon: Daemon, numbers: range) -> None:
    daemon.post_events(
        [
            {"endpoint": f"/e{n}", "input_summary": f"in{n}", "success": True, "duration_ms": 7}
            for n in numbers
        ]
    )


def posted(gateway: Any) -> list[dict[str, str]]:
    return [request.json() for request in gateway.received("/log")]


def spool(daemon: Daemon) -> Path:
    return daemon.directory / "state" / INSTANCE / "spool.jsonl"


def test_delivers_in_order(observer_daemon, stub_server):
    gateway = stub_server()
    daemon = observer_daemon.start(config(gateway.url))
    make_entries(daemon, range(5))
    wait_for(lambda: len(posted(gateway)) == 5, what="five entries")
    assert posted(gateway) == [entry(n) for n in range(5)]
    assert {request.headers["content-type"] for request in gateway.requests} == {"application/json"}
    assert {request.method for request in gateway.requests} == {"POST"}
    wait_for(lambda: daemon.metric("observer_sink_queue_depth", instance=INSTANCE) == 0)
    assert daemon.metric("observer_gateway_log_delivered_total", instance=INSTANCE) == 5
    wait_for(lambda: spool(daemon).stat().st_size == 0, what="the spool to empty")
    assert daemon.stop() == 0


def test_errors_are_retried_with_backoff_then_delivered_in_order(observer_daemon, stub_server):
    gateway = stub_server()
    moments: list[float] = []
    failures = iter([503, 429, 408])

    def answer(request: RecordedRequest) -> StubReply:
        moments.append(time.monotonic())
        status = next(failures, 200)
        return StubReply(status=status, body={"error": "not now"} if status != 200 else {})

    gateway.replies["/log"] = answer
    daemon = observer_daemon.start(config(gateway.url))
    make_entries(daemon, range(3))
    wait_for(lambda: len(posted(gateway)) == 6, what="three failures and three deliveries")
    assert posted(gateway) == [entry(0)] * 4 + [entry(1), entry(2)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(moments)]
    assert gaps[0] >= 0.25 and gaps[1] >= 0.5 and gaps[2] >= 1.0, f"no backoff: {gaps}"
    assert gaps[3] < 0.25 and gaps[4] < 0.25, "delivered entries should not wait"
    assert daemon.metric("observer_gateway_log_failed_attempts_total", instance=INSTANCE) == 3


def test_gateway_down_then_back_delivers_in_order(observer_daemon, stub_server):
    port = free_port()
    daemon = observer_daemon.start(config(f"http://127.0.0.1:{port}"))
    make_entries(daemon, range(3))
    wait_for(lambda: daemon.metric("observer_sink_queue_depth", instance=INSTANCE) == 3)
    failed = "observer_gateway_log_failed_attempts_total"
    wait_for(
        lambda: (daemon.metric(failed, instance=INSTANCE) or 0) >= 2,
        what="retries while the gateway is down",
    )
    errors = daemon.metric("observer_instance_errors_total", instance=INSTANCE)
    assert errors is None, "a down gateway is not an instance error"
    gateway = stub_server(port=port)
    wait_for(lambda: len(posted(gateway)) == 3, timeout=15, what="delivery once it is back")
    assert posted(gateway) == [entry(n) for n in range(3)]


def test_other_4xx_is_not_retried(observer_daemon, stub_server):
    gateway = stub_server()

    def answer(request: RecordedRequest) -> StubReply:
        if request.json()["context"] == "endpoint=/e0":
            return StubReply(status=400, body={"error": "operation too long"})
        return StubReply()

    gateway.replies["/log"] = answer
    daemon = observer_daemon.start(config(gateway.url))
    make_entries(daemon, range(3))
    wait_for(lambda: len(posted(gateway)) == 3, what="three posts")
    daemon.wait_cycles(3)
    assert posted(gateway) == [entry(0), entry(1), entry(2)]
    assert daemon.metric("observer_gateway_log_rejected_total", instance=INSTANCE) == 1
    assert "gateway refused a log entry (HTTP 400" in daemon.logs()
    assert json.dumps(entry(0), separators=(",", ":")) in daemon.logs()


def test_dead_letter_after_max_attempts(observer_daemon, stub_server):
    gateway = stub_server()

    def answer(request: RecordedRequest) -> StubReply:
        if request.json()["context"] == "endpoint=/e0":
            return StubReply(status=500, body={"error": "crash"})
        return StubReply()

    gateway.replies["/log"] = answer
    daemon = observer_daemon.start(config(gateway.url, "max_attempts = 2"))
    make_entries(daemon, range(3))
    wait_for(lambda: len(posted(gateway)) == 4, what="two attempts and two deliveries")
    assert posted(gateway) == [entry(0), entry(0), entry(1), entry(2)]
    dead = daemon.directory / "state" / INSTANCE / "dead_letter.jsonl"
    [row] = [json.loads(line) for line in dead.read_text().splitlines()]
    assert row["entry"] == entry(0)
    assert row["attempts"] == 2
    assert "HTTP 500" in row["error"]
    assert daemon.metric("observer_gateway_log_dead_lettered_total", instance=INSTANCE) == 1


def test_queue_max_drops_the_oldest_and_counts_them(observer_daemon, stub_server):
    port = free_port()
    daemon = observer_daemon.start(config(f"http://127.0.0.1:{port}", "queue_max = 2"))
    make_entries(daemon, range(5))
    wait_for(lambda: daemon.metric("observer_sink_dropped_total", instance=INSTANCE) == 3)
    assert daemon.metric("observer_sink_queue_depth", instance=INSTANCE) == 2
    gateway = stub_server(port=port)
    wait_for(lambda: len(posted(gateway)) == 2, timeout=15, what="the two kept entries")
    assert posted(gateway) == [entry(3), entry(4)]


def test_spool_survives_kill_9_and_a_torn_line(observer_daemon, stub_server):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    daemon = observer_daemon.start(config(url))
    make_entries(daemon, range(3))
    wait_for(lambda: daemon.metric("observer_sink_queue_depth", instance=INSTANCE) == 3)
    daemon.kill()
    with spool(daemon).open("ab") as torn:
        torn.write(b'{"seq":99,"entry":{"operation":"half a li')

    gateway = stub_server(port=port)
    daemon = observer_daemon.start(config(url), port=daemon.port)
    wait_for(lambda: len(posted(gateway)) == 3, what="the spooled entries")
    daemon.wait_cycles(3)
    assert posted(gateway) == [entry(n) for n in range(3)]
    assert "removed a torn last line" in daemon.logs()
    make_entries(daemon, range(3, 4))
    wait_for(lambda: len(posted(gateway)) == 4, what="a new entry after the restart")
    assert posted(gateway)[3] == entry(3)


def test_once_delivers_what_an_earlier_run_spooled(observer_daemon, stub_server):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    daemon = observer_daemon.start(config(url))
    make_entries(daemon, range(2))
    wait_for(lambda: daemon.metric("observer_sink_queue_depth", instance=INSTANCE) == 2)
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 5, "a down gateway must not hold up the shutdown"

    gateway = stub_server(port=port)
    result = observer_daemon.run("run", "--once", "--config", str(daemon.config_path))
    assert result.returncode == 0, result.stderr
    assert posted(gateway) == [entry(0), entry(1)]
    assert spool(daemon).read_bytes() == b""
