"""The nats sink: ops acknowledged by JetStream before the event is, refused while NATS is
away, findings queued within a bound, config errors that say what is wrong."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import msgspec
import pytest
from observer_plugins.fleet.sink import MSG_ID, NatsSink, NatsSinkConfig, split_lines
from observer_plugins.fleet.testing import NatsServer, nats_binary, read_stream
from observer_plugins.sinks.gateway_log.entry import LogEntry

from observer_core import Finding, Op
from observer_core.testing import make_context, wait_for

PLUGIN_DIR = Path(__file__).parents[3] / "plugins" / "fleet"

EDGE = """
[observer]
cycle_secs = 60
[sources.http]
port = {port}
[sinks.bus]
plugin = "nats"
url = "URL"
timeout_secs = 2
"""


AN_OP = {
    "timestamp": "2026-01-01T00:00:00.000Z",
    "endpoint": "/after-the-race",
    "input_summary": "i",
    "success": True,
    "duration_ms": 1,
    "output_summary": "o",
    "source": "test",
}


def events(count: int, start: int = 0) -> list[dict[str, object]]:
    return [
        {"id": f"e{n}", "endpoint": f"/e{n % 7}", "success": n % 3 != 0}
        for n in range(start, start + count)
    ]


def stored_ops(url: str, subject: str = "observer.ops") -> list[dict[str, object]]:
    messages = asyncio.run(read_stream(url, "OBSERVER", subject))
    return [json.loads(line) for message in messages for line in message.data.splitlines()]


def test_acknowledged_events_are_in_the_stream(observer_daemon, nats_server):
    edge = observer_daemon.start(EDGE.replace("URL", nats_server.url))
    for start in range(0, 300, 100):
        edge.post_events(events(100, start))
    reply = httpx.post(f"{edge.url}/event", json={"id": "single", "success": True}, timeout=5)
    assert reply.status_code == 200

    ops = stored_ops(nats_server.url)
    assert [op["id"] for op in ops] == [f"e{n}" for n in range(300)] + ["single"]
    assert ops[0]["input_summary"] == "? ?×? in ?, ?"  # the /event defaults were applied
    messages = asyncio.run(read_stream(nats_server.url, "OBSERVER"))
    assert len(messages) == 4  # one message per acknowledged batch
    ids = [message.headers[MSG_ID] for message in messages]
    assert len(set(ids)) == len(ids)
    assert edge.metric("observer_nats_published_total", instance="sinks.bus", kind="op") == 301


def test_unreachable_nats_refuses_events_then_recovers(observer_daemon, nats_server):
    edge = observer_daemon.start(EDGE.replace("URL", nats_server.url))
    edge.post_events(events(10))
    nats_server.stop(signal.SIGKILL)

    reply = httpx.post(f"{edge.url}/events", json=events(5, 10), timeout=10)
    assert reply.status_code == 503
    assert reply.headers["retry-after"]
    assert "NATS" in reply.json()["error"]
    health = httpx.get(f"{edge.url}/health", timeout=5).json()
    assert health["status"] == "ok"
    assert health["checks"]["sinks.bus"]["healthy"] is False
    assert edge.metric("observer_input_rejected_total", reason="sink_failed") == 5

    nats_server.start()
    wait_for(
        lambda: httpx.get(f"{edge.url}/health", timeout=5).json()["checks"]["sinks.bus"]["healthy"],
        timeout=15,
        what="the sink to reconnect",
    )
    edge.post_events(events(5, 10))
    assert [op["id"] for op in stored_ops(nats_server.url)] == [f"e{n}" for n in range(15)]


def test_nats_down_at_start_does_not_stop_the_edge(observer_daemon, nats_server):
    nats_server.stop()
    edge = observer_daemon.start(EDGE.replace("URL", nats_server.url))
    assert httpx.post(f"{edge.url}/events", json=events(3), timeout=10).status_code == 503
    nats_server.start()
    wait_for(
        lambda: httpx.post(f"{edge.url}/events", json=events(3), timeout=10).status_code == 200,
        timeout=20,
        interval=0.2,
        what="events to be accepted once NATS is up",
    )
    assert [op["id"] for op in stored_ops(nats_server.url)] == ["e0", "e1", "e2"]


def entry(n: int) -> Finding:
    return Finding("diagnosis", LogEntry(f"op{n}", "approach", "result", "context"))


FINDINGS = """
[sinks.bus]
plugin = "nats"
url = "URL"
accepts = ["diagnosis"]
queue_max = 3
timeout_secs = 1
"""


@pytest.mark.anyio
async def test_findings_wait_within_a_bound_while_nats_is_away(observer_engine, nats_server):
    async with observer_engine.start(FINDINGS.replace("URL", nats_server.url)) as engine:
        await engine.engine.publish([entry(0)])
        await engine.wait_until(
            lambda: (
                engine.metric(
                    "observer_nats_published_total", instance="sinks.bus", kind="diagnosis"
                )
                == 1
            )
        )
        nats_server.stop(signal.SIGKILL)
        await engine.engine.publish([entry(n) for n in range(1, 6)])
        assert engine.metric("observer_sink_dropped_total", instance="sinks.bus") == 2
        assert engine.metric("observer_sink_queue_depth", instance="sinks.bus") == 3
        nats_server.start()
        await engine.wait_until(
            lambda: engine.metric("observer_sink_queue_depth", instance="sinks.bus") == 0,
            timeout=20,
        )
    messages = await read_stream(nats_server.url, "OBSERVER", "observer.findings.>")
    assert [json.loads(message.data)["operation"] for message in messages] == [
        "op0",
        "op3",
        "op4",
        "op5",
    ]
    assert {message.subject for message in messages} == {"observer.findings.diagnosis"}


def test_split_lines_keeps_lines_whole():
    data = b"".join(b"%d\n" % (10**n) for n in range(8))  # lines of 2 to 9 bytes
    pieces = split_lines(data, 10)
    assert b"".join(pieces) == data
    assert all(piece.endswith(b"\n") for piece in pieces)
    assert all(len(piece) <= 10 for piece in pieces if piece.count(b"\n") > 1)
    assert split_lines(b"0123456789abc\nx\n", 4) == [b"0123456789abc\n", b"x\n"]


def test_sample_toml_decodes_and_passes_check(observer_daemon):
    table = tomllib.loads((PLUGIN_DIR / "sample.toml").read_text())["sinks"]["bus"]
    assert table.pop("plugin") == "nats"
    assert msgspec.convert(table, NatsSinkConfig) == NatsSinkConfig(**table)
    result = observer_daemon.run("check", "--config", str(PLUGIN_DIR / "sample.toml"))
    assert result.returncode == 0, result.stderr
    assert "plugin=nats" in result.stdout


WRONG = {
    "subject-with-wildcard": ('subject = "observer.>"', "[sinks.bus] subject: 'observer.>' is not"),
    "stream-with-dot": ('stream = "a.b"', "[sinks.bus] stream: 'a.b' is not a stream name"),
    "not-a-nats-url": ('url = "http://x:4222"', "[sinks.bus] url: expected nats://HOST:PORT"),
    "zero-queue": ("queue_max = 0", "[sinks.bus] queue_max: Expected `int` >= 1"),
}


@pytest.mark.parametrize("case", WRONG, ids=list(WRONG))
def test_wrong_values_are_config_errors(observer_daemon, case):
    line, message = WRONG[case]
    path = observer_daemon.write_config(f'[sinks.bus]\nplugin = "nats"\n{line}\n')
    result = observer_daemon.run("check", "--config", str(path))
    assert result.returncode == 2
    assert message in result.stderr


def test_without_nats_py_the_config_error_says_what_to_install(observer_daemon):
    path = observer_daemon.write_config('[sinks.bus]\nplugin = "nats"\n')
    hide_nats = (
        "import sys; sys.modules['nats'] = None; from observer_core.cli import main; "
        f"sys.exit(main(['check', '--config', {str(path)!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide_nats], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "[sinks.bus] plugin: needs nats-py" in result.stderr
    assert "pip install 'observer-core[nats]'" in result.stderr


def test_token_authentication(observer_daemon, tmp_path):
    server = NatsServer(nats_binary(), tmp_path / "nats-auth", "--auth", "s3cret")
    server.start()
    try:
        config = EDGE.replace("URL", server.url) + 'token = "${NATS_TOKEN}"\n'
        edge = observer_daemon.start(config, env={"NATS_TOKEN": "s3cret"})
        edge.post_events(events(2))
        assert [op["id"] for op in stored_ops(f"nats://s3cret@127.0.0.1:{server.port}")] == [
            "e0",
            "e1",
        ]
        wrong = observer_daemon.start(
            config.replace("cycle_secs = 60", 'cycle_secs = 60\nstate_dir = "state2"'),
            env={"NATS_TOKEN": "nope"},
            name="wrong.toml",
        )
        assert httpx.post(f"{wrong.url}/events", json=events(1), timeout=10).status_code == 503
        assert "authorization violation" in wrong.logs().lower()
        resolved = observer_daemon.run(
            "check", "--resolved", "--config", str(edge.config_path), env={"NATS_TOKEN": "s3cret"}
        )
        assert 'token = "********"' in resolved.stdout
        assert "s3cret" not in resolved.stdout
    finally:
        server.stop()


@pytest.mark.anyio
async def test_a_stream_another_observer_created_a_moment_ago_is_used(tmp_path, nats_server):
    # Observers starting at once both find no stream and create it; JetStream refuses the
    # later creation. Here the sink's look is made to say "not found" after another
    # observer's stream exists (with other limits, so JetStream refuses whatever the timing).
    import nats
    from nats.js.errors import NotFoundError

    config = NatsSinkConfig(url=nats_server.url)
    admin = await nats.connect(nats_server.url)
    try:
        await admin.jetstream().add_stream(
            name=config.stream, subjects=[config.subject, f"{config.findings_subject}.>"]
        )
    finally:
        await admin.close()
    ctx = make_context(tmp_path, "sinks.bus")
    sink = NatsSink(config, ctx)
    assert await sink._link.try_connect()
    js = sink._link.js
    real_look = js.stream_info
    looks = []

    async def looked_a_moment_too_early(name, *args, **kwargs):
        looks.append(name)
        if len(looks) == 1:
            raise NotFoundError
        return await real_look(name, *args, **kwargs)

    js.stream_info = looked_a_moment_too_early
    try:
        await sink.open()
        await sink.write([Op(**AN_OP)])
    finally:
        await sink.aclose()
    assert "nats_error" not in ctx.status
    stored = await read_stream(nats_server.url, config.stream, config.subject)
    assert [json.loads(message.data) for message in stored] == [AN_OP]
