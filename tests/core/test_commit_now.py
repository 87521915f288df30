"""A lone request's ops are committed at once (``Emitter.commit_now``, ``Sink.write_now``);
requests that arrive together still share one commit; whatever cannot be written at once
goes the dispatcher's way. Each against the real daemon, counted by
``observer_commits_total{path}``, with every acknowledged event in the file exactly once."""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path

import httpx
import pytest

from observer_core.testing import Daemon, DaemonFactory, daemon_config

LONE = 40


def commits(daemon: Daemon, path: str) -> int:
    return int(daemon.metric("observer_commits_total", path=path) or 0)


def ids_in(path: Path) -> Counter[str]:
    return Counter(json.loads(line)["id"] for line in path.read_text().splitlines())


def post_one_at_a_time(daemon: Daemon, count: int, prefix: str = "lone") -> list[bytes]:
    """``count`` events, each posted once the last is answered, on one connection."""
    bodies = []
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        for n in range(count):
            reply = client.post("/event", json={"id": f"{prefix}{n}", "success": True})
            assert reply.status_code == 200, reply.text
            bodies.append(reply.content)
    return bodies


def test_a_lone_request_is_committed_at_once(observer_daemon: DaemonFactory) -> None:
    daemon = observer_daemon.start(daemon_config())
    bodies = post_one_at_a_time(daemon, LONE)
    # Answered as the dispatcher answers: the ring already holds the event.
    assert bodies == [b'{"accepted":true,"ring_size":%d}' % (n + 1) for n in range(LONE)]
    assert commits(daemon, "now") == LONE
    assert commits(daemon, "group") == 0
    assert ids_in(daemon.directory / "ops.jsonl") == {f"lone{n}": 1 for n in range(LONE)}
    assert daemon.metric("observer_sink_records_total", instance="sinks.ops") == LONE
    assert daemon.stop() == 0


def test_without_the_busy_poll_a_lone_request_is_still_committed_at_once(
    observer_daemon: DaemonFactory,
) -> None:
    # The dispatcher sleeps between requests: each commit at once wakes it to look again.
    config = daemon_config().replace("cycle_secs = 60", "cycle_secs = 60\nbusy_poll_us = 0")
    daemon = observer_daemon.start(config)
    post_one_at_a_time(daemon, LONE)
    assert commits(daemon, "now") == LONE
    assert len(ids_in(daemon.directory / "ops.jsonl")) == LONE


def test_requests_that_arrive_together_share_a_commit(observer_daemon: DaemonFactory) -> None:
    daemon = observer_daemon.start(daemon_config())
    post_one_at_a_time(daemon, 3, prefix="before")  # lone: the dispatcher's last group is 1
    connections = [socket.create_connection(("127.0.0.1", daemon.port)) for _ in range(32)]
    rounds = 10
    try:
        for round_ in range(rounds):
            for k, sock in enumerate(connections):  # every request is out before any answer
                body = json.dumps({"id": f"r{round_}-{k}", "success": True}).encode()
                head = f"POST /event HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}"
                sock.sendall(head.encode() + b"\r\n\r\n" + body)
            for sock in connections:
                answer = b""
                while not answer.endswith(b"}"):
                    chunk = sock.recv(4096)
                    assert chunk, "the daemon closed a connection"
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 200 "), answer
    finally:
        for sock in connections:
            sock.close()
    grouped = commits(daemon, "group")
    at_once = commits(daemon, "now")
    # Some requests of a round may each be read alone, but most share a group commit.
    assert grouped >= 1
    assert grouped + at_once < rounds * 32 // 2 + 3
    written = ids_in(daemon.directory / "ops.jsonl")
    assert sum(written.values()) == rounds * 32 + 3 and set(written.values()) == {1}
    assert daemon.stop() == 0


@pytest.mark.parametrize(
    ("sinks", "why"),
    [
        ("inline_writes = false\n", "the sink writes on its thread"),
        ('[sinks.copy]\nplugin = "jsonl"\npath = "copy.jsonl"\n', "two ack-holding sinks"),
    ],
)
def test_what_cannot_be_written_at_once_goes_to_the_dispatcher(
    observer_daemon: DaemonFactory, sinks: str, why: str
) -> None:
    daemon = observer_daemon.start(daemon_config() + sinks)
    post_one_at_a_time(daemon, 10)
    assert commits(daemon, "now") == 0, why
    assert commits(daemon, "group") == 10, why
    assert len(ids_in(daemon.directory / "ops.jsonl")) == 10
    assert daemon.stop() == 0
