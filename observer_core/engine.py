"""The daemon: one anyio task group that runs the configured components.

Sources hand ops to :meth:`Engine.emit`. A single dispatcher task takes every
op waiting at that moment (group commit), writes the batch to each
ack-holding op sink, then pushes it into the ring and releases the waiting
sources; other op sinks get the batch through a bounded queue of their own.
A cycle task polls the per-cycle sources and runs the analyzers that are due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import msgspec
from msgspec import UNSET

from .components import (
    WALL_CLOCK,
    Analyzer,
    BatchTooLarge,
    Clock,
    Component,
    Context,
    Emitter,
    NotAccepted,
    OnAccepted,
    Sink,
    Source,
)
from .config import InstanceConfig, ObserverConfig
from .genai import count_ops, tokens_by_model
from .metrics import MAX_LABEL_BYTES, Metrics, cut_utf8
from .queues import DropOldestQueue
from .records import Finding, Op, now_timestamp
from .redact import redact_config
from .ring import Ring
from .state import StateStore
from .tap import TapHub

if TYPE_CHECKING:
    import httpx

__all__ = ["Engine", "StartupError"]

log = logging.getLogger("observer_core")

MAX_PENDING_OPS = 65536
"""Ops waiting for the dispatcher before ``emit`` answers "backed up" (503); a single
submission of more is refused outright (:class:`BatchTooLarge`): no retry can clear it."""
MAX_STATS_SOURCES = 64
"""``/stats`` ``by_source`` entries: the sources with the most ops (each name cut to 128
bytes); the rest under ``other``."""
SINK_QUEUE_MAX = 10000
"""Default bound of a non-ack sink's queue (a sink's own ``queue_max`` wins)."""
FINDING_WRITE_TIMEOUT = 30.0
LAG_PROBE_SECS = 0.1
"""How often the event loop's lag is measured (a sleep of this long, and how late it wakes)."""
IDLE_POLL_SECS = 0.005
"""How often :meth:`Engine.idle` looks again while work is in progress."""
READY_PROBE_SECS = 5.0
"""How often an ack-holding sink whose last write failed is probed (``/ready``)."""
RECENT_MAX = 20
"""How many of the newest failures and findings ``/stats`` shows."""
PREVIEW_CHARS = 200
"""How much of each client-written string ``/stats`` shows of them (§11.4: bounded)."""
PREVIEW_ITEMS = 10
SINK_RECORDS = "observer_sink_records_total"
SINK_RECORDS_HELP = "Records a sink has written (ops and findings)."


class StartupError(Exception):
    """An enabled instance could not start; the message names it."""


_Pending = tuple[Sequence[Op], OnAccepted]
"""Ops waiting for the dispatcher, and what to call once they are accepted or refused."""


def _settle(done: asyncio.Future[None], error: NotAccepted | None) -> None:
    """Resolve an ``emit`` future. A bare asyncio future (anyio runs on asyncio here): an
    ``anyio.Event`` per request cost ten times as much on the ingest path."""
    if done.done():  # its emitter was cancelled
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


class _Instance:
    """A running component with its config and context."""

    __slots__ = ("component", "ctx", "spec")

    def __init__(self, spec: InstanceConfig, component: Component, ctx: Context) -> None:
        self.spec = spec
        self.component = component
        self.ctx = ctx


class _SinkPump:
    """Feeds a sink that does not hold acks from a bounded, drop-oldest queue."""

    def __init__(self, instance: _Instance, metrics: Metrics) -> None:
        self.instance = instance
        name = instance.spec.qualified
        limit = getattr(instance.spec.config, "queue_max", SINK_QUEUE_MAX)
        self.queue: DropOldestQueue[Op] = DropOldestQueue(
            limit, lambda n: metrics.sink_dropped.inc(n, instance=name)
        )
        self.stopped = anyio.Event()
        self.writing = False
        """A batch was taken from the queue and is not written yet."""
        self._written = metrics.counter(SINK_RECORDS, SINK_RECORDS_HELP)

    async def _next_batch(self) -> list[Op]:
        self.writing = False
        batch = await self.queue.get_batch(1000)
        self.writing = bool(batch)
        return batch

    async def run(self) -> None:
        sink = self.instance.component
        assert isinstance(sink, Sink)
        name = self.instance.spec.qualified
        try:
            while batch := await self._next_batch():
                try:
                    await sink.write(batch)
                except Exception as exc:
                    self.instance.ctx.error("write failed, %d records lost: %r", len(batch), exc)
                else:
                    self._written.inc(len(batch), instance=name)
        finally:
            self.stopped.set()


class Engine:
    """Builds the components of a config and runs them."""

    clock: Clock = WALL_CLOCK
    """What components read the time from (``ctx.clock``); set before ``__init__`` builds them."""

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
        self.cycle = 0
        self.started_at = now_timestamp()
        self._pending: deque[_Pending] = deque()
        self._pending_ops = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Future[None] | None = None
        """What the idle dispatcher awaits; the first emit resolves it."""
        self._dispatching = False
        """The dispatcher is committing a batch (else it waits for work, or never started)."""
        self._last_batch = 0
        """How many submissions the last commit carried."""
        self._drained: asyncio.Future[None] | None = None
        """What shutdown awaits: resolved when the dispatcher next finds nothing to do."""
        self.emitter = Emitter(self.emit, self.submit)
        """What sources get as ``emit``."""
        self._closing = False
        self._background: anyio.abc.TaskGroup | None = None
        self._sink_runners: anyio.CancelScope | None = None
        self._sink_runners_done = anyio.Event()
        self._cycle_running = False
        self.instances: list[_Instance] = [
            self._build(spec) for spec in config.instances if spec.enabled
        ]
        sinks = [item for item in self.instances if isinstance(item.component, Sink)]
        op_sinks = [item for item in sinks if "op" in item.spec.accepts]
        self._ack_sinks = [item for item in op_sinks if _holds_ack(item)]
        self._pumps = [_SinkPump(item, self.metrics) for item in op_sinks if not _holds_ack(item)]
        self._sinks = sinks
        self._observers = [
            item
            for item in self.instances
            if isinstance(item.component, Analyzer) and item.component.observes()
        ]
        """Analyzers that see each committed batch (``Analyzer.observe``)."""
        self.metrics.gauge(
            "observer_ring_ops", "Ops in the ring now.", lambda: [((), float(len(self.ring)))]
        )
        self.metrics.gauge(
            "observer_sink_queue_depth",
            "Records waiting in a sink's queue.",
            self._queue_depths,
        )
        self._sink_records = self.metrics.counter(SINK_RECORDS, SINK_RECORDS_HELP)
        self._ack_record_keys = [(("instance", item.spec.qualified),) for item in self._ack_sinks]
        self._opened: set[str] = set()
        """Instances that have started (``/ready`` waits for every one)."""
        self._ack_failing: dict[str, _Instance] = {}
        """Ack-holding sinks whose last write failed, by name: not ready until one succeeds."""
        self._analyzer_runs: dict[str, dict[str, Any]] = {
            item.spec.qualified: {"last_run": None, "duration_ms": None, "findings": 0, "errors": 0}
            for item in self._of(Analyzer)
        }
        """Per analyzer: its last run, how long it took, findings and errors so far."""
        self._recent_findings: deque[dict[str, Any]] = deque(maxlen=RECENT_MAX)
        tap_dropped = self.metrics.counter(
            "observer_tap_dropped_total", "Records a slow tap reader missed."
        )
        self.tap = TapHub(on_dropped=lambda count: tap_dropped.inc(count))
        """Live subscribers of ``GET /tap``: fed as ops enter the ring and findings go out."""
        self.tap_kinds = frozenset(
            ["op", *config.finding_kinds, *(kind for item in sinks for kind in item.spec.accepts)]
        )
        """The record kinds a tap may ask for."""
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

    def _build(self, spec: InstanceConfig) -> _Instance:
        ctx = Context(
            instance=spec.qualified,
            kind=spec.kind,
            config_dir=self.config.config_dir,
            logger=logging.getLogger(f"observer.{spec.qualified}"),
            metrics=self.metrics,
            state=self._state_store(spec),
            max_field_bytes=self.settings.max_field_bytes,
            observer=self,
            spawn=lambda fn, *args, timeout=None: self._spawn(ctx, fn, args, timeout),
            publish=partial(self._publish_from, spec.qualified),
            row_formats=self.config.row_formats,
            clock=self.clock,
            transport=self._transport(spec),
        )
        return _Instance(spec, spec.plugin.cls(spec.config, ctx), ctx)

    def _state_store(self, spec: InstanceConfig) -> StateStore:
        """Where an instance keeps its state: its folder under ``state_dir``."""
        return StateStore(self.config.state_dir / spec.qualified)

    def _transport(self, spec: InstanceConfig) -> httpx.AsyncBaseTransport | None:
        """What an instance's ``ctx.http_client()`` sends through; None: the network."""
        return None

    def _of(self, kind: type[Component]) -> list[_Instance]:
        return [item for item in self.instances if isinstance(item.component, kind)]

    # -- the Observer protocol (what /health, /stats and /metrics show) ----

    def ring_len(self) -> int:
        return self.ring.size()

    def health(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        for item in self.instances:
            checks.update(item.ctx.status.get("checks", {}))
        return {"status": "ok", "ops_in_ring": len(self.ring), "checks": redact_config(checks)}

    def stats(self) -> dict[str, Any]:
        successes = 0
        by_source: Tally[str] = Tally()
        scenario: deque[Op] = deque(maxlen=10)
        for op in self.ring:
            successes += op.success
            by_source[op.source] += 1
            if op.source == "scenario":
                scenario.append(op)
        return {
            "total": len(self.ring),
            "successes": successes,
            "failures": len(self.ring) - successes,
            "by_source": _top(by_source, MAX_STATS_SOURCES),
            "tokens_by_model": tokens_by_model(self.ring),
            "recent_scenario_ops": [
                {
                    "ts": op.timestamp,
                    "ok": op.success,
                    "staffer": _or_none(op.staffer_id),
                    "kind": _or_none(op.event_kind),
                    "role": _or_none(op.role),
                }
                for op in scenario
            ],
            "cycle": self.cycle,
            "started_at": self.started_at,
            "instances": {
                item.spec.qualified: redact_config(item.ctx.status)
                for item in self.instances
                if item.ctx.status
            },
            **self.operator_stats(),
        }

    def metrics_text(self) -> str:
        return self.metrics.render()

    def ready(self) -> list[str]:
        """What ``/ready`` waits for: instances not started yet, ack-holding sinks that
        cannot write. Empty when ready."""
        waiting = [
            item.spec.qualified
            for item in self.instances
            if item.spec.qualified not in self._opened
        ]
        waiting.extend(name for name in self._ack_failing if name not in waiting)
        return waiting

    def operator_stats(self) -> dict[str, Any]:
        """What ``/stats`` adds for ``top`` and the status page (each part bounded)."""
        failed: deque[Op] = deque((op for op in self.ring if not op.success), RECENT_MAX)
        received = self.metrics.ops_received.values
        sources: dict[str, dict[str, float]] = {}
        for labels, value in received.items():
            tags = dict(labels)
            entry = sources.setdefault(tags.get("source", ""), {"ops": 0, "failures": 0})
            entry["ops"] += value
            if tags.get("outcome") == "failure":
                entry["failures"] += value
        depths = {dict(labels)["instance"]: depth for labels, depth in self._queue_depths()}
        sinks = {
            name: {
                "records": self._sink_records.get(instance=name),
                "queue": depths.get(name, 0.0),
                "dropped": self.metrics.sink_dropped.get(instance=name),
                "errors": self.metrics.instance_errors.get(instance=name),
            }
            for name in (item.spec.qualified for item in self._sinks)
        }
        return {
            "sources": sources,
            "sinks": sinks,
            "analyzers": {name: dict(run) for name, run in self._analyzer_runs.items()},
            "recent_failures": [
                preview(
                    {
                        "ts": op.timestamp,
                        "source": op.source,
                        "endpoint": op.endpoint,
                        "error": _or_none(op.error),
                    }
                )
                for op in reversed(failed)
            ],
            "recent_findings": list(reversed(self._recent_findings)),
            "ring_size": self.settings.ring_size,
        }

    def _queue_depths(self) -> list[tuple[tuple[tuple[str, str], ...], float]]:
        """Each sink's waiting records: its pump's queue plus what the sink itself holds."""
        depths = {pump.instance.spec.qualified: float(len(pump.queue)) for pump in self._pumps}
        for item in self._sinks:
            sink = item.component
            assert isinstance(sink, Sink)
            own = sink.queue_depth()
            if own is not None:
                name = item.spec.qualified
                depths[name] = depths.get(name, 0.0) + own
        return [((("instance", name),), depth) for name, depth in depths.items()]

    # -- the ingest path --------------------------------------------------

    def emit(self, ops: Sequence[Op]) -> asyncio.Future[None]:
        """Accept ops: the future resolves once every ack-holding op sink has them and they
        are in the ring, or raises :class:`NotAccepted`. A plain function returning a future,
        not a coroutine: one less frame per request on the ingest path."""
        loop = self._loop or asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if ops:
            self.submit(ops, partial(_settle, done))
        else:
            done.set_result(None)
        return done

    def submit(self, ops: Sequence[Op], on_accepted: OnAccepted) -> None:
        """Queue ops for the next group commit; ``on_accepted(None)`` is called once every
        ack-holding op sink has them and they are in the ring, ``on_accepted(refusal)``
        if a sink refused them. Raises :class:`NotAccepted` at once when shutting down or
        backed up. ``emit`` without a future: what a callback-style source uses."""
        if self._closing:
            self.metrics.input_rejected.inc(len(ops), reason="shutting_down")
            raise NotAccepted("observer is shutting down", retry_after=5)
        if self._pending_ops + len(ops) > MAX_PENDING_OPS:  # (one check for both refusals)
            if len(ops) > MAX_PENDING_OPS:
                self.metrics.input_rejected.inc(len(ops), reason="too_large")
                raise BatchTooLarge(
                    f"a batch of {len(ops)} ops is more than the engine ever holds "
                    f"({MAX_PENDING_OPS})"
                )
            self.metrics.input_rejected.inc(len(ops), reason="backlog")
            raise NotAccepted("input is backed up; retry shortly", retry_after=1)
        self._pending.append((ops, on_accepted))
        self._pending_ops += len(ops)
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _poke(self) -> None:
        """Wake the dispatcher if it is waiting for work."""
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _dispatch_loop(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._dispatching = False
                drained = self._drained
                if drained is not None:
                    self._drained = None
                    if not drained.done():
                        drained.set_result(None)
                self._wake = loop.create_future()
                try:
                    await self._wake
                finally:
                    self._wake = None
            self._dispatching = True
            if len(self._pending) > 1 or self._last_batch > 1:
                # Requests are arriving together: let the event loop read what is ready
                # once more, so that this commit takes it too. Fewer, larger commits mean
                # fewer hand-offs to a sink's writer thread (context switches); alone, a
                # request is committed at once.
                await asyncio.sleep(0)
            batch = list(self._pending)
            self._pending.clear()
            self._pending_ops = 0
            self._last_batch = len(batch)
            ops = batch[0][0] if len(batch) == 1 else [op for item in batch for op in item[0]]
            error = await self._write_acked(ops)
            if error is None:
                self._accept(ops)
            for _, on_accepted in batch:
                try:
                    on_accepted(error)
                except Exception:
                    log.exception("a source failed to take its answer")

    async def _write_acked(self, ops: Sequence[Op]) -> NotAccepted | None:
        for item in self._ack_sinks:
            sink = item.component
            assert isinstance(sink, Sink)
            try:
                await sink.write(ops)
            except Exception as exc:
                item.ctx.error("write failed, %d ops refused: %s", len(ops), exc)
                self.metrics.input_rejected.inc(len(ops), reason="sink_failed")
                self._ack_failing[item.spec.qualified] = item
                return NotAccepted(f"sink {item.spec.qualified} cannot write: {exc}", retry_after=5)
        written = self._sink_records.values  # Counter.inc, without its per-call label sort
        for key in self._ack_record_keys:
            written[key] = written.get(key, 0.0) + len(ops)
        if self._ack_failing:
            self._ack_failing.clear()
        return None

    async def _probe_failed_sinks(self) -> None:
        """Every ``READY_PROBE_SECS``, write nothing to each ack-holding sink whose last write
        failed (``Sink.probe``): one that succeeds is ready again, traffic or not."""
        while True:
            await anyio.sleep(READY_PROBE_SECS)
            for name, item in list(self._ack_failing.items()):
                sink = item.component
                assert isinstance(sink, Sink)
                try:
                    with anyio.fail_after(FINDING_WRITE_TIMEOUT):
                        await sink.probe()
                except Exception as exc:
                    item.ctx.logger.debug("still cannot write: %r", exc)
                else:
                    self._ack_failing.pop(name, None)
                    item.ctx.logger.info("writes again: ready")

    def _accept(self, ops: Sequence[Op]) -> None:
        self.ring.extend(ops)
        # Counted in C (map, sum) for the usual batch, whose ops share a source.
        sources = set(map(_source_of, ops))
        if len(sources) == 1:
            self._count_received(sources.pop(), len(ops), len(ops) - sum(map(_success_of, ops)))
        else:
            totals: Tally[str] = Tally(map(_source_of, ops))
            failures: Tally[str] = Tally([op.source for op in ops if not op.success])
            for source, total in totals.items():
                self._count_received(source, total, failures[source])
        # Model calls are counted only if an op has attributes (checked in C): for a batch
        # without any, the call and its scan were 41 bytecodes and 3 frames (measured: a
        # fifth of what _accept adds to a one-request commit).
        if any(map(_attributes_of, ops)):
            count_ops(self.metrics, ops)
        for pump in self._pumps:
            pump.queue.put_many(ops)
        for item in self._observers:
            _observe(item, ops)
        if self.tap.subscribers:
            self.tap.ops(ops)

    def _count_received(self, source: str, total: int, failed: int) -> None:
        counter = self.metrics.ops_received
        label = self.metrics.source_label(source)
        if total > failed:
            counter.inc(total - failed, source=label, outcome="success")
        if failed:
            counter.inc(failed, source=label, outcome="failure")

    async def _publish_from(self, instance: str, findings: Sequence[Finding]) -> None:
        """``ctx.publish`` of ``instance``: counted as its findings in ``/stats``, then
        published."""
        run = self._analyzer_runs.get(instance)
        if run is not None:
            run["findings"] += len(findings)
        await self.publish(findings)

    async def publish(self, findings: Sequence[Finding]) -> None:
        """Hand findings to every sink that accepts their kind (each write under a timeout)."""
        if not findings:
            return
        self._recent_findings.extend(
            {"ts": now_timestamp(), "kind": finding.kind, "data": preview(finding.data)}
            for finding in findings[-RECENT_MAX:]
        )
        if self.tap.subscribers:
            self.tap.findings(findings)
        for item in self._sinks:
            accepts = item.spec.accepts
            chosen = [finding for finding in findings if finding.kind in accepts]
            if not chosen:
                continue
            sink = item.component
            assert isinstance(sink, Sink)
            try:
                with anyio.fail_after(FINDING_WRITE_TIMEOUT):
                    await sink.write(chosen)
            except Exception as exc:
                item.ctx.error("could not write %d findings: %r", len(chosen), exc)
            else:
                self._sink_records.inc(len(chosen), instance=item.spec.qualified)

    # -- background work --------------------------------------------------

    def _spawn(
        self,
        ctx: Context,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        timeout: float | None,
    ) -> None:
        if self._background is None:
            raise RuntimeError("spawn() is only available while the daemon runs")
        self._spawned_running += 1
        self._background.start_soon(self._counted, ctx, fn, args, timeout)

    async def _counted(
        self,
        ctx: Context,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        timeout: float | None,
    ) -> None:
        """:meth:`_guarded`, counted in ``_spawned_running`` until it ends (for :meth:`idle`)."""
        try:
            await self._guarded(ctx, fn, args, timeout)
        finally:
            self._spawned_running -= 1

    async def _guarded(
        self,
        ctx: Context,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        timeout: float | None,
    ) -> None:
        try:
            with anyio.fail_after(timeout) if timeout else contextlib.nullcontext():
                await fn(*args)
        except TimeoutError:
            ctx.error("%s timed out after %ss", getattr(fn, "__name__", "task"), timeout)
        except Exception:
            ctx.logger.exception("%s failed", getattr(fn, "__name__", "task"))
            ctx.metrics.instance_errors.inc(instance=ctx.instance)

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
        return {
            "emits_pending": len(self._pending),
            "committing": int(self._dispatching),
            "sink_queues": sum(len(pump.queue) for pump in self._pumps),
            "sink_writes": sum(pump.writing for pump in self._pumps),
            "spawned": self._spawned_running,
        }

    async def idle(self) -> None:
        """Return once :meth:`pending_work` is all zero: every op handed in so far is
        committed and written to every op sink, and spawned work has finished.

        Waits as long as that takes: bound it with ``anyio.fail_after``. Work that
        starts after it returns (the next cycle, a push source's next ops) is not
        waited for.
        """
        while any(self.pending_work().values()):
            await anyio.sleep(IDLE_POLL_SECS)

    # -- cycles -----------------------------------------------------------

    @property
    def step_timeout(self) -> float:
        """Seconds each ``poll`` and ``analyze`` may take before it is cut off (logged and
        counted against the instance): the ``step_timeout`` the engine was built with,
        else ``max(cycle_secs, 10)``."""
        if self._step_timeout_secs is not None:
            return float(self._step_timeout_secs)
        return max(float(self.settings.cycle_secs), 10.0)

    def _step_timeout(self) -> float:
        return self.step_timeout

    async def run_cycle(self) -> None:
        """One cycle: poll per-cycle sources, run due analyzers, log a stats line."""
        self.cycle += 1
        started = time.perf_counter()
        for item in self._of(Source):
            source = item.component
            assert isinstance(source, Source)
            if source.is_polled():
                await self._step(item, source.poll(self.emitter), "poll")
        await self.run_analyzers()
        elapsed = time.perf_counter() - started
        self.metrics.cycles.inc()
        self.metrics.cycle_duration.set(elapsed)
        total = len(self.ring)
        successes = sum(map(_success_of, self.ring))
        sources = len(set(map(_source_of, self.ring)))
        log.info(
            "cycle %d: total_ops=%d successes=%d failures=%d sources=%d (%.1f ms)",
            self.cycle,
            total,
            successes,
            total - successes,
            sources,
            elapsed * 1000,
        )

    def _note_analyzer_run(
        self, item: _Instance, began: float, findings: int, errors_before: float
    ) -> None:
        """Remember an analyzer's run for ``/stats``: when, how long, what it found."""
        run = self._analyzer_runs[item.spec.qualified]
        run["last_run"] = now_timestamp()
        run["duration_ms"] = round((time.perf_counter() - began) * 1000, 3)
        run["findings"] += findings
        failed = self.metrics.instance_errors.get(instance=item.spec.qualified) > errors_before
        run["errors"] += int(failed)

    async def run_analyzers(self) -> None:
        """Run the analyzers due on ``self.cycle`` over the ring, publishing their findings."""
        window = self.ring.window(self.cycle)
        for item in self._of(Analyzer):
            analyzer = item.component
            assert isinstance(analyzer, Analyzer)
            if self.cycle % item.spec.every == 0:
                errors = self.metrics.instance_errors.get(instance=item.spec.qualified)
                began = time.perf_counter()
                findings = await self._step(item, analyzer.analyze(window), "analyze")
                self._note_analyzer_run(item, began, len(findings or ()), errors)
                if findings:
                    await self.publish(findings)

    async def _step(self, item: _Instance, work: Awaitable[Any], what: str) -> Any:
        try:
            with anyio.fail_after(self._step_timeout()):
                return await work
        except TimeoutError:
            item.ctx.error("%s timed out after %ss", what, self._step_timeout())
        except NotAccepted as exc:
            item.ctx.logger.warning("%s: ops not accepted yet: %s", what, exc)
        except Exception:
            item.ctx.logger.exception("%s failed", what)
            self.metrics.instance_errors.inc(instance=item.spec.qualified)
        return None

    async def _cycle_loop(self) -> None:
        period = float(self.settings.cycle_secs)
        next_tick = anyio.current_time() + period
        while True:
            await anyio.sleep_until(next_tick)
            await self.run_cycle()
            next_tick += period
            late = anyio.current_time() - next_tick
            if late >= 0:
                missed = int(late // period) + 1
                self.metrics.cycles_skipped.inc(missed)
                log.warning("cycle %d ran long: skipped %d tick(s)", self.cycle, missed)
                next_tick += missed * period

    # -- lifecycle ----------------------------------------------------------

    async def open(self) -> None:
        """Open sinks, then analyzers, then sources, each in config order."""
        order = [*self._of(Sink), *self._of(Analyzer), *self._of(Source)]
        opened: list[_Instance] = []
        for item in order:
            try:
                await item.component.open()
            except Exception as exc:
                for done in reversed(opened):
                    with anyio.CancelScope(shield=True):
                        await _quietly(done.component.aclose())
                        await _quietly(done.ctx.aclose_clients())
                raise StartupError(f"[{item.spec.qualified}] cannot start: {_reason(exc)}") from exc
            opened.append(item)
            self._opened.add(item.spec.qualified)
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
        async with anyio.create_task_group() as daemon:
            daemon.start_soon(self._dispatch_loop)
            daemon.start_soon(self._probe_loop_lag)
            if self._ack_sinks:
                daemon.start_soon(self._probe_failed_sinks)
            for pump in self._pumps:
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

    async def serve(self) -> None:
        """Run until SIGINT/SIGTERM, then shut down cleanly."""
        async with self.running() as inputs:
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
                group.start_soon(self._run_source, item, source)

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

    async def _run_source(self, item: _Instance, source: Source) -> None:
        try:
            await source.run(self.emitter)
        except Exception:
            item.ctx.logger.exception("stopped with an error")
            self.metrics.instance_errors.inc(instance=item.spec.qualified)

    async def _run_sinks(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run each sink's background ``run()`` until shutdown cancels them (after flush)."""
        try:
            async with anyio.create_task_group() as group:
                self._sink_runners = group.cancel_scope
                task_status.started()
                for item in self._sinks:
                    sink = item.component
                    assert isinstance(sink, Sink)
                    if sink.has_run():
                        group.start_soon(self._run_sink, item, sink)
        finally:
            self._sink_runners_done.set()

    async def _run_sink(self, item: _Instance, sink: Sink) -> None:
        try:
            await sink.run()
        except Exception:
            item.ctx.logger.exception("background task stopped with an error")
            self.metrics.instance_errors.inc(instance=item.spec.qualified)

    async def _stop_sink_runners(self) -> None:
        if self._sink_runners is not None:
            self._sink_runners.cancel()
            await self._sink_runners_done.wait()

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        # SIGUSR1 reopens the sinks' files (what logrotate sends, contract §12.1); SIGHUP
        # does too until it also re-reads the config.
        reopen = (signal.SIGHUP, signal.SIGUSR1)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, *reopen) as signals:
            async for signum in signals:
                if signum in reopen:
                    log.info("%s: reopening sink files", signal.Signals(signum).name)
                    for item in self._sinks:
                        sink = item.component
                        assert isinstance(sink, Sink)
                        try:
                            await sink.reopen()
                        except Exception as exc:
                            item.ctx.error("reopen failed: %s", exc)
                    continue
                log.info("%s: shutting down", signal.Signals(signum).name)
                scope.cancel()
                return

    async def shutdown(self) -> None:
        """Stop taking input, drain, flush every sink, close everything (bounded in time)."""
        self._closing = True
        timeout = float(self.settings.shutdown_timeout_secs)
        with anyio.move_on_after(timeout, shield=True) as scope:
            while self._pending or self._dispatching:
                drained = self._drained = asyncio.get_running_loop().create_future()
                self._poke()
                await drained
            for pump in self._pumps:
                pump.queue.close()
                await pump.stopped.wait()
            for item in self._sinks:
                sink = item.component
                assert isinstance(sink, Sink)
                await _quietly(sink.flush(), item.ctx)
            await self._stop_sink_runners()
            for item in reversed(self.instances):
                await _quietly(item.component.aclose(), item.ctx)
                await _quietly(item.ctx.aclose_clients(), item.ctx)
        if scope.cancelled_caught:
            log.error("shutdown did not finish within %ss; exiting anyway", timeout)
        else:
            log.info("shutdown complete")


async def _quietly(work: Awaitable[Any], ctx: Context | None = None) -> None:
    try:
        await work
    except Exception as exc:
        if ctx is not None:
            ctx.error("%r", exc)
        else:
            log.warning("while closing: %r", exc)


def _observe(item: _Instance, ops: Sequence[Op]) -> None:
    """Show committed ops to an analyzer's ``observe``; its failure is its own."""
    analyzer = item.component
    assert isinstance(analyzer, Analyzer)
    try:
        analyzer.observe(ops)
    except Exception:
        item.ctx.logger.exception("observe failed")
        item.ctx.metrics.instance_errors.inc(instance=item.spec.qualified)


_source_of = attrgetter("source")
_success_of = attrgetter("success")
_attributes_of = attrgetter("attributes")


def _holds_ack(item: _Instance) -> bool:
    return isinstance(item.component, Sink) and item.component.holds_ack


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__


def _top(tally: Tally[str], limit: int) -> dict[str, int]:
    """The ``limit`` largest counts of ``tally``, each name cut to 128 bytes (as a metric
    label); when there are more, the largest ``limit - 1`` and the rest under ``other``."""
    if any(len(name) * 4 > MAX_LABEL_BYTES for name in tally):
        cut: Tally[str] = Tally()
        for name, count in tally.items():
            cut[cut_utf8(name, MAX_LABEL_BYTES)] += count
        tally = cut
    if len(tally) <= limit:
        return dict(tally)
    top = dict(tally.most_common(limit - 1))
    top["other"] = top.get("other", 0) + tally.total() - sum(top.values())
    return top


def _or_none(value: Any) -> Any:
    return None if value is UNSET else value


def preview(value: Any, depth: int = 4) -> Any:
    """``value`` as plain data with every string cut to ``PREVIEW_CHARS`` and every list to
    ``PREVIEW_ITEMS``: what ``/stats`` may show of client-written records, bounded in bytes."""
    if isinstance(value, str):
        return value if len(value) <= PREVIEW_CHARS else value[: PREVIEW_CHARS - 1] + "…"
    if isinstance(value, int | float | bool) or value is None:
        return value
    if depth == 0:
        return "…"
    if isinstance(value, dict):
        items = list(value.items())[: PREVIEW_ITEMS * 4]
        return {preview(key, 0): preview(item, depth - 1) for key, item in items}
    if isinstance(value, list | tuple):
        return [preview(item, depth - 1) for item in value[:PREVIEW_ITEMS]]
    return preview(msgspec.to_builtins(value), depth)
