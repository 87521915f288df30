"""The engine in-process: acknowledgement, backpressure, ordering, cycle timing."""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import anyio
import msgspec
import pytest

from observer_core import (
    Analyzer,
    AnalyzerConfig,
    BatchTooLarge,
    Finding,
    NotAccepted,
    Op,
    Record,
    Sink,
    SinkConfig,
    Window,
    hookimpl,
)
from observer_core import engine as engine_module
from observer_core._engine import dispatch
from observer_core.config import load_config
from observer_core.engine import Engine
from observer_core.plugins import load_registry

pytestmark = pytest.mark.anyio


class GateConfig(SinkConfig, kw_only=True, forbid_unknown_fields=True):
    fail: bool = False


class GateSink(Sink):
    """An ack-holding sink that writes only when its gate is open."""

    name = "gate"
    Config = GateConfig
    holds_ack = True
    gate: anyio.Event
    batches: list[list[Record]]

    async def write(self, records: Sequence[Record]) -> None:
        await GateSink.gate.wait()
        if self.config.fail:
            raise OSError("disk full")
        GateSink.batches.append(list(records))


class NowSink(Sink):
    """An ack-holding sink that writes at once (``write_now``), or fails to."""

    name = "now"
    Config = GateConfig
    holds_ack = True
    batches: ClassVar[list[list[Record]]] = []
    gate: ClassVar[anyio.Event | None] = None  # when set, a dispatcher's write waits for it
    writing: ClassVar[anyio.Event | None] = None

    async def write(self, records: Sequence[Record]) -> None:
        if NowSink.gate is not None and NowSink.writing is not None:
            NowSink.writing.set()
            await NowSink.gate.wait()
        self.write_now(records)

    def write_now(self, records: Sequence[Record]) -> bool:
        if self.config.fail:
            raise OSError("disk full")
        NowSink.batches.append(list(records))
        return True


class SlowAnalyzer(Analyzer):
    """Takes `every` × 0.1 s per run, so a cycle can outlast the period."""

    name = "slow"
    Config = AnalyzerConfig
    emits = ("playbook",)
    runs: list[int]

    async def analyze(self, window: Window) -> Sequence[Finding]:
        SlowAnalyzer.runs.append(window.cycle)
        await anyio.sleep(0.35)
        return []


plugin = SimpleNamespace(
    observer_register_sinks=hookimpl(lambda register: [register(GateSink), register(NowSink)]),
    observer_register_analyzers=hookimpl(lambda register: register(SlowAnalyzer)),
)


def make_engine(tmp_path, text: str) -> Engine:
    GateSink.gate = anyio.Event()
    GateSink.batches = []
    SlowAnalyzer.runs = []
    registry = load_registry(extra_plugins=[(plugin, None)])
    path = tmp_path / "observer.toml"
    path.write_text(textwrap.dedent(text))
    return Engine(load_config(path, registry, {}))


def op(n: int) -> Op:
    return Op(
        timestamp="2026-01-01T00:00:00.000Z",
        endpoint=f"/{n}",
        input_summary="",
        success=True,
        duration_ms=0,
        output_summary="",
        source="t",
    )


GATED = """
[observer]
cycle_secs = 3600
[sinks.gate]
"""


async def emit_all(engine: Engine, groups: list[list[Op]], results: list[object]) -> None:
    async def one(ops: list[Op]) -> None:
        try:
            await engine.emit(ops)
            results.append("ok")
        except NotAccepted as exc:
            results.append(exc)

    async with anyio.create_task_group() as group:
        for ops in groups:
            group.start_soon(one, ops)


async def test_ack_waits_for_the_sink_and_only_then_fills_the_ring(tmp_path):
    engine = make_engine(tmp_path, GATED)
    async with engine.running() as inputs:
        done = anyio.Event()

        async def send() -> None:
            await engine.emit([op(1)])
            done.set()

        inputs.start_soon(send)
        await anyio.sleep(0.05)
        assert not done.is_set() and len(engine.ring) == 0
        GateSink.gate.set()
        with anyio.fail_after(5):
            await done.wait()
        assert len(engine.ring) == 1


async def test_concurrent_emits_share_one_write_in_order(tmp_path):
    engine = make_engine(tmp_path, GATED)
    results: list[object] = []
    async with engine.running() as inputs:
        inputs.start_soon(emit_all, engine, [[op(0)]], results)
        await anyio.sleep(0.05)  # the first batch is now in the (blocked) sink
        inputs.start_soon(emit_all, engine, [[op(n)] for n in range(1, 21)], results)
        await anyio.sleep(0.05)
        GateSink.gate.set()
    assert results == ["ok"] * 21
    assert [len(batch) for batch in GateSink.batches] == [1, 20]  # group commit
    written = [record.endpoint for batch in GateSink.batches for record in batch]
    assert written == [f"/{n}" for n in range(21)]
    assert [o.endpoint for o in engine.ring] == written


async def test_backed_up_input_is_refused_not_acknowledged(tmp_path):
    engine = make_engine(tmp_path, GATED)
    engine.dispatcher.max_pending = 10
    results: list[object] = []
    async with engine.running() as inputs:
        inputs.start_soon(emit_all, engine, [[op(0)]], results)
        await anyio.sleep(0.05)
        inputs.start_soon(emit_all, engine, [[op(n) for n in range(6)]] * 2, results)
        await anyio.sleep(0.05)
        assert len(results) == 1 and isinstance(results[0], NotAccepted)
        GateSink.gate.set()
    assert results.count("ok") == 2
    assert len(engine.ring) == 7
    assert engine.metrics.input_rejected.get(reason="backlog") == 6


async def test_a_batch_larger_than_the_pending_bound_is_too_large_not_backed_up(tmp_path):
    """No retry can clear it: BatchTooLarge (a source answers 413), not 503 Retry-After."""
    engine = make_engine(tmp_path, GATED)
    engine.dispatcher.max_pending = 10
    GateSink.gate.set()
    results: list[object] = []
    async with engine.running():
        await emit_all(engine, [[op(n) for n in range(11)], [op(n) for n in range(10)]], results)
    [refusal] = [result for result in results if result != "ok"]
    assert isinstance(refusal, BatchTooLarge) and "(10)" in str(refusal)
    assert results.count("ok") == 1 and len(engine.ring) == 10
    assert engine.metrics.input_rejected.get(reason="too_large") == 11


async def test_failing_ack_sink_refuses_and_leaves_the_ring_alone(tmp_path):
    engine = make_engine(tmp_path, GATED + "fail = true\n")
    GateSink.gate.set()
    results: list[object] = []
    async with engine.running():
        await emit_all(engine, [[op(1)], [op(2)]], results)
    assert all(isinstance(result, NotAccepted) for result in results)
    assert len(engine.ring) == 0
    assert engine.metrics.instance_errors.get(instance="sinks.gate") >= 1


async def test_first_cycle_comes_one_period_after_start_and_late_ticks_are_skipped(tmp_path):
    engine = make_engine(
        tmp_path,
        """
        [observer]
        cycle_secs = 0.2
        [analyzers.slow]
        """,
    )
    async with engine.running() as inputs:
        started = anyio.current_time()
        inputs.start_soon(engine._cycle_loop)
        with anyio.fail_after(5):
            while not SlowAnalyzer.runs:
                await anyio.sleep(0.01)
        assert anyio.current_time() - started >= 0.19
        while len(SlowAnalyzer.runs) < 3:
            await anyio.sleep(0.01)
        inputs.cancel_scope.cancel()
    # each cycle takes 0.35 s > 0.2 s: one tick is skipped per cycle
    assert engine.metrics.cycles_skipped.get() >= 2
    assert SlowAnalyzer.runs[:3] == [1, 2, 3]


def test_the_core_never_imports_a_plugin():
    core = Path(engine_module.__file__).parent
    for module in core.rglob("*.py"):
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(name.startswith("observer_plugins") for name in names), module


async def test_shutdown_commits_what_was_submitted_in_the_same_moment(tmp_path):
    # Submitted, then the daemon stops before the dispatcher ever ran: the ops are still
    # written and answered (this once spun forever: the drain saw "idle" and never yielded).
    engine = make_engine(tmp_path, GATED)
    GateSink.gate.set()
    answers: list[object] = []
    with anyio.fail_after(5):
        async with engine.running():
            await anyio.sleep(0.05)  # the dispatcher is waiting for work
            engine.submit([op(1), op(2)], answers.append)
            await engine.shutdown()  # at once: the dispatcher has not had a turn yet
    assert answers == [None]
    assert [record.endpoint for batch in GateSink.batches for record in batch] == ["/1", "/2"]


async def test_recent_ops_are_the_newest_of_a_source_and_stats_hold_no_contract_field(tmp_path):
    # The engine answers a generic question (Observer.recent_ops); the contract's
    # recent_scenario_ops is shaped by the /stats route (observer_core.listener).
    engine = make_engine(tmp_path, GATED)
    GateSink.gate.set()
    ops = [op(n) for n in range(15)]
    for n in range(0, 15, 2):
        ops[n] = msgspec.structs.replace(ops[n], source="scenario")
    async with engine.running():
        with anyio.fail_after(5):
            await engine.emit(ops)
    assert [o.endpoint for o in engine.recent_ops("scenario", 3)] == ["/10", "/12", "/14"]
    assert len(engine.recent_ops("t", 100)) == 7
    assert engine.recent_ops("nobody", 10) == []
    assert "recent_scenario_ops" not in engine.stats()


def test_an_instance_error_is_logged_and_counted_in_one_place():
    # issue 20: every part of the engine reports an instance's failure through fail();
    # none logs a traceback or counts an error its own way.
    core = Path(engine_module.__file__).parent
    modules = [core / "engine.py", *sorted((core / "_engine").glob("*.py"))]
    counting = [
        path.name
        for path in modules
        for text in [path.read_text()]
        if "instance_errors.inc" in text or "logger.exception" in text
    ]
    assert counting == ["instance.py"]


async def _lone(engine: Engine) -> None:
    with anyio.fail_after(5):
        while not engine.emitter.lone:  # the dispatcher has looked and found nothing
            await anyio.sleep(0.001)


async def test_commit_now_commits_a_lone_request_in_the_call(tmp_path):
    NowSink.batches = []
    engine = make_engine(tmp_path, "[observer]\ncycle_secs = 3600\n[sinks.now]\n")
    engine.dispatcher.max_pending = 10
    async with engine.running():
        await _lone(engine)
        assert engine.emitter.commit_now([op(1)]) is True
        # Written and in the ring when it returns; the next must wait for another look.
        assert NowSink.batches == [[op(1)]] and list(engine.ring) == [op(1)]
        assert engine.emitter.lone is False
        assert engine.emitter.commit_now([op(2)]) is False
        await _lone(engine)
        # What submit refuses (BatchTooLarge) is not committed here: nothing is done.
        assert engine.emitter.commit_now([op(n) for n in range(11)]) is False
        assert len(engine.ring) == 1
    assert engine.metrics.counter(dispatch.COMMITS, dispatch.COMMITS_HELP).get(path="now") == 1


async def test_commit_now_refuses_what_the_sink_failed_to_write(tmp_path):
    NowSink.batches = []
    engine = make_engine(tmp_path, "[observer]\ncycle_secs = 3600\n[sinks.now]\nfail = true\n")
    async with engine.running():
        await _lone(engine)
        with pytest.raises(NotAccepted, match="disk full"):
            engine.emitter.commit_now([op(1)])
        assert len(engine.ring) == 0
    assert engine.metrics.input_rejected.get(reason="sink_failed") == 1
    assert engine.metrics.instance_errors.get(instance="sinks.now") >= 1


async def test_commit_now_never_overtakes_a_group_being_written(tmp_path):
    NowSink.batches = []
    NowSink.gate, NowSink.writing = anyio.Event(), anyio.Event()
    engine = make_engine(tmp_path, "[observer]\ncycle_secs = 3600\n[sinks.now]\n")
    try:
        async with engine.running(), anyio.create_task_group() as group:
            group.start_soon(emit_all, engine, [[op(1)]], [])
            with anyio.fail_after(5):
                await NowSink.writing.wait()  # the dispatcher's group is in the sink
            assert engine.emitter.lone is False
            assert engine.emitter.commit_now([op(2)]) is False  # it would come first
            NowSink.gate.set()
            await _lone(engine)
            assert engine.emitter.commit_now([op(2)]) is True
        assert NowSink.batches == [[op(1)], [op(2)]] and list(engine.ring) == [op(1), op(2)]
    finally:
        NowSink.gate = NowSink.writing = None
