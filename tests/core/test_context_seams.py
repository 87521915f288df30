"""The Context's clock and HTTP client in the daemon's engine: wall time, the network,
and clients closed by the engine (the lifecycle each analyzer used to write itself)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import ClassVar

import httpx
import pytest

from observer_core import Analyzer, Finding, Window
from observer_core.testing import StubReply, plugin_of


class Caller(Analyzer):
    """Calls ``{url}`` each cycle through ``ctx.http_client()`` and emits what it saw."""

    name: ClassVar[str] = "caller"
    emits: ClassVar[tuple[str, ...]] = ("diagnosis",)
    made: ClassVar[list[httpx.AsyncClient]] = []
    url: ClassVar[str] = ""

    async def open(self) -> None:
        self.client = self.ctx.http_client(timeout=5)
        Caller.made.append(self.client)

    async def analyze(self, window: Window) -> Sequence[Finding]:
        reply = await self.client.get(Caller.url)
        seen = {"status": reply.status_code, "now": self.ctx.clock.now()}
        return [Finding("diagnosis", {**seen, "timestamp": self.ctx.clock.timestamp()})]


CONFIG = """
[analyzers.caller]

[sinks.out]
plugin = "collect"
accepts = ["diagnosis"]
"""


@pytest.mark.anyio
async def test_the_daemon_gives_wall_time_and_the_network_and_closes_clients(
    observer_engine, stub_server
):
    service = stub_server()
    service.default = StubReply(status=201)
    Caller.url, Caller.made = f"{service.url}/ping", []
    async with observer_engine.start(CONFIG, plugins=[plugin_of(Caller)]) as engine:
        before = time.time()
        await engine.run_cycle()
        [finding] = engine.sink("out").findings("diagnosis")
        assert finding.data["status"] == 201
        assert before - 1 <= finding.data["now"] <= time.time() + 1
        assert finding.data["timestamp"].endswith("Z")
        [client] = Caller.made
        assert not client.is_closed
    assert client.is_closed, "the engine closes what ctx.http_client() made"
    assert len(service.received("/ping")) == 1
