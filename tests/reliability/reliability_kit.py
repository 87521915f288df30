"""Shared helpers of the reliability tests: the figures printed at the end of the run,
an at-least-once load client, raw-socket exchanges, and readers for files and processes.

Every figure a test records with :func:`record` is printed in the "reliability
figures" section of pytest's terminal summary (and written as JSON to
``$OBSERVER_RELIABILITY_FIGURES`` when set), so CI shows what was proved.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from observer_core.testing import Daemon, DaemonFactory

FIGURES: dict[str, dict[str, Any]] = {}
"""area -> figure -> value, in the order recorded."""

FUZZ_EXAMPLES = int(os.environ.get("OBSERVER_FUZZ_EXAMPLES") or "300")
"""Hypothesis examples per fuzz test (CI may raise it)."""


def record(area: str, **values: Any) -> None:
    """Keep figures of ``area`` for the end-of-run summary."""
    FIGURES.setdefault(area, {}).update(values)


# -- files ----------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSONL file, decoded (a missing file has none)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def id_counts(path: Path) -> Counter[str]:
    """How often each ``id`` appears in a JSONL file of ops."""
    return Counter(row["id"] for row in read_jsonl(path) if "id" in row)


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def snapshot(root: Path, skip: Callable[[Path], bool] = lambda path: False) -> dict[str, int]:
    """Every file under ``root`` with its size (what a rejected request must not change)."""
    return {
        str(path.relative_to(root)): path.stat().st_size
        for path in sorted(root.rglob("*"))
        if path.is_file() and not skip(path)
    }


# -- processes ------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    """Resident memory of a process, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1))


def open_sockets(pid: int) -> int:
    """Sockets a process holds open (listening ones included)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed while we looked
            count += os.readlink(fd).startswith("socket:")
    return count


def errors_logged(daemon: Daemon) -> list[str]:
    """Log lines at ERROR or above, and tracebacks."""
    return [
        line
        for line in daemon.logs().splitlines()
        if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")
    ]


@contextmanager
def daemon_factory(directory: Path) -> Iterator[DaemonFactory]:
    """A :class:`DaemonFactory` outside a function-scoped fixture (for module-scoped daemons)."""
    factory = DaemonFactory(directory)
    try:
        yield factory
    finally:
        factory.close()


def ring_len(daemon: Daemon) -> int:
    return int(httpx.get(f"{daemon.url}/health", timeout=10).json()["ops_in_ring"])


# -- a client that retries what was not acknowledged ------------------------------


class EventPump:
    """Threads POSTing batches of events with unique ids to ``/events`` at a steady rate.

    It behaves as an at-least-once client does: a batch that gets no 200 (the
    connection was refused or reset, or the answer was 503) is sent again with
    the same ids until acknowledged. ``acked`` holds the ids acknowledged,
    ``retried`` those sent more than once.
    """

    def __init__(
        self,
        port: Callable[[], int],
        make_event: Callable[[str], dict[str, Any]],
        *,
        rate: float = 3000.0,
        threads: int = 8,
        batch: int = 10,
        prefix: str = "c",
    ) -> None:
        self._port = port
        self._make_event = make_event
        self._interval = batch * threads / rate
        self._batch = batch
        self._prefix = prefix
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(index,), daemon=True)
            for index in range(threads)
        ]
        self.acked: set[str] = set()
        self.retried: set[str] = set()
        self.requests = 0

    def __enter__(self) -> EventPump:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
            assert not thread.is_alive(), "a load thread did not stop"

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def _run(self, index: int) -> None:
        connection: http.client.HTTPConnection | None = None
        sent = 0
        due = time.monotonic()
        while not self._stop.is_set():
            ids = [f"{self._prefix}{index}-{sent + k}" for k in range(self._batch)]
            sent += self._batch
            body = "\n".join(json.dumps(self._make_event(one)) for one in ids).encode()
            first = True
            while True:
                connection, status = self._post(connection, body)
                with self._lock:
                    self.requests += 1
                    if status == 200:
                        self.acked.update(ids)
                    elif first:
                        self.retried.update(ids)
                if status == 200 or self._stop.is_set():
                    break
                first = False
                time.sleep(0.02)
            due = max(due + self._interval, time.monotonic() - 1.0)
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def _post(
        self, connection: http.client.HTTPConnection | None, body: bytes
    ) -> tuple[http.client.HTTPConnection | None, int | None]:
        try:
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self._port(), timeout=10)
            connection.request("POST", "/events", body)
            reply = connection.getresponse()
            reply.read()
            if reply.will_close:
                connection.close()
                connection = None
            return connection, reply.status
        except (OSError, http.client.HTTPException):
            if connection is not None:
                connection.close()
            return None, None


# -- raw sockets ---------------------------------------------------------------------


def exchange(port: int, data: bytes, timeout: float = 8.0) -> bytes:
    """Send ``data``, half-close, and read until the server closes (fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before taking it all
            pass
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise AssertionError(
                    f"the server neither answered nor closed within {timeout}s; got {received!r}"
                ) from None
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return bytes(received)


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n")


def parse_responses(data: bytes) -> list[tuple[int, bytes]]:
    """Split what a server sent into (status, body) pairs, interim 1xx answers left out.
    An answer to HEAD has a Content-Length but no body: what follows it is the next answer."""
    responses: list[tuple[int, bytes]] = []
    position = 0
    while position < len(data):
        match = _STATUS_LINE.match(data, position)
        assert match, f"not a status line at {position}: {data[position : position + 80]!r}"
        end = data.index(b"\r\n\r\n", position) + 4
        status = int(match.group(1))
        length = re.search(rb"\r\ncontent-length: (\d+)\r\n", data[position:end].lower())
        position = end
        if status < 200:
            continue
        size = int(length.group(1)) if length else 0
        if data.startswith(b"HTTP/1.", position) or position == len(data):
            size = 0
        responses.append((status, data[position : position + size]))
        position += size
    return responses
