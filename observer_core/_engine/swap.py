"""The engine's side of a config reload (contract §12.1): start, stop and swap single
instances while the daemon runs. :class:`~observer_core.reload_apply.Reloader` decides
what to do; :class:`Swapper` is its :class:`~observer_core.reload_apply.ReloadTarget`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol

import anyio

from ..components import Handed, Sink, Source
from ..config import InstanceConfig, ObserverConfig, ObserverSettings
from .cycles import Cycles
from .dispatch import Dispatcher
from .instance import Instance, cannot_start, quietly
from .introspect import Introspection

__all__ = ["Swapper"]

log = logging.getLogger("observer_core")


class Engine(Protocol):
    """What the swapper uses of :class:`observer_core.engine.Engine`."""

    config: ObserverConfig
    settings: ObserverSettings
    instances: list[Instance]
    dispatcher: Dispatcher
    cycles: Cycles
    introspection: Introspection

    def build(self, spec: InstanceConfig, config: ObserverConfig) -> Instance: ...
    def state_folder(self, spec: InstanceConfig) -> Path: ...
    def start_tasks(self, item: Instance) -> None: ...
    def assign(self, instances: list[Instance], config: ObserverConfig) -> None: ...


class Swapper:
    """Starts, stops and swaps the instances of one engine, for one reload.

    A stopped source may hand something to its successor of the same name (a listener
    its bound socket: :meth:`Source.handover`/:meth:`Source.take_over`); what nobody took
    is closed when the reload installs its result."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._handed: dict[str, Handed] = {}

    @property
    def config(self) -> ObserverConfig:
        return self._engine.config

    @property
    def instances(self) -> Sequence[Instance]:
        return self._engine.instances

    def paused_cycles(self) -> AbstractAsyncContextManager[None]:
        """No cycle runs inside this block."""
        return self._engine.cycles.lock

    def paused_commits(self) -> AbstractAsyncContextManager[None]:
        """Nothing is committed inside this block (ingest waits, bounded)."""
        return self._engine.dispatcher.paused()

    def state_folder(self, spec: InstanceConfig) -> Path:
        return self._engine.state_folder(spec)

    async def start(self, spec: InstanceConfig, config: ObserverConfig) -> Instance:
        """Build (with ``config``, whose table ``spec`` is), open and start one instance;
        ``StartupError`` naming it if it cannot."""
        engine = self._engine
        item = engine.build(spec, config)
        handed = self._handed.get(spec.qualified)
        if (
            handed is not None
            and isinstance(item.component, Source)
            and item.component.take_over(handed)
        ):
            del self._handed[spec.qualified]
        try:
            await item.component.open()
        except Exception as exc:
            with anyio.CancelScope(shield=True):
                await quietly(item.component.aclose())
                await quietly(item.ctx.aclose_clients())
            raise cannot_start(spec.qualified, exc) from exc
        engine.introspection.opened.add(spec.qualified)
        engine.introspection.down.discard(spec.qualified)
        log.info("started %s (plugin %s)", spec.qualified, spec.plugin.name)
        engine.start_tasks(item)
        return item

    async def stop(self, item: Instance) -> None:
        """Stop one instance as at shutdown: its tasks, its queue written, flushed, closed
        (bounded by ``shutdown_timeout_secs``)."""
        engine = self._engine
        timeout = float(engine.settings.shutdown_timeout_secs)
        handed = item.component.handover() if isinstance(item.component, Source) else None
        if handed is not None:
            self._handed[item.spec.qualified] = handed
        with anyio.move_on_after(timeout, shield=True) as scope:
            await item.stop_tasks()
            await engine.dispatcher.remove_pump(item)
            if isinstance(item.component, Sink):
                await quietly(item.component.flush(), item.ctx)
            await quietly(item.component.aclose(), item.ctx)
            await quietly(item.ctx.aclose_clients(), item.ctx)
        if scope.cancelled_caught:
            item.ctx.logger.error("did not stop within %ss", timeout)
        engine.introspection.opened.discard(item.spec.qualified)
        log.info("stopped %s", item.spec.qualified)

    def install(
        self, instances: list[Instance], config: ObserverConfig, down: Sequence[str]
    ) -> None:
        """Make ``instances`` the pipeline and ``config`` the running config; ``down``:
        instances that could not be restarted (``/ready`` names them; an ack-holding op
        sink among them refuses every op)."""
        engine = self._engine
        enabled = {spec.qualified: spec for spec in config.instances if spec.enabled}
        still_down = {name for name in engine.introspection.down if name in enabled}
        engine.introspection.down = still_down | set(down)
        engine.dispatcher.ack_down = next(
            (
                name
                for name in sorted(engine.introspection.down)
                if "op" in enabled[name].accepts
                and getattr(enabled[name].plugin.cls, "holds_ack", False)
            ),
            None,
        )
        for handed in self._handed.values():
            handed.close()
        self._handed.clear()
        engine.assign(instances, config)
