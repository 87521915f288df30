"""The ``failure_digest`` analyzer: post a digest of new failures to a ticket service.

On its cycles, when the ring holds failures it has not reported, it POSTs
``{"failures": N, "endpoints": [...]}`` to ``{url}/digest`` beside the cycle and emits
a ``failure_digest`` finding with the ticket the service answers. It reads the time
from ``ctx.clock`` and calls out through ``ctx.http_client()``, so
``observer-core replay`` and ``observer-core test`` can run it offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import httpx

from observer_core import (
    Analyzer,
    AnalyzerConfig,
    Context,
    Finding,
    RegisterAnalyzer,
    RegisterFindingKind,
    Window,
    hookimpl,
)


class DigestConfig(AnalyzerConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[analyzers.NAME]`` with ``plugin = "failure_digest"``."""

    url: str = "http://localhost:8080"
    """The ticket service: the digest is POSTed to ``{url}/digest``."""
    timeout_secs: float = 30


class FailureDigest(Analyzer):
    """Posts new failures to a ticket service; one ``failure_digest`` finding per ticket."""

    name: ClassVar[str] = "failure_digest"
    Config = DigestConfig
    config: DigestConfig
    emits: ClassVar[tuple[str, ...]] = ("failure_digest",)

    def __init__(self, config: DigestConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.next_seq = 0  # failures numbered below this were reported
        self.client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        # The engine picks where this client's requests go, and closes it.
        self.client = self.ctx.http_client(timeout=self.config.timeout_secs)

    async def analyze(self, window: Window) -> Sequence[Finding]:
        new = [op for seq, op in window.numbered() if seq >= self.next_seq and not op.success]
        if new:
            self.next_seq = window.next_seq
            endpoints = sorted({op.endpoint for op in new})
            self.ctx.spawn(self.post, len(new), endpoints, timeout=self.config.timeout_secs)
        return []

    async def post(self, failures: int, endpoints: list[str]) -> None:
        assert self.client is not None
        body = {"failures": failures, "endpoints": endpoints}
        response = await self.client.post(self.config.url.rstrip("/") + "/digest", json=body)
        response.raise_for_status()  # an error is logged and counted by the engine
        ticket = response.json()["ticket"]
        at = self.ctx.clock.timestamp()  # virtual time under replay and test
        digest = {"ticket": ticket, "failures": failures, "endpoints": endpoints, "at": at}
        await self.ctx.publish([Finding("failure_digest", digest)])


@hookimpl
def observer_register_analyzers(register: RegisterAnalyzer) -> None:
    register(FailureDigest)


@hookimpl
def observer_register_finding_kinds(register: RegisterFindingKind) -> None:
    register("failure_digest")
