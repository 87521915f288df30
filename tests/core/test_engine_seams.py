"""The engine's public seams for test harnesses and tools: ``step_timeout=``,
``idle()`` with ``pending_work()``, ``start_push_sources`` and ``Metrics.sample``.
The testing kit is built on these alone (see test_testing_kit.py)."""

from __future__ import annotations

import logging
import math
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

from observer_core import Analyzer, Emit, Finding, Op, Record, Sink, Source, Window
from observer_core.config import load_config
from observer_core.engine import Engine
from observer_core.metrics import Metrics
from observer_core.plugins import load_registry
from observer_core.testing import plugin_of

pytestmark = pytest.mark.anyio


def op(endpoint: str) -> Op:
    return Op(
        timestamp="2026-01-01T00:00:00.000Z",
        endpoint=endpoint,
        input_summary="",
        success=True,
        duration_ms=0,
        output_summary="",
        source="seams",
    )


class Gated(Sink):
    """A sink behind its own queue whose writes wait for ``gate``."""

    name = "seam_gated"
    gate: ClassVar[anyio.Event]
    written: ClassVar[list[Record]]

    async def write(self, records: Sequence[Record]) -> None:
        await Gated.gate.wait()
        Gated.written.extend(records)


class GatedAck(Gated):
    """The same, holding acks: ``emit`` waits for its write."""

    name = "seam_gated_ack"
    holds_ack = True


class Sleepy(Analyzer):
    name = "seam_sleepy"

    async def analyze(self, window: Window) -> Sequence[Finding]:
        await anyio.sleep(30)
        return []


class Spawner(Analyzer):
    """Spawns one job that waits for ``release`` and one that fails at once."""

    name = "seam_spawner"
    release: ClassVar[anyio.Event]
    finished: ClassVar[list[str]]

    async def analyze(self, window: Window) -> Sequence[Finding]:
        self.ctx.spawn(self.waits)
        self.ctx.spawn(self.fails)
        return []

    async def waits(self) -> None:
        await Spawner.release.wait()
        Spawner.finished.append("waits")

    async def fails(self) -> None:
        raise ValueError("spawned job failed")


class Broken(Source):
    name = "seam_broken"

    async def run(self, emit: Emit) -> None:
        raise ConnectionError("listener died")


class Once(Source):
    name = "seam_once"

    async def run(self, emit: Emit) -> None:
        await emit([op("/pushed")])
        await anyio.sleep_forever()


PLUGIN = plugin_of(Gated, GatedAck, Sleepy, Spawner, Broken, Once)


@pytest.fixture(autouse=True)
def fresh_events() -> None:
    Gated.gate = anyio.Event()
    Gated.written = []
    Spawner.release = anyio.Event()
    Spawner.finished = []


def build(tmp_path: Path, tables: str, cycle_secs: float = 3600, **kwargs: Any) -> Engine:
    path = tmp_path / "observer.toml"
    path.write_text(f"[observer]\ncycle_secs = {cycle_secs}\n" + textwrap.dedent(tables))
    config = load_config(path, load_registry([(PLUGIN, None)]), {})
    return Engine(config, **kwargs)


async def until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll without blocking the loop; fail after ``timeout``."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.005)


async def is_still_waiting(engine: Engine, window: float = 0.1) -> bool:
    """Whether ``idle()`` has not returned within ``window`` seconds."""
    with anyio.move_on_after(window) as scope:
        await engine.idle()
    return scope.cancelled_caught


IDLE = {"emits_pending": 0, "committing": 0, "sink_queues": 0, "sink_writes": 0, "spawned": 0}


# -- step_timeout ------------------------------------------------------------------


def test_step_timeout_defaults_to_the_daemons_rule_and_takes_a_value(tmp_path):
    assert build(tmp_path, "", cycle_secs=30).step_timeout == 30
    assert build(tmp_path, "", cycle_secs=1).step_timeout == 10
    assert build(tmp_path, "", cycle_secs=30, step_timeout=0.25).step_timeout == 0.25


@pytest.mark.parametrize("bad", [0, -1, math.nan, "5", True])
def test_a_step_timeout_that_is_not_a_positive_number_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match=r"step_timeout must be a positive number of seconds"):
        build(tmp_path, "", step_timeout=bad)


async def test_a_step_is_cut_off_at_the_step_timeout(tmp_path, caplog):
    engine = build(tmp_path, '[analyzers.sleepy]\nplugin = "seam_sleepy"\n', step_timeout=0.2)
    async with engine.running():
        started = time.monotonic()
        with caplog.at_level(logging.ERROR):
            await engine.run_cycle()
        assert time.monotonic() - started < 2  # not the daemon's 3600 s
    assert engine.metrics.sample("observer_instance_errors_total", instance="analyzers.sleepy") == 1
    assert "analyze timed out after 0.2s" in caplog.text


# -- idle() and pending_work() --------------------------------------------------------


async def test_idle_returns_at_once_when_nothing_is_in_progress(tmp_path):
    engine = build(tmp_path, '[sinks.out]\nplugin = "seam_gated"\n')
    async with engine.running():
        assert engine.pending_work() == IDLE
        with anyio.fail_after(1):
            await engine.idle()


async def test_idle_waits_for_a_write_behind_a_sink_queue(tmp_path):
    engine = build(tmp_path, '[sinks.out]\nplugin = "seam_gated"\n')
    async with engine.running():
        await engine.emit([op("/a"), op("/b")])  # not an ack sink: emit did not wait
        assert await is_still_waiting(engine)
        assert engine.pending_work() == {**IDLE, "sink_writes": 1}  # the batch is being written
        Gated.gate.set()
        with anyio.fail_after(5):
            await engine.idle()
        assert [record.endpoint for record in Gated.written if isinstance(record, Op)] == [
            "/a",
            "/b",
        ]
        assert engine.pending_work() == IDLE


async def test_idle_waits_for_emits_behind_a_commit(tmp_path):
    engine = build(tmp_path, '[sinks.out]\nplugin = "seam_gated_ack"\n')
    async with engine.running():
        first = engine.emit([op("/first")])  # a future: the ops are handed in now
        await until(lambda: engine.pending_work()["committing"])
        second = engine.emit([op("/second")])
        assert engine.pending_work() == {**IDLE, "emits_pending": 1, "committing": 1}
        assert await is_still_waiting(engine)
        Gated.gate.set()
        with anyio.fail_after(5):
            await engine.idle()
        assert first.done() and second.done()
        assert [o.endpoint for o in engine.ring] == ["/first", "/second"]
        assert engine.pending_work() == IDLE


async def test_idle_waits_for_spawned_work_that_ends_or_fails(tmp_path):
    engine = build(tmp_path, '[analyzers.spawner]\nplugin = "seam_spawner"\n')
    async with engine.running():
        await engine.run_cycle()
        await until(lambda: engine.pending_work()["spawned"] == 1)  # the failing one ended
        assert await is_still_waiting(engine)
        Spawner.release.set()
        with anyio.fail_after(5):
            await engine.idle()
        assert Spawner.finished == ["waits"]
        assert engine.pending_work() == IDLE
        assert engine.metrics.instance_errors.get(instance="analyzers.spawner") == 1  # the failure


# -- start_push_sources ----------------------------------------------------------------


async def test_start_push_sources_runs_each_push_source_isolated(tmp_path):
    engine = build(
        tmp_path,
        """
        [sources.broken]
        plugin = "seam_broken"
        [sources.once]
        plugin = "seam_once"
        """,
    )
    errors = engine.metrics.instance_errors
    async with engine.running() as inputs:
        assert len(engine.ring) == 0  # running() starts no source by itself
        engine.start_push_sources(inputs)
        await until(lambda: len(engine.ring) == 1 and errors.get(instance="sources.broken") == 1)
        assert [o.endpoint for o in engine.ring] == ["/pushed"]
        assert errors.get(instance="sources.once") == 0
        inputs.cancel_scope.cancel()  # as SIGTERM does: stop the sources, then shut down


# -- Metrics.sample ------------------------------------------------------------------------


def test_metrics_sample_is_the_value_metrics_shows():
    metrics = Metrics()
    metrics.counter("seam_total", "Things.").inc(3, source="a", outcome="ok")
    metrics.gauge("seam_depth", "Depth.", lambda: [((("instance", "x"),), 7.0)])
    metrics.gauge("seam_plain", "Plain.").set(2.5)
    metrics.counter("seam_named_total", "A label called name.").inc(name="n")
    rendered = metrics.render()
    assert 'seam_total{outcome="ok",source="a"} 3' in rendered
    assert metrics.sample("seam_total", source="a", outcome="ok") == 3  # label order is free
    assert metrics.sample("seam_total", source="a") == 0  # no sample with just these labels
    assert metrics.sample("seam_depth", instance="x") == 7  # a gauge read at sample time
    assert metrics.sample("seam_plain") == 2.5
    assert metrics.sample("seam_named_total", name="n") == 1


def test_metrics_sample_of_an_unknown_family_names_it_and_the_known_ones():
    with pytest.raises(LookupError, match=r"no metric named 'seam_nope' \(metrics: .*observer_"):
        Metrics().sample("seam_nope")
