"""Test helpers for the fleet plugins: a real ``nats-server`` with JetStream, per test.

Tests import the ``nats_server`` fixture into their ``conftest.py``
(``from observer_plugins.fleet.testing import nats_server``). Each test gets its
own server on free loopback ports with its own store folder, which it may stop,
``kill -9`` and start again (the stream survives, as on disk).

Without the ``nats-server`` binary (or nats-py) the tests are skipped, unless
``OBSERVER_REQUIRE_NATS=1`` (CI): then they fail, never a silent skip.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = [
    "NatsServer",
    "Stored",
    "nats_binary",
    "nats_server",
    "publish",
    "read_stream",
    "require_nats_py",
]

READY_TIMEOUT_SECS = 15.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class NatsServer:
    """One ``nats-server -js`` process on 127.0.0.1, with its store in ``directory``."""

    def __init__(self, binary: str, directory: Path, *options: str) -> None:
        self.binary = binary
        self.directory = directory
        self.options = options
        """More command-line options, e.g. ``("--auth", "s3cret")``."""
        self.port = _free_port()
        self.monitor_port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it (same ports, same store) and wait until ``/healthz`` says ok."""
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115 (the child keeps it)
        with log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    *("-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port)),
                    *("-js", "-sd", str(self.directory / "store")),
                    *self.options,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECS
        healthz = f"http://127.0.0.1:{self.monitor_port}/healthz"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"nats-server exited: {self.log()}")
            try:
                with urllib.request.urlopen(healthz, timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"nats-server not ready after {READY_TIMEOUT_SECS}s: {self.log()}")

    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop it (``signal.SIGKILL`` for ``kill -9``) and wait for it to exit."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signum)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def restart(self, signum: int = signal.SIGKILL) -> None:
        self.stop(signum)
        self.start()


def _missing(what: list[str]) -> None:
    """Skip the test for lack of ``what``; fail it when ``OBSERVER_REQUIRE_NATS=1`` (CI)."""
    if what:
        message = "needs " + " and ".join(what)
        if os.environ.get("OBSERVER_REQUIRE_NATS") == "1":
            pytest.fail(f"OBSERVER_REQUIRE_NATS=1 but this test {message}")
        pytest.skip(message)


def require_nats_py() -> None:
    """Skip the test (fail it in CI) when nats-py is not installed."""
    if importlib.util.find_spec("nats") is None:
        _missing(["nats-py (pip install 'observer-core[nats]')"])


def nats_binary() -> str:
    """The ``nats-server`` to use; skips the test (fails it in CI) when it or nats-py is missing."""
    binary = shutil.which("nats-server")
    require_nats_py()
    if binary is None:
        _missing(["nats-server (bash ci/nats-server.sh install)"])
    assert binary is not None
    return binary


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A running ``nats-server`` with JetStream for this test (stopped at teardown).

    A server that exited on its own during the test (not through :meth:`NatsServer.stop`)
    fails the teardown with the end of its log, so that a crash is told apart.
    """
    server = NatsServer(nats_binary(), tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        exited = server.process is not None and server.process.poll() is not None
        server.stop()
    if exited:
        raise AssertionError(f"nats-server exited during the test on its own:\n{server.log()}")


@dataclass(frozen=True)
class Stored:
    """One message read back from a stream."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]


async def read_stream(url: str, stream: str, subject: str = ">") -> list[Stored]:
    """Every message of ``stream`` on ``subject`` (wildcards allowed), oldest first."""
    import nats
    from nats.js import api

    client = await nats.connect(url)
    try:
        js = client.jetstream()
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL
        )
        subscription = await js.pull_subscribe(subject, stream=stream, config=config)
        wanted = (await subscription.consumer_info()).num_pending or 0
        stored: list[Stored] = []
        deadline = time.monotonic() + READY_TIMEOUT_SECS
        while len(stored) < wanted and time.monotonic() < deadline:
            try:
                msgs = await subscription.fetch(min(wanted - len(stored), 1000), timeout=1)
            except TimeoutError:
                continue
            stored.extend(
                Stored(msg.metadata.sequence.stream, msg.subject, msg.data, dict(msg.headers or {}))
                for msg in msgs
            )
        return stored
    finally:
        await client.close()


async def publish(url: str, stream: str, subject: str, payloads: Sequence[bytes]) -> None:
    """Create ``stream`` on ``subject`` if needed and publish ``payloads`` there (with acks)."""
    import nats
    from nats.js.errors import NotFoundError

    client = await nats.connect(url)
    try:
        js = client.jetstream()
        try:
            await js.stream_info(stream)
        except NotFoundError:
            await js.add_stream(name=stream, subjects=[subject])
        for payload in payloads:
            await js.publish(subject, payload, stream=stream)
    finally:
        await client.close()
