"""Test helpers for observer-core and its plugins (a ``pytest11`` plugin).

Installed with observer-core, so a plugin author's tests get these fixtures
without importing anything:

- ``observer_daemon``: start the real daemon as a subprocess on a config you
  write; talk to it over loopback; stop it with a signal or ``kill -9``.
- ``stub_server``: a small real HTTP server that records requests and answers
  as you program it (status, JSON body, delay, disconnect) — a gateway, an LLM
  or a code-review service.
- :func:`free_port` and :func:`wait_for` (a bounded poll, never a bare sleep).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from .components import Context
from .metrics import Metrics
from .state import StateStore

__all__ = [
    "Daemon",
    "RecordedRequest",
    "StubReply",
    "StubServer",
    "free_port",
    "make_context",
    "observer_daemon",
    "stub_server",
    "wait_for",
]

_T = TypeVar("_T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(
    predicate: Callable[[], _T], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> _T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except Exception as exc:  # the condition may raise until it holds (e.g. connection refused)
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    detail = f" (last error: {last_error!r})" if last_error else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}{detail}")


class _StandaloneObserver:
    """The Observer a component sees when it runs outside an engine."""

    def ring_len(self) -> int:
        return 0

    def stats(self) -> dict[str, Any]:
        return {}

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "ops_in_ring": 0, "checks": {}}

    def metrics_text(self) -> str:
        return ""


def make_context(
    directory: Path,
    instance: str = "sinks.test",
    *,
    published: list[Any] | None = None,
) -> Context:
    """A :class:`~observer_core.Context` for unit-testing one component outside the daemon.

    Paths resolve from ``directory``; state lives in ``directory/state``;
    ``publish`` appends to ``published``. ``spawn`` is not available (use the
    ``observer_daemon`` fixture for components that spawn work).
    """
    sink: list[Any] = [] if published is None else published

    async def publish(findings: Any) -> None:
        sink.extend(findings)

    def spawn(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("spawn() needs a running daemon")

    return Context(
        instance=instance,
        kind=instance.split(".")[0],
        config_dir=directory,
        logger=logging.getLogger(f"observer.{instance}"),
        metrics=Metrics(),
        state=StateStore(directory / "state" / instance),
        max_field_bytes=65536,
        observer=_StandaloneObserver(),
        spawn=spawn,
        publish=publish,
    )


# -- the daemon as a subprocess ---------------------------------------------


@dataclass
class Daemon:
    """A running ``observer-core run`` process and the folder its config lives in."""

    process: subprocess.Popen[bytes]
    directory: Path
    config_path: Path
    port: int | None
    stderr_path: Path
    stdout_path: Path

    @property
    def url(self) -> str:
        """Base URL of its ``http`` source."""
        assert self.port is not None, "this daemon has no http source"
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait until it logs that it runs (and answers ``/health`` when it listens)."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.process.returncode}:\n{self.logs()}"
                )
            if "observer-core running" not in self.logs():
                return False
            if self.port is None:
                return True
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200

        wait_for(ready, timeout, what="the daemon to be ready")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait for the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """``kill -9``: no chance to flush or save anything."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def wait_log(self, text: str, timeout: float = 15.0) -> None:
        wait_for(lambda: text in self.logs(), timeout, what=f"log line containing {text!r}")

    def post_events(self, events: list[dict[str, Any]]) -> None:
        """POST ``events`` to ``/events`` as a JSON array; fail unless all are accepted."""
        reply = httpx.post(f"{self.url}/events", json=events, timeout=10)
        assert reply.status_code == 200, reply.text

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample of ``/metrics`` (None when it is not there)."""
        body = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        sample = f"{name}{{{body}}} " if labels else f"{name} "
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith(sample):
                return float(line[len(sample) :])
        return None

    def cycles(self) -> int:
        """How many cycles it has logged so far."""
        found = re.findall(r"\bcycle (\d+): total_ops=", self.logs())
        return int(found[-1]) if found else 0

    def wait_cycles(self, count: int = 1, timeout: float = 15.0) -> None:
        """Wait until ``count`` more cycles have run."""
        target = self.cycles() + count
        wait_for(lambda: self.cycles() >= target, timeout, what=f"cycle {target}")


class DaemonFactory:
    """Writes configs into a temp folder and starts daemons on them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Daemon] = []

    def write_config(self, text: str, name: str = "observer.toml") -> Path:
        path = self.directory / name
        path.write_text(textwrap.dedent(text))
        return path

    def start(
        self,
        config: str | None = None,
        *,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        port: int | None = None,
        wait: bool = True,
        name: str = "observer.toml",
    ) -> Daemon:
        """Start ``observer-core run`` on ``config`` (TOML text; dedented).

        ``port`` is where its http source listens (for :attr:`Daemon.url`);
        ``{port}`` in ``config`` is replaced by it, a free one when not given.
        """
        if config is not None and "{port}" in config and port is None:
            port = free_port()
        path = self.directory / name
        if config is not None:
            path = self.write_config(config.replace("{port}", str(port)), name)
        index = len(self.started)
        stderr_path = self.directory / f"daemon{index}.stderr"
        stdout_path = self.directory / f"daemon{index}.stdout"
        environment = {**os.environ, **(env or {})}
        with open(stderr_path, "wb") as err, open(stdout_path, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "observer_core", "run", "--config", str(path), *args],
                cwd=self.directory,
                stdout=out,
                stderr=err,
                env=environment,
            )
        daemon = Daemon(process, self.directory, path, port, stderr_path, stdout_path)
        self.started.append(daemon)
        if wait:
            daemon.wait_ready()
        return daemon

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``observer-core ARGS`` to completion in the temp folder."""
        return subprocess.run(
            [sys.executable, "-m", "observer_core", *args],
            cwd=self.directory,
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=timeout,
        )

    def close(self) -> None:
        for daemon in self.started:
            if daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait(10)


@pytest.fixture
def observer_daemon(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Start real daemons in ``tmp_path``; every one still running is killed at teardown."""
    factory = DaemonFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


# -- a stub HTTP server -----------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class StubReply:
    """How the stub answers: ``status`` and ``body`` (JSON-encoded unless bytes),
    after ``delay`` seconds; ``disconnect`` closes the socket without answering."""

    status: int = 200
    body: Any = field(default_factory=dict)
    delay: float = 0.0
    disconnect: bool = False
    headers: dict[str, str] = field(default_factory=dict)


class StubServer:
    """A threaded HTTP server on 127.0.0.1 that records requests.

    ``replies[path]`` is a :class:`StubReply` or a callable taking the
    :class:`RecordedRequest` and returning one; ``default`` answers the rest.
    ``port`` picks the port (e.g. to bring a "down" service back where it was).
    """

    def __init__(self, port: int = 0) -> None:
        self.requests: list[RecordedRequest] = []
        self.replies: dict[str, StubReply | Callable[[RecordedRequest], StubReply]] = {}
        self.default = StubReply()
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                request = RecordedRequest(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                with stub._lock:
                    stub.requests.append(request)
                route = stub.replies.get(self.path.split("?")[0], stub.default)
                reply = route(request) if callable(route) else route
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.disconnect:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                payload = (
                    reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                )
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def received(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [request for request in self.requests if request.path.split("?")[0] == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def stub_server() -> Iterator[Callable[..., StubServer]]:
    """Make stub HTTP servers (``stub_server()``, or ``stub_server(port=N)``); all are
    closed at teardown."""
    servers: list[StubServer] = []

    def make(port: int = 0) -> StubServer:
        server = StubServer(port)
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.close()
