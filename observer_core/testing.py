"""Test helpers for observer-core and its plugins (a ``pytest11`` plugin).

Installed with observer-core, so a plugin author's tests get these fixtures
without importing anything:

- ``observer_engine``: run the engine in-process on a config you write, with
  the plugin under test registered (installed or not), a ``collect`` sink that
  keeps what it receives, and cycles you trigger yourself
  (``await engine.run_cycle()``). See :class:`EngineFactory`.
- ``observer_daemon``: start the real daemon as a subprocess on a config you
  write; talk to it over loopback; stop it with a signal or ``kill -9``.
- ``stub_server``: a small real HTTP server that records requests and answers
  as you program it (status, JSON body, delay, disconnect) — a gateway, an LLM
  or a code-review service.
- ``installed_package`` (session): ``pip install`` a plugin distribution from
  its folder, to test its entry point as users get it.
- :func:`make_context` (one component outside any engine), :func:`free_port`
  and :func:`wait_for` (a bounded poll, never a bare sleep).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import anyio
import anyio.abc
import httpx
import msgspec
import pytest

from .components import Analyzer, Component, Context, Sink, SinkConfig, Source
from .config import ObserverConfig, load_config
from .engine import Engine
from .hookspecs import RowFormat, hookimpl
from .metrics import Metrics
from .plugins import LOCAL, Registry, load_registry
from .records import BUILTIN_FINDING_KINDS, Finding, Op, Record
from .state import StateStore

__all__ = [
    "COLLECT_PLUGIN",
    "CollectConfig",
    "CollectingSink",
    "Daemon",
    "DaemonFactory",
    "EngineFactory",
    "GiveUp",
    "InstalledPackage",
    "PackageInstaller",
    "RecordedRequest",
    "RunningEngine",
    "StubReply",
    "StubServer",
    "free_port",
    "installed_package",
    "make_context",
    "observer_daemon",
    "observer_engine",
    "plugin_of",
    "stub_server",
    "wait_for",
]

_T = TypeVar("_T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class GiveUp(AssertionError):
    """Raised by a :func:`wait_for` predicate: fail now, the condition can no longer hold."""


def wait_for(
    predicate: Callable[[], _T], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> _T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except GiveUp:
            raise
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


def _write_dedented(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


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
                raise GiveUp(f"daemon exited with {self.process.returncode}:\n{self.logs()}")
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
        return _write_dedented(self.directory / name, text)

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

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
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
            wbufsize = -1  # one write per reply: no Nagle delay between headers and body

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


# -- the engine in-process ----------------------------------------------------


class CollectConfig(SinkConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[sinks.NAME]`` with ``plugin = "collect"`` (registered by ``observer_engine``)."""

    accepts: list[str] = msgspec.field(default_factory=lambda: ["op", *BUILTIN_FINDING_KINDS])
    """Record kinds it receives: ops and every built-in finding kind unless told otherwise."""
    holds_ack: bool = True
    """Ops wait for this sink before ``emit`` returns (as with ``jsonl``); false puts it
    behind its own queue (as ``gateway_log``)."""


class CollectingSink(Sink):
    """Keeps every record it receives in memory, for tests to look at."""

    name: ClassVar[str] = "collect"
    Config = CollectConfig
    config: CollectConfig

    def __init__(self, config: CollectConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        # holds_ack is per instance here; the engine reads it once the instance is built.
        setattr(self, "holds_ack", config.holds_ack)  # noqa: B010
        self.batches: list[list[Record]] = []
        """Each ``write`` call's records, in order."""
        self.calls: list[str] = []
        """The lifecycle calls it got, in order: open, flush, reopen, aclose."""
        self.failing: Exception | None = None
        """Set to an exception to make ``write`` raise it (a sink that is down)."""

    @property
    def records(self) -> list[Record]:
        return [record for batch in self.batches for record in batch]

    @property
    def ops(self) -> list[Op]:
        return [record for record in self.records if isinstance(record, Op)]

    def findings(self, kind: str | None = None) -> list[Finding]:
        """Findings received, all of them or those of one ``kind``."""
        return [
            record
            for record in self.records
            if isinstance(record, Finding) and (kind is None or record.kind == kind)
        ]

    async def open(self) -> None:
        self.calls.append("open")

    async def write(self, records: Sequence[Record]) -> None:
        if self.failing is not None:
            raise self.failing
        self.batches.append(list(records))

    async def flush(self) -> None:
        self.calls.append("flush")

    async def reopen(self) -> None:
        self.calls.append("reopen")

    async def aclose(self) -> None:
        self.calls.append("aclose")


class _CollectPlugin:
    @hookimpl
    def observer_register_sinks(self, register: Callable[[type[Sink]], None]) -> None:
        register(CollectingSink)


COLLECT_PLUGIN = _CollectPlugin()
"""The plugin object that registers the ``collect`` sink (``observer_engine`` adds it)."""


class _Components:
    """A plugin object that registers what it was given through every hook."""

    def __init__(
        self,
        components: Sequence[type[Component]],
        finding_kinds: Iterable[str],
        row_formats: Mapping[str, RowFormat],
    ) -> None:
        self.components = components
        self.finding_kinds = list(finding_kinds)
        self.row_formats = dict(row_formats)

    def _each(self, base: type[Component], register: Callable[[Any], None]) -> None:
        for cls in self.components:
            if issubclass(cls, base):
                register(cls)

    @hookimpl
    def observer_register_sources(self, register: Callable[[type[Source]], None]) -> None:
        self._each(Source, register)

    @hookimpl
    def observer_register_sinks(self, register: Callable[[type[Sink]], None]) -> None:
        self._each(Sink, register)

    @hookimpl
    def observer_register_analyzers(self, register: Callable[[type[Analyzer]], None]) -> None:
        self._each(Analyzer, register)

    @hookimpl
    def observer_register_finding_kinds(self, register: Callable[[str], None]) -> None:
        for kind in self.finding_kinds:
            register(kind)

    @hookimpl
    def observer_register_row_formats(self, register: Callable[[str, RowFormat], None]) -> None:
        for name, mapper in self.row_formats.items():
            register(name, mapper)


def plugin_of(
    *components: type[Component],
    finding_kinds: Iterable[str] = (),
    row_formats: Mapping[str, RowFormat] | None = None,
) -> object:
    """A plugin registering ``components`` by their kind (and finding kinds, row formats),
    for tests that define components inline: ``plugins=[plugin_of(MyAnalyzer)]``."""
    return _Components(components, finding_kinds, row_formats or {})


_KIT_OBSERVER_TABLE = """\
[observer]
cycle_secs = 3600      # cycles run when the test says: await engine.run_cycle()
state_dir = "state"
"""


class _KitEngine(Engine):
    """The engine with a step timeout of the test's choosing, and its spawned work and
    sink writes counted so that a test can wait for them to finish."""

    def __init__(self, config: ObserverConfig, step_timeout: float | None) -> None:
        super().__init__(config)
        self._kit_step_timeout = step_timeout
        self.spawned_running = 0
        self.writes_running = 0
        for item in self._sinks:
            assert isinstance(item.component, Sink)
            self._count_writes(item.component)

    def _count_writes(self, sink: Sink) -> None:
        """Wrap ``sink.write`` so that :meth:`busy` sees a write in progress."""
        write = sink.write

        async def counted(records: Sequence[Record]) -> None:
            self.writes_running += 1
            try:
                await write(records)
            finally:
                self.writes_running -= 1

        sink.write = counted  # type: ignore[method-assign]

    def _step_timeout(self) -> float:
        if self._kit_step_timeout is None:
            return super()._step_timeout()
        return self._kit_step_timeout

    def _spawn(
        self,
        ctx: Context,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        timeout: float | None,
    ) -> None:
        super()._spawn(ctx, fn, args, timeout)
        self.spawned_running += 1

    async def _guarded(
        self,
        ctx: Context,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        timeout: float | None,
    ) -> None:
        try:
            await super()._guarded(ctx, fn, args, timeout)
        finally:
            self.spawned_running -= 1

    def start_push_sources(self, group: anyio.abc.TaskGroup) -> None:
        for item in self._of(Source):
            source = item.component
            assert isinstance(source, Source)
            if source.is_push():
                group.start_soon(self._run_source, item, source)

    def busy(self) -> bool:
        """Ops waiting for the dispatcher or a sink queue, a write or spawned work running."""
        return bool(
            self.spawned_running
            or self.writes_running
            or self._pending
            or self._dispatching
            or any(len(pump.queue) for pump in self._pumps)
        )


@dataclass
class RunningEngine:
    """An engine that :meth:`EngineFactory.start` opened; cycles run when you call them."""

    engine: Engine
    registry: Registry
    directory: Path
    """The folder the config was written to: relative paths in it start here."""

    async def run_cycle(self) -> None:
        """One cycle: poll the per-cycle sources, then run the analyzers that are due."""
        await self.engine.run_cycle()

    async def run_cycles(self, count: int) -> None:
        for _ in range(count):
            await self.engine.run_cycle()

    async def emit(self, ops: Sequence[Op]) -> None:
        """Hand ops in as a source would."""
        await self.engine.emit(ops)

    @property
    def cycle(self) -> int:
        return self.engine.cycle

    @property
    def ring(self) -> list[Op]:
        """The ops in the ring, oldest first."""
        return list(self.engine.ring)

    def component(self, name: str) -> Component:
        """The running instance named ``name`` (``inbox``, or ``sources.inbox`` if ambiguous)."""
        found = [
            item.component
            for item in self.engine.instances
            if name in (item.spec.qualified, item.spec.name)
        ]
        if len(found) != 1:
            known = ", ".join(item.spec.qualified for item in self.engine.instances)
            problem = "no instance" if not found else "more than one instance"
            raise LookupError(f"{problem} named {name!r} (instances: {known})")
        return found[0]

    def sink(self, name: str) -> CollectingSink:
        """The ``collect`` sink instance named ``name``."""
        sink = self.component(name)
        if not isinstance(sink, CollectingSink):
            raise TypeError(f"{name!r} is a {type(sink).__name__}, not a collect sink")
        return sink

    def errors(self, name: str) -> int:
        """``observer_instance_errors_total`` of one instance (``sources.inbox``)."""
        return int(self.engine.metrics.instance_errors.get(instance=name))

    def metric(self, name: str, **labels: str) -> float:
        """One sample of a metric family (0 when never set); see ``/metrics``."""
        family = self.engine.metrics._families.get(name)
        if family is None:
            raise LookupError(f"no metric named {name!r}")
        key = tuple(sorted(labels.items()))
        return dict(family.samples()).get(key, 0.0)

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait until handed-in ops reached every sink and spawned work has finished."""
        engine = self.engine
        assert isinstance(engine, _KitEngine)
        with anyio.fail_after(timeout):
            while engine.busy():
                await anyio.sleep(0.005)

    async def wait_until(
        self, predicate: Callable[[], Any], timeout: float = 5.0, what: str = ""
    ) -> None:
        """Poll ``predicate`` (without blocking the loop) until it holds; fail after ``timeout``."""
        try:
            with anyio.fail_after(timeout):
                while not predicate():
                    await anyio.sleep(0.01)
        except TimeoutError:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate}"
            ) from None


class EngineFactory:
    """Runs the engine in-process on configs written into ``directory``.

    ::

        async with observer_engine.start(CONFIG, plugins=[my_plugin]) as engine:
            await engine.run_cycle()
            assert engine.sink("out").ops

    ``plugins`` are modules (or objects) with ``@hookimpl`` functions, registered
    beside the installed ones, so a plugin is testable before it is installed.
    The ``collect`` sink (:class:`CollectingSink`) is always registered. Without
    an ``[observer]`` table the config gets one with a one-hour ``cycle_secs``
    and ``state_dir = "state"``: the timer never fires, cycles run when the
    test calls them. Push sources (``run(emit)``) start as in the daemon.
    Each poll and analyze is cut off after ``step_timeout`` seconds (the
    daemon uses ``max(cycle_secs, 10)``); ``None`` keeps the daemon's rule.
    Leaving the block shuts down as SIGTERM does: input and spawned work are
    cancelled, sinks drained and flushed, every instance closed.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @asynccontextmanager
    async def start(
        self,
        config: str,
        *,
        plugins: Iterable[object] = (),
        env: Mapping[str, str] | None = None,
        step_timeout: float | None = 5.0,
        name: str = "observer.toml",
    ) -> AsyncIterator[RunningEngine]:
        text = textwrap.dedent(config)
        if not re.search(r"^\s*\[observer\]", text, re.MULTILINE):
            text = _KIT_OBSERVER_TABLE + text
        path = _write_dedented(self.directory / name, text)
        registry = load_registry([(COLLECT_PLUGIN, None), *((plugin, None) for plugin in plugins)])
        local = [
            str(error)
            for error in registry.errors
            if error.origin.distribution == LOCAL.distribution
        ]
        if local:
            raise AssertionError("plugins under test did not register:\n" + "\n".join(local))
        loaded = load_config(path, registry, {**os.environ, **(env or {})})
        engine = _KitEngine(loaded, step_timeout)
        async with engine.running() as inputs:
            engine.start_push_sources(inputs)
            try:
                yield RunningEngine(engine, registry, self.directory)
            finally:
                inputs.cancel_scope.cancel()


@pytest.fixture
def observer_engine(tmp_path: Path) -> EngineFactory:
    """Run the engine in-process on configs written into ``tmp_path`` (:class:`EngineFactory`)."""
    return EngineFactory(tmp_path)


# -- installing a plugin distribution -------------------------------------------


@dataclass(frozen=True)
class InstalledPackage:
    name: str
    version: str
    target: Path | None
    """The folder it went to with ``target=``; None: the running environment."""


class PackageInstaller:
    """``pip install --no-deps`` distributions from their folders, once each.

    The folder is copied first, so a build leaves nothing behind in it. Into
    the running environment by default (uninstalled by :meth:`close` unless it
    was installed before; an editable install is left alone, not replaced), or
    into ``target`` (a folder to put on ``PYTHONPATH``: nothing else sees it).
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._done: dict[tuple[Path, Path | None], InstalledPackage] = {}
        self._to_uninstall: list[str] = []

    def __call__(self, folder: Path | str, *, target: Path | None = None) -> InstalledPackage:
        source = Path(folder).resolve()
        key = (source, target)
        if key not in self._done:
            self._done[key] = self._install(source, target)
        return self._done[key]

    def _install(self, source: Path, target: Path | None) -> InstalledPackage:
        project = tomllib.loads((source / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        name, version = str(project["name"]), str(project.get("version", ""))
        before = _installed_version(name) if target is None else None
        if before == "editable":
            return InstalledPackage(name, version, None)
        copy = self.workdir / f"{name}-src-{len(self._done)}"
        shutil.copytree(
            source,
            copy,
            ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", ".*_cache"),
        )
        where = ["--target", str(target)] if target is not None else ["--force-reinstall"]
        _pip("install", "--no-deps", *where, str(copy))
        importlib.invalidate_caches()
        if target is None and before is None:
            self._to_uninstall.append(name)
        return InstalledPackage(name, version, target)

    def close(self) -> None:
        for name in reversed(self._to_uninstall):
            _pip("uninstall", "-y", name)
        self._to_uninstall.clear()
        importlib.invalidate_caches()


def _installed_version(name: str) -> str | None:
    """``"editable"``, the installed version, or None when ``name`` is not installed."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(name)
    except PackageNotFoundError:
        return None
    direct = dist.read_text("direct_url.json")
    if direct and json.loads(direct).get("dir_info", {}).get("editable"):
        return "editable"
    return dist.version


def _pip(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise AssertionError(f"pip {' '.join(args)} failed:\n{result.stdout}{result.stderr}")


@pytest.fixture(scope="session")
def installed_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PackageInstaller]:
    """``installed_package(folder)`` pip-installs a distribution for this session (see
    :class:`PackageInstaller`); what it installed into the environment is removed at the end."""
    installer = PackageInstaller(tmp_path_factory.mktemp("packages"))
    try:
        yield installer
    finally:
        installer.close()
