"""Applying a reload to the running daemon (contract §12.1).

:class:`Reloader` re-reads the config, compares it with the running one and, when it
may, stops what was changed or removed and starts what was changed or added, leaving
every other instance running untouched. A config that cannot be loaded, or that
changes an ``[observer]`` key that needs a restart, changes nothing. An instance that
fails to start rolls the reload back. Each outcome is logged on one line and recorded
(:class:`~observer_core.reload_state.ReloadStatus`).

What it needs of the engine is :class:`ReloadTarget`.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import anyio

from .components import Component, Source
from .config import ConfigError, InstanceConfig, ObserverConfig
from .reload_plan import ReloadPlan, plan_reload, snapshot
from .reload_state import ReloadOutcome, ReloadStatus

__all__ = ["ReloadFailed", "ReloadTarget", "Reloader"]

log = logging.getLogger("observer_core")


class ReloadFailed(Exception):
    """A reload that was not applied; ``str()`` is the one line of its outcome."""


class RunningInstance(Protocol):
    """What the reloader reads of a running instance."""

    spec: InstanceConfig
    component: Component


_I = TypeVar("_I", bound=RunningInstance)


class ReloadTarget(Protocol[_I]):
    """The engine, as a reload sees it."""

    @property
    def config(self) -> ObserverConfig:
        """The running config."""

    @property
    def instances(self) -> Sequence[_I]:
        """The running instances."""

    def paused_cycles(self) -> AbstractAsyncContextManager[None]:
        """No cycle runs (polls, analyzers) inside this block."""

    def paused_commits(self) -> AbstractAsyncContextManager[None]:
        """No op is committed inside this block: ingest waits (bounded), so sinks can be
        swapped without an op missing one or reaching one twice."""

    async def start(self, spec: InstanceConfig, config: ObserverConfig) -> _I:
        """Build (with ``config``, whose table ``spec`` is), open and start the background
        tasks of one instance; raise
        ``StartupError`` naming it when it cannot start (nothing of it left running)."""

    async def stop(self, item: _I) -> None:
        """Stop one instance as at shutdown: its tasks, its queue drained, flushed, closed."""

    def state_folder(self, spec: InstanceConfig) -> Path:
        """Where an instance keeps its state (``state_dir/KIND.NAME``)."""

    def install(self, instances: list[_I], config: ObserverConfig, down: Sequence[str]) -> None:
        """Make ``instances`` the running pipeline and ``config`` its config (live
        ``[observer]`` keys applied); ``down``: instances that could not be restarted."""


_OPEN_ORDER = {"sinks": 0, "analyzers": 1, "sources": 2}
"""The order the engine opens instances in (and closes them in reverse)."""


def _spec_order(specs: Sequence[InstanceConfig]) -> list[InstanceConfig]:
    """Sinks, then analyzers, then sources, each in config order."""
    return sorted(specs, key=lambda spec: _OPEN_ORDER.get(spec.kind, 3))


@dataclass
class _Undo(Generic[_I]):
    """What a reload did so far, for a rollback to undo."""

    kept: list[_I]
    stopped: list[_I] = field(default_factory=list)
    started: list[_I] = field(default_factory=list)
    set_aside: list[tuple[Path, Path]] = field(default_factory=list)
    starting: str | None = None
    """The instance being started when it failed."""


class Reloader(Generic[_I]):
    """Reloads ``target`` from the file ``load()`` reads, one reload at a time."""

    def __init__(
        self,
        target: ReloadTarget[_I],
        load: Callable[[], ObserverConfig],
        status: ReloadStatus,
    ) -> None:
        self.target = target
        self.load = load
        self.status = status
        self._lock = anyio.Lock()

    async def reload(self) -> ReloadOutcome:
        """Re-read the config and apply it; the outcome is logged, counted and written."""
        async with self._lock:
            try:
                new = await anyio.to_thread.run_sync(self.load)
            except ConfigError as exc:
                return await self._refused(f"config error: {exc}")
            plan = plan_reload(self.target.config, new)
            if plan.refusal is not None:
                return await self._refused(plan.refusal)
            try:
                await self._apply(plan)
            except ReloadFailed as exc:
                return await self._refused(str(exc))
            except Exception as exc:  # a bug, or the disk: the daemon must live on
                log.exception("reload failed")
                return await self._refused(f"reload failed: {exc!r}")
            log.info("reload applied: %s", plan.diff.summary())
            return await self.status.succeeded(snapshot(new))

    async def _refused(self, error: str) -> ReloadOutcome:
        log.error("reload refused: %s", error)
        return await self.status.failed(error)

    async def _apply(self, plan: ReloadPlan) -> None:
        target = self.target
        running = {item.spec.qualified: item for item in target.instances}
        going = [*plan.removed, *(old for old, _ in plan.changed)]
        leaving = [running[spec.qualified] for spec in going if spec.qualified in running]
        # An instance down since a failed rollback is started again, changed or not.
        wanted = {spec.qualified: spec for spec in plan.new.instances if spec.enabled}
        revived = [
            wanted[spec.qualified] for spec in plan.unchanged if spec.qualified not in running
        ]
        coming = _spec_order([*(new for _, new in plan.changed), *plan.added, *revived])
        kept = [item for item in target.instances if item not in leaving]
        undo = _Undo(kept)
        async with target.paused_cycles():
            try:
                # Sources first, while commits flow: what they took in is answered.
                sources = [item for item in leaving if isinstance(item.component, Source)]
                for item in sources:
                    undo.stopped.append(item)
                    await target.stop(item)
                async with target.paused_commits():
                    try:
                        rest = [item for item in leaving if item not in sources]
                        rest.sort(key=lambda item: _OPEN_ORDER.get(item.spec.kind, 3))
                        for item in reversed(rest):
                            undo.stopped.append(item)
                            await target.stop(item)
                        undo.set_aside = await self._set_aside(plan)
                        for spec in coming:
                            undo.starting = spec.qualified
                            undo.started.append(await target.start(spec, plan.new))
                    except Exception as exc:
                        raise await self._roll_back(undo, exc) from exc
                    target.install(_in_order(plan.new, [*kept, *undo.started]), plan.new, ())
            except ReloadFailed:
                raise
            except Exception as exc:  # ingest could not be paused: sources come back
                raise await self._roll_back(undo, exc) from exc

    async def _roll_back(self, undo: _Undo[_I], exc: Exception) -> ReloadFailed:
        """Stop what this reload started, start again what it stopped (with the old
        config); the failure to report, naming what stays down."""
        if undo.starting is not None:
            log.debug("reload: starting %s failed", undo.starting, exc_info=exc)
        reason = str(exc) or f"[{undo.starting or 'reload'}] {exc!r}"
        for item in reversed(undo.started):
            await self.target.stop(item)
        await anyio.to_thread.run_sync(_put_back, undo.set_aside)
        restored, down = await self._restore([item.spec for item in undo.stopped])
        config = self.target.config
        self.target.install(_in_order(config, [*undo.kept, *restored]), config, down)
        stays_down = f"; {', '.join(down)} could not be restarted" if down else ""
        return ReloadFailed(f"{reason}; rolled back{stays_down}")

    async def _set_aside(self, plan: ReloadPlan) -> list[tuple[Path, Path]]:
        """Move the state folder of each instance whose plugin changed aside (to
        ``KIND.NAME.PLUGIN-TIME``): the new plugin starts without the old one's state.
        Returns ``(folder, aside)`` pairs, for a rollback to put back."""
        moved: list[tuple[Path, Path]] = []
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        for old, new in plan.changed:
            folder = self.target.state_folder(old)
            if old.plugin.name == new.plugin.name or not folder.exists():
                continue
            aside = folder.with_name(f"{folder.name}.{old.plugin.name}-{stamp}")
            for number in range(1, 1000):
                if not os.path.lexists(aside):
                    break
                aside = folder.with_name(f"{folder.name}.{old.plugin.name}-{stamp}-{number}")
            await anyio.to_thread.run_sync(os.rename, folder, aside)
            log.info(
                "%s: plugin %s replaced by %s: its state moved to %s",
                old.qualified,
                old.plugin.name,
                new.plugin.name,
                aside,
            )
            moved.append((folder, aside))
        return moved

    async def _restore(self, specs: list[InstanceConfig]) -> tuple[list[_I], list[str]]:
        """Start the old instances again with their old config; the names of those that
        cannot start stay down."""
        restored: list[_I] = []
        down: list[str] = []
        for spec in _spec_order(specs):
            try:
                restored.append(await self.target.start(spec, self.target.config))
            except Exception as exc:
                log.error("rollback: %s stays down: %s", spec.qualified, exc)
                down.append(spec.qualified)
        return restored, down


def _put_back(moved: list[tuple[Path, Path]]) -> None:
    """Undo :meth:`Reloader._set_aside`: the new plugin's state goes, the old one's returns."""
    for folder, aside in moved:
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(aside, folder)


def _in_order(config: ObserverConfig, items: list[_I]) -> list[_I]:
    """``items`` in the order ``config`` lists them."""
    place = {spec.qualified: index for index, spec in enumerate(config.instances)}
    return sorted(items, key=lambda item: place.get(item.spec.qualified, len(place)))
