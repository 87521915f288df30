"""The alerts analyzer in a real daemon (cycle_secs = 1, windows of a few seconds).

Alerts reach a stub receiver through a real ``webhook`` sink (``format = "json"``),
so each test also runs the path analyzer -> sink -> spool -> HTTP.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from observer_core.testing import Daemon, StubServer, wait_for

HOOK = "/hook"
RULE = "analyzers.alerts"


def config(hook: StubServer, rules: str, extra: str = "", settings: str = "") -> str:
    return f"""
[observer]
cycle_secs = 1
state_dir = "state"
{settings}
[sources.http]
port = {{port}}
[analyzers.alerts]
{rules}
[sinks.hook]
plugin = "webhook"
url = "{hook.url}{HOOK}"
{extra}
"""


def rule(**keys: Any) -> str:
    lines = [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    return "[[analyzers.alerts.rules]]\n" + "\n".join(lines) + "\n"


def alerts(hook: StubServer, name: str | None = None) -> list[dict[str, Any]]:
    found = []
    for request in hook.received(HOOK):
        body = request.json()
        assert body["kind"] == "alert", body
        if name is None or body["record"]["rule"] == name:
            found.append(body["record"])
    return found


def op(endpoint: str, success: bool = True, **fields: Any) -> dict[str, Any]:
    return {"endpoint": endpoint, "success": success, "source": "mcp", **fields}


def firing(daemon: Daemon, name: str) -> float | None:
    return daemon.metric("observer_alert_firing", rule=name)


def until(daemon: Daemon, hook: StubServer, name: str, state: str, ops: list[dict[str, Any]]):
    """Post ``ops`` every half second until the rule's last alert is in ``state``."""

    def reached() -> bool:
        found = alerts(hook, name)
        if found and found[-1]["state"] == state:
            return True
        daemon.post_events(ops)
        time.sleep(0.5)  # pace the posting; the wait itself is bounded by wait_for
        return False

    wait_for(reached, timeout=20, interval=0, what=f"{name} {state}")
    return alerts(hook, name)[-1]


def parse(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def test_failure_rate_fires_once_with_filters_and_samples_then_resolves(
    observer_daemon, stub_server
):
    hook = stub_server()
    rules = rule(
        name="search failing",
        when="failure_rate",
        above=0.5,
        window_secs=2,
        min_ops=4,
        endpoint="/search*",
        source="mcp",
        repeat_secs=0,
    )
    daemon = observer_daemon.start(config(hook, rules, settings="ring_size = 5"))
    daemon.post_events(
        [
            op("/search", False, error="timeout"),
            op("/search/deep", False, error="HTTP 502"),
            op("/search", False, error="timeout"),
            op("/search", True),
            *[op("/other", False, error="elsewhere") for _ in range(10)],
            *[{**op("/search", False, error="other source"), "source": "x"} for _ in range(10)],
        ]
    )
    wait_for(lambda: alerts(hook), timeout=15, what="the firing alert")
    [alert] = alerts(hook)
    assert alert["rule"] == "search failing"
    assert alert["state"] == "firing"
    assert alert["when"] == "failure_rate"
    assert alert["value"] == 0.75, "only /search* ops of source mcp count, evicted or not"
    assert alert["threshold"] == 0.5
    assert alert["window_secs"] == 2
    assert alert["evaluations"] == 1
    assert sorted(alert["sample_errors"]) == ["HTTP 502", "timeout"]
    assert firing(daemon, "search failing") == 1

    resolved = until(daemon, hook, "search failing", "resolved", [op("/search")] * 4)
    assert resolved["value"] < 0.5
    assert resolved["evaluations"] >= 1
    assert parse(resolved["since"]) > parse(alert["since"])
    assert firing(daemon, "search failing") == 0
    daemon.wait_cycles(2)
    assert [a["state"] for a in alerts(hook)] == ["firing", "resolved"]


def test_p95_ops_per_min_and_below(observer_daemon, stub_server):
    hook = stub_server()
    rules = (
        rule(name="slow", when="p95_duration_ms", above=100, window_secs=2, min_ops=3,
             endpoint="/slow")
        + rule(name="burst", when="ops_per_min", above=60, window_secs=2, staffer_id="s1")
        + rule(name="quiet", when="ops_per_min", below=30, window_secs=2, endpoint="/q")
    )  # fmt: skip
    daemon = observer_daemon.start(config(hook, rules))
    daemon.post_events(
        [op("/slow", duration_ms=500) for _ in range(4)]
        + [op("/b", staffer_id="s1") for _ in range(4)]
        + [op("/b", staffer_id="s2") for _ in range(20)]
    )
    wait_for(lambda: len(alerts(hook)) >= 3, timeout=15, what="three firing alerts")
    by_rule = {alert["rule"]: alert for alert in alerts(hook)}
    assert by_rule["slow"]["state"] == "firing"
    assert by_rule["slow"]["value"] == 500
    assert by_rule["burst"]["value"] == 120, "4 ops of s1 in 2 s are 120 per minute"
    assert by_rule["quiet"]["value"] == 0
    assert by_rule["quiet"]["threshold"] == 30

    assert until(daemon, hook, "slow", "resolved", [op("/slow", duration_ms=5)] * 30)["value"] < 100
    assert until(daemon, hook, "burst", "resolved", [])["value"] == 0
    resolved = until(daemon, hook, "quiet", "resolved", [op("/q")] * 2)
    assert resolved["value"] >= 30


def test_silence_waits_for_the_window_since_start_then_resolves(observer_daemon, stub_server):
    hook = stub_server()
    rules = rule(name="silent", when="silence_secs", above=2, window_secs=4, source="tail")
    daemon = observer_daemon.start(config(hook, rules))
    started = parse(httpx_json(daemon, "/stats")["started_at"])
    daemon.post_events([op("/x")])  # another source: not this rule's
    wait_for(lambda: alerts(hook), timeout=15, what="the silence alert")
    [alert] = alerts(hook)
    assert alert["state"] == "firing"
    assert parse(alert["since"]) - started >= 3.9, "no decision before window_secs since start"
    assert alert["value"] >= 3.9
    resolved = until(daemon, hook, "silent", "resolved", [{**op("/x"), "source": "tail"}])
    assert resolved["value"] < 2


def test_repeats_carry_the_evaluations_they_hid(observer_daemon, stub_server):
    hook = stub_server()
    rules = rule(name="down", when="failure_rate", above=0.5, window_secs=1, repeat_secs=3)
    daemon = observer_daemon.start(config(hook, rules))
    first = until(daemon, hook, "down", "firing", [op("/a", False, error="boom")] * 2)

    def repeated() -> bool:
        daemon.post_events([op("/a", False, error="boom")] * 2)
        time.sleep(0.5)
        return len(alerts(hook)) >= 2

    wait_for(repeated, timeout=20, interval=0, what="a repeat")
    first, second = alerts(hook)[:2]
    assert second["state"] == "firing"
    assert second["since"] == first["since"]
    assert second["evaluations"] - first["evaluations"] >= 2, "cycles held without an alert"
    assert second["sample_errors"] == ["boom"]


def test_a_restart_neither_refires_nor_forgets(observer_daemon, stub_server):
    hook = stub_server()
    rules = rule(name="down", when="failure_rate", above=0.5, window_secs=2, repeat_secs=3600)
    text = config(hook, rules)
    daemon = observer_daemon.start(text)
    until(daemon, hook, "down", "firing", [op("/a", False, error="boom")] * 2)
    state = daemon.directory / "state" / RULE / "alerts.json"
    assert json.loads(state.read_text())["down"]["firing"] is True
    daemon.kill()

    daemon = observer_daemon.start(text, port=daemon.port)
    assert firing(daemon, "down") == 1, "a firing alert is remembered"
    assert "still firing from the last run: down" in daemon.logs()
    daemon.post_events([op("/a", False, error="boom")] * 4)
    daemon.wait_cycles(4)
    assert [a["state"] for a in alerts(hook)] == ["firing"], "not fired again"
    resolved = until(daemon, hook, "down", "resolved", [op("/a")] * 4)
    assert resolved["evaluations"] >= 2
    assert firing(daemon, "down") == 0
    assert json.loads(state.read_text())["down"].get("firing", False) is False


def test_rule_errors_name_the_rule_and_key(observer_daemon):
    cases = {
        'name = "r"\nwhen = "failure_rate"\nabove = 0.1\nbelow = 0.2': "exactly one of",
        'name = "r"\nwhen = "silence_secs"\nbelow = 5': "below: silence_secs takes only",
        'name = "r"\nwhen = "failure_rate"\nabove = 2': "above: a failure_rate is between 0 and 1",
        'name = "r"\nwhen = "errors"\nabove = 2': "rules[0].when",
    }
    for body, message in cases.items():
        table = f"[analyzers.a]\nplugin = 'alerts'\n[[analyzers.a.rules]]\n{body}\n"
        path = observer_daemon.write_config(table)
        result = observer_daemon.run("check", "--config", str(path))
        assert result.returncode == 2, body
        assert "[analyzers.a]" in result.stderr and message in result.stderr, result.stderr
    twice = "[[analyzers.a.rules]]\nname = 'r'\nwhen = 'ops_per_min'\nabove = 1\n"
    path = observer_daemon.write_config(f"[analyzers.a]\nplugin = 'alerts'\n{twice}{twice}")
    result = observer_daemon.run("check", "--config", str(path))
    assert result.returncode == 2 and "is used by two rules" in result.stderr


def httpx_json(daemon: Daemon, path: str) -> Any:
    return httpx.get(f"{daemon.url}{path}", timeout=10).json()


def test_the_shipped_example_passes_check_once_uncommented(observer_daemon):
    root = Path(__file__).resolve().parents[3]
    shipped = (root / "observer.toml").read_text(encoding="utf-8")
    head, example = shipped.split("# [analyzers.alerts]", 1)
    lines = ("# [analyzers.alerts]" + example).splitlines()
    assert all(line.startswith("#") for line in lines), "the example stays commented out"
    uncommented = "\n".join(line.removeprefix("#").removeprefix(" ") for line in lines)
    path = observer_daemon.write_config(head + uncommented + "\n")
    env = {"ALERT_WEBHOOK_URL": "https://hooks.example.com/services/T/B/X"}
    result = observer_daemon.run("check", "--config", str(path), env=env)
    assert result.returncode == 0, result.stderr
    assert "plugin=alerts" in result.stdout and "plugin=webhook" in result.stdout
