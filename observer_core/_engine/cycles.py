"""Cycles and publishing: polling the per-cycle sources, running the analyzers that are
due (noting each run for ``/stats``), and handing findings to the sinks that accept them."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from ..components import Analyzer, Emitter, Sink, Source
from ..metrics import Metrics
from ..records import Finding, now_timestamp
from ..ring import Ring
from ..tap import TapHub
from .dispatch import SINK_RECORDS, SINK_RECORDS_HELP, source_of, success_of
from .instance import WRITE_TIMEOUT, Instance, fail, guard
from .introspect import RECENT_MAX, preview

__all__ = ["Cycles", "Publisher"]

log = logging.getLogger("observer_core")

Publish = Callable[[Sequence[Finding]], Awaitable[None]]
"""Where findings go: :meth:`Engine.publish`."""


class Publisher:
    """Hands findings to every sink that accepts their kind, and to the taps; keeps the
    newest for ``/stats``."""

    def __init__(self, instances: Sequence[Instance], metrics: Metrics, tap: TapHub) -> None:
        self._sinks: list[Instance] = []
        self.assign(instances)
        self._tap = tap
        self._sink_records = metrics.counter(SINK_RECORDS, SINK_RECORDS_HELP)
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_MAX)
        """The newest findings (previewed), oldest first."""

    def assign(self, instances: Sequence[Instance]) -> None:
        """Take the sinks of ``instances`` as where findings go (a reload)."""
        self._sinks = [item for item in instances if isinstance(item.component, Sink)]

    async def publish(self, findings: Sequence[Finding]) -> None:
        """Hand findings to every sink that accepts their kind (each write under a timeout)."""
        if not findings:
            return
        self.recent.extend(
            {"ts": now_timestamp(), "kind": finding.kind, "data": preview(finding.data)}
            for finding in findings[-RECENT_MAX:]
        )
        if self._tap.subscribers:
            self._tap.findings(findings)
        for item in self._sinks:
            accepts = item.spec.accepts
            chosen = [finding for finding in findings if finding.kind in accepts]
            if not chosen:
                continue
            sink = item.component
            assert isinstance(sink, Sink)
            try:
                with anyio.fail_after(WRITE_TIMEOUT):
                    await sink.write(chosen)
            except Exception as exc:
                fail(item.ctx, f"could not write {len(chosen)} findings: {exc!r}")
            else:
                self._sink_records.inc(len(chosen), instance=item.spec.qualified)


class Cycles:
    """Runs cycles: polls the per-cycle sources, runs the analyzers due and publishes what
    they find; counts the cycles and notes each analyzer's runs."""

    def __init__(
        self,
        instances: Sequence[Instance],
        *,
        metrics: Metrics,
        ring: Ring,
        emitter: Emitter,
        publish: Publish,
        step_timeout: Callable[[], float],
        cycle_secs: float,
    ) -> None:
        self._instances = instances
        self._metrics = metrics
        self._ring = ring
        self._emitter = emitter
        self._publish = publish
        self._step_timeout = step_timeout
        self.cycle_secs = cycle_secs
        """The period (change it with :meth:`set_period`)."""
        self._period_changed = anyio.Event()
        self.cycle = 0
        """Cycles run so far."""
        self.lock = anyio.Lock()
        """Held while a cycle runs: a reload holds it to change instances between cycles."""
        self.analyzer_runs: dict[str, dict[str, Any]] = {}
        """Per analyzer: its last run, how long it took, findings and errors so far."""
        self.assign(instances)

    def set_period(self, secs: float) -> None:
        """A new ``cycle_secs`` (a reload): the next cycle runs ``secs`` from now."""
        if secs != self.cycle_secs:
            self.cycle_secs = secs
            self._period_changed.set()

    def assign(self, instances: Sequence[Instance]) -> None:
        """Note the analyzers of ``instances`` (a reload): one kept keeps its run notes.
        (The instances themselves are the engine's list, changed in place.)"""
        runs = {
            item.spec.qualified: self.analyzer_runs.get(item.spec.qualified)
            or {"last_run": None, "duration_ms": None, "findings": 0, "errors": 0}
            for item in instances
            if isinstance(item.component, Analyzer)
        }
        self.analyzer_runs.clear()  # in place: Introspection reads the same dict
        self.analyzer_runs.update(runs)

    async def publish_from(self, instance: str, findings: Sequence[Finding]) -> None:
        """``ctx.publish`` of ``instance``: counted as its findings in ``/stats``, then
        published."""
        run = self.analyzer_runs.get(instance)
        if run is not None:
            run["findings"] += len(findings)
        await self._publish(findings)

    async def run_cycle(self) -> None:
        """One cycle: poll per-cycle sources, run due analyzers, log a stats line."""
        self.cycle += 1
        started = time.perf_counter()
        for item in self._instances:
            source = item.component
            if isinstance(source, Source) and source.is_polled():
                await self._step(item, "poll", source.poll, self._emitter)
        await self.run_analyzers()
        elapsed = time.perf_counter() - started
        self._metrics.cycles.inc()
        self._metrics.cycle_duration.set(elapsed)
        ring = self._ring
        total = len(ring)
        successes = sum(map(success_of, ring))
        sources = len(set(map(source_of, ring)))
        log.info(
            "cycle %d: total_ops=%d successes=%d failures=%d sources=%d (%.1f ms)",
            self.cycle,
            total,
            successes,
            total - successes,
            sources,
            elapsed * 1000,
        )

    async def run_analyzers(self) -> None:
        """Run the analyzers due on :attr:`cycle` over the ring, publishing their findings."""
        window = self._ring.window(self.cycle)
        errors = self._metrics.instance_errors
        for item in self._instances:
            analyzer = item.component
            if not isinstance(analyzer, Analyzer) or self.cycle % item.spec.every:
                continue
            before = errors.get(instance=item.spec.qualified)
            began = time.perf_counter()
            findings = await self._step(item, "analyze", analyzer.analyze, window)
            self._note_run(item, began, len(findings or ()), before)
            if findings:
                await self._publish(findings)

    def _note_run(self, item: Instance, began: float, findings: int, errors_before: float) -> None:
        """Remember an analyzer's run for ``/stats``: when, how long, what it found."""
        run = self.analyzer_runs[item.spec.qualified]
        run["last_run"] = now_timestamp()
        run["duration_ms"] = round((time.perf_counter() - began) * 1000, 3)
        run["findings"] += findings
        failed = self._metrics.instance_errors.get(instance=item.spec.qualified) > errors_before
        run["errors"] += int(failed)

    async def _step(
        self, item: Instance, what: str, fn: Callable[..., Awaitable[Any]], arg: Any
    ) -> Any:
        """``fn(arg)`` of an instance within the step timeout; None if it failed."""
        return await guard(item.ctx, what, self._step_timeout(), fn, arg, refusal_is_error=False)

    async def run_forever(self) -> None:
        """Run a cycle every ``cycle_secs``; a cycle that runs long skips the ticks it missed."""
        period = self.cycle_secs
        next_tick = anyio.current_time() + period
        while True:
            with anyio.CancelScope(deadline=next_tick):
                await self._period_changed.wait()
            if self._period_changed.is_set():  # a reload changed it: start over
                self._period_changed = anyio.Event()
                period = self.cycle_secs
                next_tick = anyio.current_time() + period
                continue
            async with self.lock:
                await self.run_cycle()
            next_tick += period
            late = anyio.current_time() - next_tick
            if late >= 0:
                missed = int(late // period) + 1
                self._metrics.cycles_skipped.inc(missed)
                log.warning("cycle %d ran long: skipped %d tick(s)", self.cycle, missed)
                next_tick += missed * period
