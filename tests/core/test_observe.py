"""``Analyzer.observe(ops)``: an analyzer sees every committed op, however small the ring."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import pytest

from observer_core import Analyzer, AnalyzerConfig, Context, Finding, Op, Window
from observer_core.testing import plugin_of

pytestmark = pytest.mark.anyio


def op(endpoint: str) -> Op:
    return Op(
        timestamp="2026-12-06T00:00:00.000Z",
        endpoint=endpoint,
        input_summary="",
        success=True,
        duration_ms=1,
        output_summary="",
        source="test",
    )


class Counting(Analyzer):
    name: ClassVar[str] = "counting"

    def __init__(self, config: AnalyzerConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.seen: list[str] = []

    def observe(self, ops: Sequence[Op]) -> None:
        if any(item.endpoint == "/boom" for item in ops):
            raise RuntimeError("boom")
        self.seen.extend(item.endpoint for item in ops)

    async def analyze(self, window: Window) -> Sequence[Finding]:
        return []


class Plain(Analyzer):
    name: ClassVar[str] = "plain"

    async def analyze(self, window: Window) -> Sequence[Finding]:
        return []


CONFIG = """
[observer]
cycle_secs = 3600
ring_size = 2
state_dir = "state"
[analyzers.counting]
[analyzers.plain]
[sinks.out]
plugin = "collect"
"""


async def test_observe_sees_every_committed_op_in_order_and_its_failure_is_contained(
    observer_engine,
):
    assert Counting.observes() and not Plain.observes()
    async with observer_engine.start(CONFIG, plugins=[plugin_of(Counting, Plain)]) as engine:
        endpoints = [f"/e{n}" for n in range(10)]
        for start in range(0, 10, 3):
            await engine.emit([op(e) for e in endpoints[start : start + 3]])
        counting = engine.component("counting")
        assert isinstance(counting, Counting)
        assert counting.seen == endpoints, "every op, though the ring holds two"
        assert len(engine.ring) == 2

        await engine.emit([op("/boom")])  # accepted all the same
        assert engine.ring[-1].endpoint == "/boom"
        assert engine.errors("analyzers.counting") == 1
        await engine.emit([op("/after")])
        assert counting.seen[-1] == "/after"
        await engine.settle()
        assert [o.endpoint for o in engine.sink("out").ops][-2:] == ["/boom", "/after"]
