"""The engine in-process, on configs a test writes: :class:`EngineFactory` (the
``observer_engine`` fixture). Built on the engine's public seams only: the
``step_timeout`` argument, :meth:`Engine.start_push_sources`, :meth:`Engine.idle`
and :meth:`Metrics.sample`."""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from ..components import Component
from ..config import load_config
from ..engine import Engine
from ..plugins import LOCAL, Registry, load_registry
from ..records import Op
from .collect import COLLECT_PLUGIN, CollectingSink
from .helpers import write_dedented

__all__ = ["EngineFactory", "RunningEngine"]


_KIT_OBSERVER_TABLE = """\
[observer]
cycle_secs = 3600      # cycles run when the test says: await engine.run_cycle()
state_dir = "state"
"""


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
        """``count`` cycles, one after another."""
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
        return self.engine.metrics.sample(name, **labels)

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait until handed-in ops reached every sink and spawned work has finished
        (:meth:`Engine.idle`); a :class:`TimeoutError` after ``timeout`` names what was
        still in progress."""
        try:
            with anyio.fail_after(timeout):
                await self.engine.idle()
        except TimeoutError:
            busy = {kind: count for kind, count in self.engine.pending_work().items() if count}
            raise TimeoutError(f"the engine was still busy after {timeout}s: {busy}") from None

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
        path = write_dedented(self.directory / name, text)
        registry = load_registry([(COLLECT_PLUGIN, None), *((plugin, None) for plugin in plugins)])
        local = [
            str(error)
            for error in registry.errors
            if error.origin.distribution == LOCAL.distribution
        ]
        if local:
            raise AssertionError("plugins under test did not register:\n" + "\n".join(local))
        loaded = load_config(path, registry, {**os.environ, **(env or {})})
        engine = Engine(loaded, step_timeout=step_timeout)
        async with engine.running() as inputs:
            engine.start_push_sources(inputs)
            try:
                yield RunningEngine(engine, registry, self.directory)
            finally:
                inputs.cancel_scope.cancel()
