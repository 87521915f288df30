"""Work an instance started with ``ctx.spawn`` belongs to that instance: a reload that
stops the instance cancels it (contract §12.1), and ``idle()`` no longer counts it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import anyio
import pytest

from observer_core import Analyzer, Finding, Window
from observer_core.config import load_config
from observer_core.engine import Engine
from observer_core.plugins import load_registry
from observer_core.testing import plugin_of

pytestmark = pytest.mark.anyio

WAIT_SECS = 5.0


class LongSpawner(Analyzer):
    """Its first cycle spawns a short job; the next, one that runs until cancelled and,
    when it is, writes ``cancelled`` (after a pause: stopping the instance waits for it)."""

    name = "reload_long_spawner"
    started: ClassVar[anyio.Event]

    async def analyze(self, window: Window) -> Sequence[Finding]:
        self.ctx.spawn(self.long if self.ctx.status.get("spawned") else self.short)
        self.ctx.status["spawned"] = True
        return []

    async def short(self) -> None:
        await anyio.sleep(0)

    async def long(self) -> None:
        LongSpawner.started.set()
        try:
            await anyio.sleep(3600)  # far past the test: only a cancel ends it
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.2)
                self.ctx.resolve_path("cancelled").write_text("cancelled\n")


PLUGIN = plugin_of(LongSpawner)
SPAWNER = """
[observer]
cycle_secs = 3600
state_dir = "state"
[analyzers.spawner]
plugin = "reload_long_spawner"
"""


def engine_for(path: Path, text: str) -> Engine:
    """An engine on ``path`` (written with ``text``) that re-reads ``path`` at a reload."""
    registry = load_registry([(PLUGIN, None)])
    path.write_text(text)
    engine = Engine(load_config(path, registry, {}))
    engine.config_loader = lambda: load_config(path, registry, {})
    return engine


async def until(predicate: Callable[[], object]) -> None:
    """Poll without blocking the loop; fail after ``WAIT_SECS``."""
    with anyio.fail_after(WAIT_SECS):
        while not predicate():
            await anyio.sleep(0.005)


async def test_a_reload_that_removes_an_instance_cancels_the_work_it_spawned(tmp_path):
    LongSpawner.started = anyio.Event()
    path = tmp_path / "observer.toml"
    engine = engine_for(path, SPAWNER)
    cancelled = tmp_path / "cancelled"
    async with engine.running() as inputs:
        await engine.run_cycle()
        await until(lambda: engine.pending_work()["spawned"] == 0)  # the short one ended
        await engine.run_cycle()
        with anyio.fail_after(WAIT_SECS):
            await LongSpawner.started.wait()
        assert engine.pending_work()["spawned"] == 1
        path.write_text(SPAWNER + "enabled = false\n")
        with anyio.fail_after(WAIT_SECS):  # not the job's hour
            await engine.reload()
        assert cancelled.read_text() == "cancelled\n"  # the reload waited for it to end
        assert engine.pending_work()["spawned"] == 0
        with anyio.fail_after(WAIT_SECS):
            await engine.idle()
        assert not [item for item in engine.instances if item.spec.kind == "analyzer"]
        inputs.cancel_scope.cancel()
