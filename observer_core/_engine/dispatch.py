"""The ingest path: group commit of the ops sources hand in, and the sinks they go to.

Sources hand ops to :meth:`Dispatcher.emit` (or :meth:`Dispatcher.submit`). One task
(:meth:`Dispatcher.run`) takes every op waiting at that moment (group commit), writes the
batch to each ack-holding op sink, then puts it in the ring and releases the waiting
sources; other op sinks get the batch through a bounded queue of their own
(:class:`SinkPump`). Per-request code: every attribute hop here is measured
(``bench/instructions.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter as Tally
from collections import deque
from collections.abc import Sequence
from functools import partial
from operator import attrgetter
from typing import Final

import anyio

from ..components import Analyzer, BatchTooLarge, Emitter, NotAccepted, OnAccepted, Sink
from ..genai import count_ops
from ..metrics import MAX_LABEL_BYTES, MAX_LABEL_VALUES, Labels, Metrics
from ..queues import DropOldestQueue
from ..records import Op
from ..ring import Ring
from ..tap import TapHub
from .instance import WRITE_TIMEOUT, Instance, fail, holds_ack

__all__ = ["MAX_PENDING_OPS", "SINK_RECORDS", "SINK_RECORDS_HELP", "Dispatcher", "SinkPump"]

log = logging.getLogger("observer_core")

MAX_PENDING_OPS: Final = 65536
"""Ops waiting for the dispatcher before ``emit`` answers "backed up" (503); a single
submission of more is refused outright (:class:`BatchTooLarge`): no retry can clear it."""
SINK_QUEUE_MAX: Final = 10000
"""Default bound of a non-ack sink's queue (a sink's own ``queue_max`` wins)."""
READY_PROBE_SECS: Final = 5.0
"""How often an ack-holding sink whose last write failed is probed (``/ready``)."""
SINK_RECORDS = "observer_sink_records_total"
SINK_RECORDS_HELP = "Records a sink has written (ops and findings)."
COMMITS = "observer_commits_total"
COMMITS_HELP = (
    "Commits of ops to the ack-holding sinks and the ring: path=now for a lone request's,"
    " written at once; path=group for the dispatcher's (one or more requests together)."
)
_NOW: Final[tuple[tuple[str, str], ...]] = (("path", "now"),)
_GROUP: Final[tuple[tuple[str, str], ...]] = (("path", "group"),)

_Pending = tuple[Sequence[Op], OnAccepted]
"""Ops waiting for the dispatcher, and what to call once they are accepted or refused."""

source_of: Final = attrgetter("source")
success_of: Final = attrgetter("success")
_attributes_of: Final = attrgetter("attributes")


def _settle(done: asyncio.Future[None], error: NotAccepted | None) -> None:
    """Resolve an ``emit`` future. A bare asyncio future (anyio runs on asyncio here): an
    ``anyio.Event`` per request cost ten times as much on the ingest path."""
    if done.done():  # its emitter was cancelled
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


class SinkPump:
    """Feeds a sink that does not hold acks from a bounded, drop-oldest queue."""

    def __init__(self, instance: Instance, metrics: Metrics) -> None:
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
                    fail(self.instance.ctx, f"write failed, {len(batch)} records lost: {exc!r}")
                else:
                    self._written.inc(len(batch), instance=name)
        finally:
            self.stopped.set()


class Pause:
    """:meth:`Dispatcher.paused`: an async context manager (a class, not a generator:
    dispatch.py is compiled by mypyc, which has no async generators)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self._hold: asyncio.Future[None] | None = None

    async def __aenter__(self) -> None:
        dispatcher = self._dispatcher
        self._hold = dispatcher.hold = asyncio.get_running_loop().create_future()
        try:
            with anyio.fail_after(dispatcher.hold_secs):
                while dispatcher._committing:
                    await anyio.sleep(0.005)
        except BaseException:
            self._release()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._release()

    def _release(self) -> None:
        self._dispatcher.hold = None
        if self._hold is not None:
            self._hold.set_result(None)
            self._hold = None


class Dispatcher:
    """Takes ops in, commits them in groups: to the ack-holding op sinks, then the ring,
    the other op sinks' queues, the observing analyzers and the taps."""

    def __init__(
        self, instances: Sequence[Instance], metrics: Metrics, ring: Ring, tap: TapHub
    ) -> None:
        self.metrics = metrics
        self.ring = ring
        self.tap = tap
        self.ack_sinks: list[Instance] = []
        self.pumps: list[SinkPump] = []
        self._observers: list[Instance] = []
        """Analyzers that see each committed batch (``Analyzer.observe``)."""
        self._ack_record_keys: list[tuple[tuple[str, str], ...]] = []
        self._received_keys: dict[str, tuple[Labels, Labels]] = {}
        """observer_ops_received_total's sample keys, by source (see _count_received)."""
        self.assign(instances)
        self.sink_records = metrics.counter(SINK_RECORDS, SINK_RECORDS_HELP)
        self._commits = metrics.counter(COMMITS, COMMITS_HELP).values
        """observer_commits_total's values, by label set (Counter.inc without its sort)."""
        self.hold: asyncio.Future[None] | None = None
        """While set (:meth:`paused`), nothing is committed; it resolves when that ends."""
        self.hold_secs = 10.0
        """How long ops may wait for a pause to end before they are refused (503)."""
        self._committing = False
        """Between taking a batch and answering it."""
        self.ack_down: str | None = None
        """An ack-holding op sink that is down (a reload could not restart it): every op is
        refused, none acknowledged without being written."""
        self.ack_failing: dict[str, Instance] = {}
        """Ack-holding sinks whose last write failed, by name: not ready until one succeeds."""
        self.closing = False
        """Shutting down: ``submit`` refuses ops."""
        self.max_pending = MAX_PENDING_OPS
        """Ops that may wait for the dispatcher (:data:`MAX_PENDING_OPS`; tests lower it)."""
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
        """What :meth:`drain` awaits: resolved when the dispatcher next finds nothing to do."""
        self.busy_poll_secs = 0.0
        """After a commit, how long the event loop keeps polling, without sleeping, for the
        next ops (``[observer] busy_poll_us``); 0: it sleeps at once."""
        self._poll_until = 0.0
        """The loop time until which the idle dispatcher busy-polls (0: not since start)."""
        self.emitter = Emitter(self.emit, self.submit, self.commit_now)
        """The ``emit`` sources get. Its ``lone`` is set while :meth:`commit_now` may
        commit: the dispatcher is idle, and its last group held one submission."""

    def assign(self, instances: Sequence[Instance]) -> list[SinkPump]:
        """Take ``instances`` as the op sinks and observers; a sink kept (a reload) keeps
        its queue. Returns the pumps that are new, for the caller to run."""
        op_sinks = [
            item
            for item in instances
            if isinstance(item.component, Sink) and "op" in item.spec.accepts
        ]
        self.ack_sinks = [item for item in op_sinks if holds_ack(item)]
        self._ack_record_keys = [(("instance", item.spec.qualified),) for item in self.ack_sinks]
        kept = {pump.instance: pump for pump in self.pumps}
        self.pumps = [
            kept.get(item) or SinkPump(item, self.metrics)
            for item in op_sinks
            if not holds_ack(item)
        ]
        self._observers = [
            item
            for item in instances
            if isinstance(item.component, Analyzer) and item.component.observes()
        ]
        return [pump for pump in self.pumps if pump.instance not in kept]

    async def remove_pump(self, item: Instance) -> None:
        """Stop feeding ``item`` and wait until its queue is written (it is being stopped)."""
        for pump in self.pumps:
            if pump.instance is item:
                self.pumps.remove(pump)
                pump.queue.close()
                await pump.stopped.wait()
                return

    def paused(self) -> Pause:
        """Commit nothing inside this block (``async with``; sinks are being swapped): ops
        wait, at most :attr:`hold_secs`, then get 503. The commit under way finishes first
        (bounded by :attr:`hold_secs` too: TimeoutError)."""
        return Pause(self)

    async def unpaused(self) -> None:
        """Return once no pause is on (at most :attr:`hold_secs` from now)."""
        if (hold := self.hold) is not None:
            with anyio.move_on_after(self.hold_secs):
                await asyncio.shield(hold)

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
        if self.closing:
            self.metrics.input_rejected.inc(len(ops), reason="shutting_down")
            raise NotAccepted("observer is shutting down", retry_after=5)
        limit = self.max_pending
        if self._pending_ops + len(ops) > limit:  # (one check for both refusals)
            if len(ops) > limit:
                self.metrics.input_rejected.inc(len(ops), reason="too_large")
                raise BatchTooLarge(
                    f"a batch of {len(ops)} ops is more than the engine ever holds ({limit})"
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

    async def run(self) -> None:
        """The dispatcher: commit what is waiting, then wait for more; until cancelled."""
        loop = self._loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._dispatching = False
                if self._last_batch <= 1:
                    self.emitter.lone = True
                drained = self._drained
                if drained is not None:
                    self._drained = None
                    if not drained.done():
                        drained.set_result(None)
                if self._poll_until and loop.time() < self._poll_until:
                    # Busy poll: a client that sends its next ops at once is read without
                    # the loop sleeping in epoll, and its CPU halting, in between (measured,
                    # c=1: 9.0k -> 15.8k events/s, BENCHMARKS.md). A step of this task is a
                    # loop iteration whose poll does not wait.
                    await asyncio.sleep(0)
                    continue
                self._wake = loop.create_future()
                try:
                    await self._wake
                finally:
                    self._wake = None
            self._dispatching = True
            self.emitter.lone = False  # until it is idle again: nothing overtakes this group
            if len(self._pending) > 1 or self._last_batch > 1:
                # Requests are arriving together: let the event loop read what is ready
                # once more, so that this commit takes it too. Fewer, larger commits mean
                # fewer hand-offs to a sink's writer thread (context switches); alone, a
                # request is committed at once.
                await asyncio.sleep(0)
            if self.hold is not None and not await self._held():
                continue
            self._committing = True
            batch = list(self._pending)
            self._pending.clear()
            self._pending_ops = 0
            self._last_batch = len(batch)
            ops = batch[0][0] if len(batch) == 1 else [op for item in batch for op in item[0]]
            error = await self._write_acked(ops)
            if error is None:
                self.accept(ops)
                commits = self._commits
                commits[_GROUP] = commits.get(_GROUP, 0.0) + 1
            for _, on_accepted in batch:
                try:
                    on_accepted(error)
                except Exception:
                    log.exception("a source failed to take its answer")
            self._committing = False
            if self.busy_poll_secs:
                self._poll_until = loop.time() + self.busy_poll_secs

    async def _held(self) -> bool:
        """Wait while :meth:`paused`: True once it ended. After :attr:`hold_secs` the ops
        waiting are refused (503 with Retry-After) and False is returned."""
        hold = self.hold
        assert hold is not None
        with anyio.move_on_after(self.hold_secs):
            await asyncio.shield(hold)
            return True
        batch = list(self._pending)
        self._pending.clear()
        self._pending_ops = 0
        self.metrics.input_rejected.inc(sum(len(ops) for ops, _ in batch), reason="reloading")
        refusal = NotAccepted("the config is being reloaded; retry shortly", retry_after=1)
        for _, on_accepted in batch:
            try:
                on_accepted(refusal)
            except Exception:
                log.exception("a source failed to take its answer")
        return False

    def commit_now(self, ops: Sequence[Op]) -> bool:
        """Commit ``ops`` at once, without the dispatcher's round trip through the event
        loop, when that needs no wait: the traffic is lone (``emitter.lone``: the dispatcher
        is idle, and its last group held one submission), nothing is pending or holding
        commits, and the ack-holding op sink (one at most) writes them at once
        (:meth:`Sink.write_now`). True: committed, as
        ``on_accepted(None)`` would have said; False: nothing was done, ``submit`` them.
        Raises :class:`NotAccepted` if that sink failed to write them (counted as
        ``submit``'s refusal is). Called while ``emitter.lone`` is set."""
        emitter = self.emitter
        if (
            not emitter.lone
            or self._pending
            or self.hold is not None
            or self.closing
            or self.ack_down is not None
            or len(self.ack_sinks) > 1
            or len(ops) > self.max_pending  # submit refuses it, saying why
        ):
            return False
        for item in self.ack_sinks:
            sink = item.component
            assert isinstance(sink, Sink)
            try:
                if not sink.write_now(ops):
                    return False
            except Exception as exc:
                raise self._write_failed(item, ops, exc) from None
        self._written(ops)
        self.accept(ops)
        commits = self._commits
        commits[_NOW] = commits.get(_NOW, 0.0) + 1
        emitter.lone = False
        if self.busy_poll_secs and self._loop is not None:
            self._poll_until = self._loop.time() + self.busy_poll_secs
        self._poke()  # an idle dispatcher looks again (and busy-polls, as after its commits)
        return True

    async def _write_acked(self, ops: Sequence[Op]) -> NotAccepted | None:
        if self.ack_down is not None:
            self.metrics.input_rejected.inc(len(ops), reason="sink_failed")
            return NotAccepted(f"sink {self.ack_down} is down", retry_after=5)
        for item in self.ack_sinks:
            sink = item.component
            assert isinstance(sink, Sink)
            try:
                await sink.write(ops)
            except Exception as exc:
                return self._write_failed(item, ops, exc)
        self._written(ops)
        return None

    def _write_failed(self, item: Instance, ops: Sequence[Op], exc: Exception) -> NotAccepted:
        """An ack-holding sink failed to write ``ops``: reported, counted; the refusal."""
        fail(item.ctx, f"write failed, {len(ops)} ops refused: {exc}")
        self.metrics.input_rejected.inc(len(ops), reason="sink_failed")
        self.ack_failing[item.spec.qualified] = item
        return NotAccepted(f"sink {item.spec.qualified} cannot write: {exc}", retry_after=5)

    def _written(self, ops: Sequence[Op]) -> None:
        """Every ack-holding sink has ``ops``: counted; a sink that failed before is ready."""
        written = self.sink_records.values  # Counter.inc, without its per-call label sort
        for key in self._ack_record_keys:
            written[key] = written.get(key, 0.0) + len(ops)
        if self.ack_failing:
            self.ack_failing.clear()

    async def probe_failed_sinks(self) -> None:
        """Every ``READY_PROBE_SECS``, write nothing to each ack-holding sink whose last write
        failed (``Sink.probe``): one that succeeds is ready again, traffic or not."""
        while True:
            await anyio.sleep(READY_PROBE_SECS)
            for name, item in list(self.ack_failing.items()):
                sink = item.component
                assert isinstance(sink, Sink)
                try:
                    with anyio.fail_after(WRITE_TIMEOUT):
                        await sink.probe()
                except Exception as exc:
                    item.ctx.logger.debug("still cannot write: %r", exc)
                else:
                    self.ack_failing.pop(name, None)
                    item.ctx.logger.info("writes again: ready")

    def accept(self, ops: Sequence[Op]) -> None:
        """Commit ops the ack-holding sinks have: into the ring, the counts, the other op
        sinks' queues, each observing analyzer and the taps."""
        self.ring.extend(ops)
        if ops:
            # The usual batch's ops share a source: counted in one pass (compiled, a loop
            # reading two fields an op cost a third of a set of the sources and a sum).
            source = ops[0].source
            failed = 0
            for op in ops:
                if op.source != source:
                    self._count_sources(ops)
                    break
                if not op.success:
                    failed += 1
            else:
                self._count_received(source, len(ops), failed)
        self._accept_rest(ops)

    def _count_sources(self, ops: Sequence[Op]) -> None:
        """:meth:`accept`'s counts for a batch whose ops come from more than one source."""
        totals: Tally[str] = Tally(map(source_of, ops))
        failures: Tally[str] = Tally([op.source for op in ops if not op.success])
        for source, total in totals.items():
            self._count_received(source, total, failures[source])

    def _accept_rest(self, ops: Sequence[Op]) -> None:
        """:meth:`accept` after the ring and the counts: model calls, the other op sinks'
        queues, the observing analyzers, the taps."""
        # Model calls are counted only if an op has attributes (checked in C): for a batch
        # without any, the call and its scan were 41 bytecodes and 3 frames (measured: a
        # fifth of what accept adds to a one-request commit).
        if any(map(_attributes_of, ops)):
            count_ops(self.metrics, ops)
        for pump in self.pumps:
            pump.queue.put_many(ops)
        for item in self._observers:
            _observe(item, ops)
        if self.tap.subscribers:
            self.tap.ops(ops)

    def _count_received(self, source: str, total: int, failed: int) -> None:
        """observer_ops_received_total, by source and outcome: Counter.inc without its
        per-call sort of the labels (measured: ~40 bytecodes of a lone request's commit)."""
        keys = self._received_keys.get(source) or self._received_keys_of(source)
        values = self.metrics.ops_received.values
        if total > failed:
            values[keys[0]] = values.get(keys[0], 0.0) + (total - failed)
        if failed:
            values[keys[1]] = values.get(keys[1], 0.0) + failed

    def _received_keys_of(self, source: str) -> tuple[Labels, Labels]:
        """The sample keys (success, failure) of ``source``'s ops, remembered for as many
        sources as the label takes, of at most MAX_LABEL_BYTES characters each (others are
        labelled each time), so what it holds is bounded in bytes."""
        label = self.metrics.source_label(source)
        keys = (
            (("outcome", "success"), ("source", label)),
            (("outcome", "failure"), ("source", label)),
        )
        if len(self._received_keys) < MAX_LABEL_VALUES and len(source) <= MAX_LABEL_BYTES:
            self._received_keys[source] = keys
        return keys

    async def drain(self) -> None:
        """Return once every op handed in so far is committed (or refused); set
        :attr:`closing` first, or more may keep coming."""
        while self._pending or self._dispatching:
            drained = self._drained = asyncio.get_running_loop().create_future()
            self._poke()
            await drained

    def pending_work(self) -> dict[str, int]:
        """The ingest path's share of :meth:`Engine.pending_work`."""
        return {
            "emits_pending": len(self._pending),
            "committing": int(self._dispatching),
            "sink_queues": sum(len(pump.queue) for pump in self.pumps),
            "sink_writes": sum(pump.writing for pump in self.pumps),
        }


def _observe(item: Instance, ops: Sequence[Op]) -> None:
    """Show committed ops to an analyzer's ``observe``; its failure is its own."""
    analyzer = item.component
    assert isinstance(analyzer, Analyzer)
    try:
        analyzer.observe(ops)
    except Exception as exc:
        fail(item.ctx, "observe failed", exc)
