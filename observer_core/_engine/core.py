"""The daemon: builds the components of a config and runs their lifecycle (open, run,
signals, shutdown) in one anyio task group. The work itself is done by the parts it owns:
a :class:`Dispatcher` (the ingest path), :class:`Cycles` and a :class:`Publisher`
(analysis), an :class:`Introspection` (what the daemon shows of itself)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ..components import (
    WALL_CLOCK,
    Analyzer,
    Clock,
    Component,
    Context,
    OnAccepted,
    Sink,
    Source,
)
from ..config import InstanceConfig, ObserverConfig
from ..metrics import Metrics
from ..records import Finding, Op, now_timestamp
from ..reload_apply import Reloader
from ..reload_plan import snapshot
from ..reload_state import ReloadStatus
from ..ring import Ring
from ..state import StateStore
from ..tap import TapHub
from .cycles import Cycles, Publisher
from .dispatch import Dispatcher
from .instance import Instance, StartupError, cannot_start, fail, guard, quietly
from .introspect import Introspection
from .swap import Swapper

if TYPE_CHECKING:
    import httpx

__all__ = ["Engine", "StartupError"]

log = logging.getLogger("observer_core")

LAG_PROBE_SECS = 0.1
"""How often the event loop's lag is measured (a sleep of this long, and how late it wakes)."""
IDLE_POLL_SECS = 0.005
"""How often :meth:`Engine.idle` looks again while work is in progress."""


class Engine:
    """Builds the components of a config and runs them."""

    clock: Clock = WALL_CLOCK
    """What components read the time from (``ctx.clock``); set before ``__init__`` builds them."""

    emit: Callable[[Sequence[Op]], asyncio.Future[None]]
    """Hand ops in (:meth:`Dispatcher.emit`): the future resolves once they are committed."""
    submit: Callable[[Sequence[Op], OnAccepted], None]
    """Hand ops in with a callback (:meth:`Dispatcher.submit`)."""

    def __init__(self, config: ObserverConfig, *, step_timeout: float | None = None) -> None:
        """``step_timeout``: seconds each poll and analyze may take (see :attr:`step_timeout`)."""
        if step_timeout is not None and (
            isinstance(step_timeout, bool)
            or not isinstance(step_timeout, int | float)
            or not step_timeout > 0
        ):
            raise ValueError(
                f"step_timeout must be a positive number of seconds or None, got {step_timeout!r}"
            )
        self._step_timeout_secs = step_timeout
        self._spawned_running = 0
        """Work started by ``ctx.spawn`` that has not finished."""
        self.config = config
        self.settings = config.settings
        self.metrics = Metrics()
        self.ring = Ring(self.settings.ring_size)
        self.started_at = now_timestamp()
        self._background: anyio.abc.TaskGroup | None = None
        self._daemon: anyio.abc.TaskGroup | None = None
        self._sink_group: anyio.abc.TaskGroup | None = None
        self._sink_runners: anyio.CancelScope | None = None
        self._sink_runners_done = anyio.Event()
        self.reload_status = ReloadStatus(config.state_dir, self.metrics, snapshot(config))
        """Config generations: ``reload.json``, the reload metrics, ``/health``'s config."""
        self.config_loader: Callable[[], ObserverConfig] | None = None
        """How SIGHUP re-reads the config (the daemon sets it); None: SIGHUP only reopens."""
        tap_dropped = self.metrics.counter(
            "observer_tap_dropped_total", "Records a slow tap reader missed."
        )
        self.tap = TapHub(on_dropped=lambda count: tap_dropped.inc(count))
        """Live subscribers of ``GET /tap``: fed as ops enter the ring and findings go out."""
        self.instances: list[Instance] = [
            self._build(spec) for spec in config.instances if spec.enabled
        ]
        self.dispatcher = Dispatcher(self.instances, self.metrics, self.ring, self.tap)
        """The ingest path: group commit to the op sinks and the ring."""
        self.dispatcher.hold_secs = float(self.settings.shutdown_timeout_secs)
        self.dispatcher.busy_poll_secs = self.settings.busy_poll_us / 1e6
        self.emit = self.dispatcher.emit
        self.submit = self.dispatcher.submit
        self.emitter = self.dispatcher.emitter
        """What sources get as ``emit``: the dispatcher's methods, bound (no hop per request)."""
        self.publisher = Publisher(self.instances, self.metrics, self.tap)
        self.cycles = Cycles(
            self.instances,
            metrics=self.metrics,
            ring=self.ring,
            emitter=self.emitter,
            publish=self.publish,
            step_timeout=lambda: self.step_timeout,
            cycle_secs=float(self.settings.cycle_secs),
        )
        self.introspection = Introspection(
            self.instances,
            metrics=self.metrics,
            ring=self.ring,
            settings=self.settings,
            dispatcher=self.dispatcher,
            recent_findings=self.publisher.recent,
            analyzer_runs=self.cycles.analyzer_runs,
            cycle=lambda: self.cycles.cycle,
            started_at=self.started_at,
            config=self.reload_status.health,
        )
        """What ``/health``, ``/stats``, ``/ready`` and ``/metrics`` show."""
        self._sinks: list[Instance] = []
        self.tap_kinds: frozenset[str] = frozenset()
        """The record kinds a tap may ask for."""
        self._note_sinks()
        self._register_gauges()

    def _note_sinks(self) -> None:
        sinks = [item for item in self.instances if isinstance(item.component, Sink)]
        self._sinks = sinks
        self.tap_kinds = frozenset(
            [
                "op",
                *self.config.finding_kinds,
                *(kind for item in sinks for kind in item.spec.accepts),
            ]
        )

    def assign(self, instances: list[Instance], config: ObserverConfig) -> None:
        """Make ``instances`` the pipeline and ``config`` the running config (a reload):
        every part takes them, a sink kept keeps its queue, the live ``[observer]`` keys
        take effect (the ring is resized keeping the newest ops)."""
        self.config, self.settings = config, config.settings
        self.instances[:] = instances  # in place: the parts read the same list
        for pump in self.dispatcher.assign(instances):
            if self._daemon is not None:
                self._daemon.start_soon(pump.run)
        self.dispatcher.hold_secs = float(config.settings.shutdown_timeout_secs)
        self.publisher.assign(instances)
        self.cycles.assign(instances)
        self.cycles.set_period(float(config.settings.cycle_secs))
        self.introspection.reconfigure(config.settings)
        if self.ring.capacity != config.settings.ring_size:
            self.ring.resize(config.settings.ring_size)
        for item in instances:
            item.ctx.max_field_bytes = config.settings.max_field_bytes
        self._note_sinks()

    def _register_gauges(self) -> None:
        self.metrics.gauge(
            "observer_ring_ops", "Ops in the ring now.", lambda: [((), float(len(self.ring)))]
        )
        self.metrics.gauge(
            "observer_sink_queue_depth",
            "Records waiting in a sink's queue.",
            self.introspection.queue_depths,
        )
        self.metrics.gauge(
            "observer_tap_subscribers",
            "Taps (GET /tap) open now.",
            lambda: [((), float(len(self.tap.subscribers)))],
        )
        self._loop_lag = {"last": 0.0, "max": 0.0}
        self.metrics.gauge(
            "observer_event_loop_lag_seconds",
            "How late a 0.1 s sleep woke: the last probe, and the max since start.",
            lambda: [((("stat", stat),), lag) for stat, lag in self._loop_lag.items()],
        )

    # -- building -------------------------------------------------------

    def build(self, spec: InstanceConfig, config: ObserverConfig) -> Instance:
        """The instance of ``spec``, a table of ``config``, built (not opened): a reload."""
        return self._build(spec, config)

    def _build(self, spec: InstanceConfig, config: ObserverConfig | None = None) -> Instance:
        config = config or self.config
        ctx = Context(
            instance=spec.qualified,
            kind=spec.kind,
            config_dir=config.config_dir,
            logger=logging.getLogger(f"observer.{spec.qualified}"),
            metrics=self.metrics,
            state=self._state_store(spec),
            max_field_bytes=config.settings.max_field_bytes,
            observer=self,
            spawn=lambda fn, *args, timeout=None: self._spawn(item, fn, args, timeout),
            publish=partial(self._publish_from, spec.qualified),
            row_formats=config.row_formats,
            clock=self.clock,
            transport=self._transport(spec),
        )
        item = Instance(spec, spec.plugin.cls(spec.config, ctx), ctx)
        return item

    def _state_store(self, spec: InstanceConfig) -> StateStore:
        """Where an instance keeps its state: its folder under ``state_dir``."""
        return StateStore(self.state_folder(spec))

    def state_folder(self, spec: InstanceConfig) -> Path:
        """An instance's folder under ``state_dir`` (``KIND.NAME``)."""
        return self.config.state_dir / spec.qualified

    def _transport(self, spec: InstanceConfig) -> httpx.AsyncBaseTransport | None:
        """What an instance's ``ctx.http_client()`` sends through; None: the network."""
        return None

    def _of(self, kind: type[Component]) -> list[Instance]:
        return [item for item in self.instances if isinstance(item.component, kind)]

    # -- the Observer protocol (what /health, /stats and /metrics show) ----

    def ring_len(self) -> int:
        return self.ring.size()

    def health(self) -> dict[str, Any]:
        return self.introspection.health()

    def stats(self) -> dict[str, Any]:
        return self.introspection.stats()

    def recent_ops(self, source: str, limit: int) -> list[Op]:
        return self.introspection.recent_ops(source, limit)

    def metrics_text(self) -> str:
        return self.metrics.render()

    def ready(self) -> list[str]:
        return self.introspection.ready()

    def operator_stats(self) -> dict[str, Any]:
        return self.introspection.operator_stats()

    # -- ingest and analysis (the parts' public seams) ----------------------

    def _accept(self, ops: Sequence[Op]) -> None:
        self.dispatcher.accept(ops)

    async def _publish_from(self, instance: str, findings: Sequence[Finding]) -> None:
        await self.cycles.publish_from(instance, findings)

    async def publish(self, findings: Sequence[Finding]) -> None:
        """Hand findings to every sink that accepts their kind (each write under a timeout);
        while a reload swaps sinks, to the new ones (bounded by ``shutdown_timeout_secs``)."""
        await self.dispatcher.unpaused()
        await self.publisher.publish(findings)

    @property
    def cycle(self) -> int:
        """Cycles run so far."""
        return self.cycles.cycle

    @cycle.setter
    def cycle(self, value: int) -> None:
        self.cycles.cycle = value

    @property
    def step_timeout(self) -> float:
        """Seconds each ``poll`` and ``analyze`` may take before it is cut off (logged and
        counted against the instance): the ``step_timeout`` the engine was built with,
        else ``max(cycle_secs, 10)``."""
        if self._step_timeout_secs is not None:
            return float(self._step_timeout_secs)
        return max(float(self.settings.cycle_secs), 10.0)

    async def run_cycle(self) -> None:
        """One cycle: poll per-cycle sources, run due analyzers, log a stats line."""
        await self.cycles.run_cycle()

    async def run_analyzers(self) -> None:
        """Run the analyzers due on :attr:`cycle` over the ring, publishing their findings."""
        await self.cycles.run_analyzers()

    async def _cycle_loop(self) -> None:
        await self.cycles.run_forever()

    # -- background work --------------------------------------------------

    def _spawn(
        self,
        item: Instance,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        timeout: float | None,
    ) -> None:
        """``ctx.spawn``: run ``fn(*args)`` in the input group, under a cancel scope of
        ``item``'s own, so stopping the instance (a reload) cancels it."""
        if self._background is None:
            raise RuntimeError("spawn() is only available while the daemon runs")
        self._spawned_running += 1
        item.start_task(self._background, partial(self._counted, item.ctx, fn, args, timeout))

    async def _counted(
        self,
        ctx: Context,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        timeout: float | None,
    ) -> None:
        """``fn(*args)`` guarded, counted in ``_spawned_running`` until it ends (for
        :meth:`idle`)."""
        try:
            await guard(ctx, getattr(fn, "__name__", "task"), timeout, fn, *args)
        finally:
            self._spawned_running -= 1

    async def _probe_loop_lag(self) -> None:
        """Measure how late a short sleep wakes: what anything blocking the loop costs."""
        while True:
            started = anyio.current_time()
            await anyio.sleep(LAG_PROBE_SECS)
            lag = max(0.0, anyio.current_time() - started - LAG_PROBE_SECS)
            self._loop_lag["last"] = lag
            self._loop_lag["max"] = max(self._loop_lag["max"], lag)

    # -- waiting for quiet (tests and tools) ---------------------------------

    def pending_work(self) -> dict[str, int]:
        """What the engine still has to do, by kind; all zero when it is idle.

        ``emits_pending``: ``emit``/``submit`` calls whose ops wait for the next
        commit; ``committing``: 1 while the dispatcher commits a batch (writes it
        to the ack-holding sinks, puts it in the ring, answers the sources);
        ``sink_queues``: ops waiting in the queues of sinks that do not hold
        acks; ``sink_writes``: such sinks writing a batch now; ``spawned``:
        work started with ``ctx.spawn`` that has not finished. Records a sink
        buffers itself (see ``Sink.queue_depth``) are not counted.
        """
        return {**self.dispatcher.pending_work(), "spawned": self._spawned_running}

    async def idle(self) -> None:
        """Return once :meth:`pending_work` is all zero: every op handed in so far is
        committed and written to every op sink, and spawned work has finished.

        Waits as long as that takes: bound it with ``anyio.fail_after``. Work that
        starts after it returns (the next cycle, a push source's next ops) is not
        waited for.
        """
        while any(self.pending_work().values()):
            await anyio.sleep(IDLE_POLL_SECS)

    # -- lifecycle ----------------------------------------------------------

    async def open(self) -> None:
        """Open sinks, then analyzers, then sources, each in config order."""
        order = [*self._of(Sink), *self._of(Analyzer), *self._of(Source)]
        opened: list[Instance] = []
        for item in order:
            try:
                await item.component.open()
            except Exception as exc:
                for done in reversed(opened):
                    with anyio.CancelScope(shield=True):
                        await quietly(done.component.aclose())
                        await quietly(done.ctx.aclose_clients())
                raise cannot_start(item.spec.qualified, exc) from exc
            opened.append(item)
            self.introspection.opened.add(item.spec.qualified)
            log.info(
                "started %s (plugin %s from %s)",
                item.spec.qualified,
                item.spec.plugin.name,
                item.spec.plugin.origin.distribution,
            )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[anyio.abc.TaskGroup]:
        """Open every instance and run the write path; yield the task group for input.

        The write path (dispatcher, sink queues, sink background tasks) runs in
        the daemon's task group. The yielded group holds the input side: push
        sources, the cycle loop, and work spawned by components. Leaving the
        block waits for that group, then shuts down: drain, flush, close.
        """
        await self.open()
        dispatcher = self.dispatcher
        async with anyio.create_task_group() as daemon:
            self._daemon = daemon
            daemon.start_soon(dispatcher.run)
            daemon.start_soon(self._probe_loop_lag)
            if dispatcher.ack_sinks:
                daemon.start_soon(dispatcher.probe_failed_sinks)
            for pump in dispatcher.pumps:
                daemon.start_soon(pump.run)
            await daemon.start(self._run_sinks)
            try:
                async with anyio.create_task_group() as inputs:
                    self._background = inputs
                    yield inputs
            finally:
                self._background = None
                await self.shutdown()
                daemon.cancel_scope.cancel()
                self._daemon = None

    async def serve(self) -> None:
        """Run until SIGINT/SIGTERM, then shut down cleanly."""
        async with self.running() as inputs:
            await self.reload_status.started()
            inputs.start_soon(self._watch_signals, inputs.cancel_scope)
            self.start_push_sources(inputs)
            inputs.start_soon(self._cycle_loop)
            log.info(
                "observer-core running: %d instance(s), first cycle in %ss",
                len(self.instances),
                self.settings.cycle_secs,
            )

    def start_push_sources(self, group: anyio.abc.TaskGroup) -> None:
        """Start each push source's ``run(emit)`` in ``group`` (the one :meth:`running`
        yields), each isolated: one that raises is logged and counted, the rest run on."""
        for item in self._of(Source):
            source = item.component
            assert isinstance(source, Source)
            if source.is_push():
                self.start_push(item, group)

    def start_push(self, item: Instance, group: anyio.abc.TaskGroup) -> None:
        """Start a push source's ``run(emit)`` under the instance's own cancel scope."""
        source = item.component
        assert isinstance(source, Source)
        run = partial(_run_until_error, item, "stopped with an error", source.run, self.emitter)
        item.start_task(group, run)

    async def run_once(self) -> int:
        """Poll, run the ``every = 1`` analyzers to completion, flush, exit.

        Push-only sources (listeners) are not even opened: ``--once`` binds nothing.
        """
        for item in self._of(Source):
            source = item.component
            assert isinstance(source, Source)
            if not source.is_polled():
                log.info("--once: not starting push source %s", item.spec.qualified)
                self.instances.remove(item)
        async with self.running():
            await self.run_cycle()
        errors = sum(self.metrics.instance_errors.values.values())
        return 1 if errors else 0

    async def _run_sinks(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run each sink's background ``run()`` until shutdown cancels them (after flush)."""
        try:
            async with anyio.create_task_group() as group:
                self._sink_runners = group.cancel_scope
                self._sink_group = group
                task_status.started()
                for item in self._sinks:
                    self.start_sink_run(item)
        finally:
            self._sink_group = None
            self._sink_runners_done.set()

    def start_tasks(self, item: Instance) -> None:
        """Start the background tasks of an instance a reload started (a push source's
        ``run``, a sink's ``run``)."""
        component = item.component
        if isinstance(component, Source) and component.is_push() and self._background:
            self.start_push(item, self._background)
        self.start_sink_run(item)

    def start_sink_run(self, item: Instance) -> None:
        """Start a sink's background ``run()`` (if it has one) under its own cancel scope."""
        sink = item.component
        if isinstance(sink, Sink) and sink.has_run() and self._sink_group is not None:
            what = "background task stopped with an error"
            item.start_task(self._sink_group, partial(_run_until_error, item, what, sink.run))

    async def _stop_sink_runners(self) -> None:
        if self._sink_runners is not None:
            self._sink_runners.cancel()
            await self._sink_runners_done.wait()

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        # SIGUSR1 reopens the sinks' files (what logrotate sends); SIGHUP does too, and
        # re-reads the config (contract §12.1).
        reopen = (signal.SIGHUP, signal.SIGUSR1)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, *reopen) as signals:
            async for signum in signals:
                if signum in reopen:
                    log.info("%s: reopening sink files", signal.Signals(signum).name)
                    await self.reopen_sinks()
                    if signum == signal.SIGHUP:
                        await self.reload()
                    continue
                log.info("%s: shutting down", signal.Signals(signum).name)
                scope.cancel()
                return

    async def reopen_sinks(self) -> None:
        """Have every sink reopen its files (logrotate); one that fails is its error."""
        for item in self._sinks:
            sink = item.component
            assert isinstance(sink, Sink)
            try:
                await sink.reopen()
            except Exception as exc:
                fail(item.ctx, f"reopen failed: {exc}")

    async def reload(self) -> None:
        """Re-read the config file and apply what changed (contract §12.1: the steps are
        :class:`~observer_core.reload_apply.Reloader`'s, the engine's side :class:`Swapper`)."""
        if self.config_loader is None:
            log.warning("SIGHUP: this daemon cannot re-read its config")
            return
        try:
            await Reloader(Swapper(self), self.config_loader, self.reload_status).reload()
        except OSError as exc:  # reload.json could not be written: the daemon lives on
            log.error("reload: cannot record the outcome: %s", exc)

    async def shutdown(self) -> None:
        """Stop taking input, drain, flush every sink, close everything (bounded in time)."""
        self.dispatcher.closing = True
        timeout = float(self.settings.shutdown_timeout_secs)
        with anyio.move_on_after(timeout, shield=True) as scope:
            await self.dispatcher.drain()
            for pump in self.dispatcher.pumps:
                pump.queue.close()
                await pump.stopped.wait()
            for item in self._sinks:
                sink = item.component
                assert isinstance(sink, Sink)
                await quietly(sink.flush(), item.ctx)
            await self._stop_sink_runners()
            for item in reversed(self.instances):
                await quietly(item.component.aclose(), item.ctx)
                await quietly(item.ctx.aclose_clients(), item.ctx)
        if scope.cancelled_caught:
            log.error("shutdown did not finish within %ss; exiting anyway", timeout)
        else:
            log.info("shutdown complete")


async def _run_until_error(
    item: Instance, what: str, run: Callable[..., Awaitable[Any]], *args: Any
) -> None:
    """A push source's or a sink's ``run``: an error stops it alone (:func:`fail`)."""
    try:
        await run(*args)
    except Exception as exc:
        fail(item.ctx, what, exc)
