"""Helpers shared by the operator-feature tests (/ready, /tap, top, the status page)."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx

from observer_core.testing import wait_for

STAMP = "2026-01-01T00:00:00.000Z"


def event(**fields: Any) -> dict[str, Any]:
    """A valid event, with ``fields`` overriding the defaults."""
    return {
        "timestamp": STAMP,
        "endpoint": "/v1/chat",
        "input_summary": "in",
        "success": True,
        "duration_ms": 3,
        "output_summary": "out",
        "source": "agent",
        **fields,
    }


def stalled_tap(base_url: str, query: str = "", token: str | None = None) -> socket.socket:
    """Open ``GET /tap`` on a socket that will read nothing (a tiny receive buffer), and
    wait until the daemon counts it as a subscriber."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    sock.sendall(f"GET /tap{query} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode())
    return sock


def metric(base_url: str, sample: str, headers: dict[str, str] | None = None) -> float | None:
    """The value of the ``/metrics`` line starting with ``sample `` (None when absent)."""
    text = httpx.get(f"{base_url}/metrics", headers=headers or {}, timeout=10).text
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split(" ")[-1])
    return None


def read_tap_lines(sock: socket.socket, until: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Read the chunked NDJSON of a tap from ``sock`` until ``until(lines)`` holds."""
    sock.settimeout(0.5)
    buffer = b""
    lines: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    head_done = False
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            data = b""
        buffer += data
        if not head_done and b"\r\n\r\n" in buffer:
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 200"), head
            head_done = True
        while head_done:  # chunked framing: SIZE\r\nDATA\r\n
            size_end = buffer.find(b"\r\n")
            if size_end < 0:
                break
            size = int(buffer[:size_end], 16)
            if len(buffer) < size_end + 2 + size + 2:
                break
            chunk = buffer[size_end + 2 : size_end + 2 + size]
            buffer = buffer[size_end + 2 + size + 2 :]
            lines.extend(json.loads(line) for line in chunk.splitlines() if line)
        if until(lines):
            return lines
    raise AssertionError(f"tap did not deliver what was expected in {timeout}s: {lines[-5:]}")


def wait_subscribers(base_url: str, count: int, headers: dict[str, str] | None = None) -> None:
    """Wait until the daemon counts ``count`` open taps."""
    wait_for(
        lambda: metric(base_url, "observer_tap_subscribers", headers) == count,
        10,
        what=f"{count} tap subscriber(s)",
    )
