"""Slow, idle and flooding clients: others are still served, the slow are cut off,
and the connections the daemon holds stay bounded (CONTRACT §6, ``http`` keys).

Slowloris clients trickle their headers, or their body, one byte at a time; idle
keep-alive connections sit after an answer; a flood opens far more connections than
``max_connections``. Meanwhile a well-behaved client keeps posting events.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from reliability_kit import open_sockets, record, ring_len

from observer_core.testing import Daemon, DaemonFactory, wait_for

MAX_CONNECTIONS = 64
HEADER_TIMEOUT = 2.0
IDLE_TIMEOUT = 2.0
SLACK = 1.5
"""How late after its timeout a connection may be cut (a loaded 2-core machine)."""
CONFIG = f"""
[observer]
cycle_secs = 60
[sources.http]
port = {{port}}
max_connections = {MAX_CONNECTIONS}
header_timeout_secs = {HEADER_TIMEOUT}
body_timeout_secs = {HEADER_TIMEOUT}
idle_timeout_secs = {IDLE_TIMEOUT}
[sinks.ops]
plugin = "jsonl"
path = "ops.jsonl"
"""
HEADERS_TRICKLED = b"POST /event HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
BODY_TRICKLED = b"POST /event HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 300\r\n\r\n"


@pytest.fixture
def daemon(observer_daemon: DaemonFactory) -> Daemon:
    return observer_daemon.start(CONFIG)


class Trickle:
    """Connections that each send ``first`` at once, then ``rest`` one byte every ``interval``,
    noting when the server cuts them and whatever it answered."""

    def __init__(self, port: int, count: int, first: bytes, rest: bytes, interval: float) -> None:
        self.sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
        self.opened = time.monotonic()
        self.closed_after: dict[int, float] = {}
        self.answers: dict[int, bytes] = {}
        self._first, self._rest, self._interval = first, rest, interval
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        for index, sock in enumerate(self.sockets):
            sock.setblocking(False)
            sock.send(self._first)
            selector.register(sock, selectors.EVENT_READ, index)
        sent = 0
        while len(self.closed_after) < len(self.sockets) and time.monotonic() - self.opened < 30:
            for key, _ in selector.select(self._interval):
                self._read(selector, key.fileobj, key.data)  # type: ignore[arg-type]
            if sent < len(self._rest):
                byte = self._rest[sent : sent + 1]
                sent += 1
                for index, sock in enumerate(self.sockets):
                    if index not in self.closed_after:
                        try:
                            sock.send(byte)
                        except OSError:
                            self._closed(selector, sock, index)
        selector.close()

    def _read(self, selector: selectors.BaseSelector, sock: socket.socket, index: int) -> None:
        try:
            data = sock.recv(4096)
        except OSError:
            data = b""
        if data:
            self.answers[index] = self.answers.get(index, b"") + data
        else:
            self._closed(selector, sock, index)

    def _closed(self, selector: selectors.BaseSelector, sock: socket.socket, index: int) -> None:
        if index not in self.closed_after:
            self.closed_after[index] = time.monotonic() - self.opened
            selector.unregister(sock)

    def wait(self, timeout: float) -> list[float]:
        self._thread.join(timeout)
        for sock in self.sockets:
            sock.close()
        return sorted(self.closed_after.values())


def served(daemon: Daemon, requests: int) -> list[float]:
    """A polite client posts ``requests`` events, one connection each; their latencies."""
    latencies = []
    for number in range(requests):
        started = time.monotonic()
        reply = httpx.post(f"{daemon.url}/event", json={"id": f"polite-{number}"}, timeout=5)
        latencies.append(time.monotonic() - started)
        assert reply.status_code == 200, reply.text
    return latencies


def test_slowloris_is_cut_off_while_others_are_served(daemon: Daemon) -> None:
    assert daemon.port is not None
    headers = Trickle(daemon.port, 40, b"", HEADERS_TRICKLED, 0.05)
    bodies = Trickle(daemon.port, 20, BODY_TRICKLED, b"{" * 300, 0.05)
    latencies = served(daemon, 100)
    cut = headers.wait(10) + bodies.wait(10)
    assert len(cut) == 60, "a slow connection was never cut off"
    assert max(cut) < HEADER_TIMEOUT + SLACK, f"cut off late: {max(cut):.2f}s"
    assert min(cut) >= HEADER_TIMEOUT - 0.1, f"cut off early: {min(cut):.2f}s"
    answers = [*headers.answers.values(), *bodies.answers.values()]
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), answers[:3]
    assert ring_len(daemon) == 100
    assert max(latencies) < 2.0, f"polite client waited {max(latencies):.2f}s"
    record(
        "slow_clients",
        slowloris_connections=60,
        slowloris_cut_after_secs=f"{min(cut):.2f}-{max(cut):.2f}",
        polite_requests_during_attack=len(latencies),
        polite_max_latency_ms=round(max(latencies) * 1000, 1),
    )


def test_idle_keep_alive_connections_are_closed(daemon: Daemon) -> None:
    assert daemon.port is not None
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    idle = Trickle(daemon.port, 30, request, b"", 0.05)
    closed = idle.wait(IDLE_TIMEOUT + 5)
    assert len(closed) == 30
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in idle.answers.values())
    assert len(idle.answers) == 30
    assert min(closed) >= IDLE_TIMEOUT - 0.1 and max(closed) < IDLE_TIMEOUT + SLACK
    record(
        "slow_clients", idle_connections_closed_after_secs=f"{min(closed):.2f}-{max(closed):.2f}"
    )


FLOOD_HEADER_TIMEOUT = 6.0
"""Long enough for the flood's connections to be held while they are counted."""


@pytest.fixture
def flood() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def refusals(sockets: list[socket.socket], expected: int, within: float) -> int:
    """How many of ``sockets`` were answered 503, waiting up to ``within`` for ``expected``."""
    selector = selectors.DefaultSelector()
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    refused = 0
    deadline = time.monotonic() + within
    while refused < expected and (left := deadline - time.monotonic()) > 0:
        for key, _ in selector.select(left):
            answered = key.fileobj
            assert isinstance(answered, socket.socket)
            selector.unregister(answered)
            with contextlib.suppress(OSError):
                refused += answered.recv(200).startswith(b"HTTP/1.1 503 ")
    selector.close()
    return refused


def test_connection_flood_is_bounded_and_refused_politely(
    observer_daemon: DaemonFactory, flood: list[socket.socket]
) -> None:
    timeout = f"header_timeout_secs = {FLOOD_HEADER_TIMEOUT}"
    daemon = observer_daemon.start(
        CONFIG.replace(f"header_timeout_secs = {HEADER_TIMEOUT}", timeout)
    )
    assert daemon.port is not None
    baseline = open_sockets(daemon.process.pid)
    for _ in range(5 * MAX_CONNECTIONS):  # past the accept backlog, connect() takes a while
        flood.append(socket.create_connection(("127.0.0.1", daemon.port)))
    expected = len(flood) - MAX_CONNECTIONS
    refused = refusals(flood, expected, 5.0)
    held = open_sockets(daemon.process.pid) - baseline
    assert held <= MAX_CONNECTIONS, f"the daemon holds {held} connections"
    assert refused == expected, f"{refused} of {expected} refused with 503"
    busy = httpx.get(f"{daemon.url}/health", timeout=5)
    assert busy.status_code == 503 and "too many connections" in busy.text

    cut_off = time.monotonic()
    wait_for(
        lambda: httpx.post(f"{daemon.url}/event", json={}, timeout=5).status_code == 200,
        timeout=FLOOD_HEADER_TIMEOUT + 5,
        what="the flood to be cut off",
    )
    record(
        "slow_clients",
        flood_connections=len(flood),
        max_connections=MAX_CONNECTIONS,
        flood_held_by_daemon=held,
        flood_refused_503=refused,
        served_again_after_secs=round(time.monotonic() - cut_off, 2),
    )
