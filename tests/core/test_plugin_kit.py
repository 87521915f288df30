"""The plugin author's kit: the in-process engine, how errors and timeouts reach a
plugin, registration problems, broken installed plugins, the example package and
the ``plugins`` command."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from observer_core import (
    Analyzer,
    AnalyzerConfig,
    ComponentConfig,
    Emit,
    Finding,
    NotAccepted,
    Op,
    Record,
    Sink,
    Source,
    Window,
    hookimpl,
)
from observer_core.cli import main
from observer_core.config import ConfigError, load_config
from observer_core.describe import config_keys
from observer_core.engine import StartupError
from observer_core.plugins import load_registry
from observer_core.testing import plugin_of, wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "observer-source-example"
BROKEN = ROOT / "tests" / "fixtures" / "observer-broken-plugins"


def op(endpoint: str = "/x", success: bool = True) -> Op:
    return Op(
        timestamp="2026-01-01T00:00:00.000Z",
        endpoint=endpoint,
        input_summary="",
        success=success,
        duration_ms=1,
        output_summary="",
        source="kit",
    )


# -- components the tests register --------------------------------------------


class Seen(Analyzer):
    """Remembers the cycles it ran on and the ops it saw; emits a note per run."""

    name = "kit_seen"
    emits = ("kit_note",)

    def __init__(self, config: AnalyzerConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.cycles: list[int] = []
        self.seen: list[int] = []

    async def analyze(self, window: Window) -> Sequence[Finding]:
        self.cycles.append(window.cycle)
        self.seen.append(len(window.ops))
        return [Finding("kit_note", {"cycle": window.cycle}), Finding("diagnosis", {"n": 1})]


class Boom(Analyzer):
    name = "kit_boom"

    async def analyze(self, window: Window) -> Sequence[Finding]:
        raise RuntimeError("analyzer exploded")


class Sleepy(Analyzer):
    name = "kit_sleepy"

    async def analyze(self, window: Window) -> Sequence[Finding]:
        await anyio.sleep(30)
        return []


class TickConfig(ComponentConfig, kw_only=True, forbid_unknown_fields=True):
    endpoint: str = "/tick"
    fail: bool = False


class Tick(Source):
    """Emits one op per poll, or raises when ``fail`` is set."""

    name = "kit_tick"
    Config = TickConfig
    config: TickConfig

    async def poll(self, emit: Emit) -> None:
        if self.config.fail:
            raise OSError("cannot reach the thing it polls")
        await emit([op(self.config.endpoint)])


class Pusher(Source):
    """A push source whose run() fails at once."""

    name = "kit_pusher"

    async def run(self, emit: Emit) -> None:
        raise ConnectionError("listener died")


class Spawner(Analyzer):
    """Spawns three jobs per run: one fails, one outlives its timeout, one publishes."""

    name = "kit_spawner"

    async def analyze(self, window: Window) -> Sequence[Finding]:
        self.ctx.spawn(self.fails)
        self.ctx.spawn(anyio.sleep, 30, timeout=0.1)
        self.ctx.spawn(self.publishes, window.cycle, timeout=5)
        return []

    async def fails(self) -> None:
        raise ValueError("spawned job failed")

    async def publishes(self, cycle: int) -> None:
        await anyio.sleep(0.05)
        await self.ctx.publish([Finding("diagnosis", {"late": cycle})])


class NeedsGoodPattern(Source):
    name = "kit_validated"
    Config = TickConfig

    @classmethod
    def validate_config(cls, config: Any, registry: Any) -> None:
        if not config.endpoint.startswith("/"):
            raise ValueError(f"endpoint: must start with '/', got {config.endpoint!r}")

    async def poll(self, emit: Emit) -> None:
        pass


# Plugins written out hook by hook, as a plugin module does (the meta-tests look for them).


class SourcesPlugin:
    @hookimpl
    def observer_register_sources(self, register: Callable[[type[Source]], None]) -> None:
        register(Tick)
        register(Pusher)
        register(NeedsGoodPattern)


class AnalyzersPlugin:
    @hookimpl
    def observer_register_analyzers(self, register: Callable[[type[Analyzer]], None]) -> None:
        for cls in (Seen, Boom, Sleepy, Spawner):
            register(cls)


class NotesPlugin:
    """Registers the finding kind ``kit_note`` so sinks may accept it."""

    @hookimpl
    def observer_register_finding_kinds(self, register: Callable[[str], None]) -> None:
        register("kit_note")


PLUGINS = [SourcesPlugin(), AnalyzersPlugin(), NotesPlugin()]

pytestmark = pytest.mark.anyio


# -- the engine in-process -------------------------------------------------------


async def test_every_n_runs_on_cycles_n_2n_3n(observer_engine):
    config = """
    [analyzers.each]
    plugin = "kit_seen"
    [analyzers.third]
    plugin = "kit_seen"
    every = 3
    """
    async with observer_engine.start(config, plugins=PLUGINS) as engine:
        await engine.run_cycles(7)
        each, third = engine.component("each"), engine.component("third")
        assert isinstance(each, Seen) and isinstance(third, Seen)
        assert each.cycles == [1, 2, 3, 4, 5, 6, 7]
        assert third.cycles == [3, 6]


async def test_findings_reach_only_the_sinks_that_accept_their_kind(observer_engine):
    config = """
    [sources.tick]
    plugin = "kit_tick"
    [analyzers.seen]
    plugin = "kit_seen"
    [sinks.notes]
    plugin = "collect"
    accepts = ["kit_note"]
    [sinks.diagnoses]
    plugin = "collect"
    accepts = ["diagnosis"]
    [sinks.ops]
    plugin = "collect"
    accepts = ["op"]
    """
    async with observer_engine.start(config, plugins=PLUGINS) as engine:
        await engine.run_cycle()
        assert [f.data for f in engine.sink("notes").records] == [{"cycle": 1}]
        assert [f.kind for f in engine.sink("diagnoses").records] == ["diagnosis"]
        assert [r.endpoint for r in engine.sink("ops").ops] == ["/tick"]
        assert engine.sink("ops").findings() == []
        seen = engine.component("seen")
        assert isinstance(seen, Seen) and seen.seen == [1]  # polled before the analyzers ran


def test_accepting_a_finding_kind_nobody_registered_is_a_config_error(tmp_path):
    path = tmp_path / "observer.toml"
    path.write_text('[sinks.notes]\nplugin = "collect"\naccepts = ["kit_note"]\n')
    from observer_core.testing import COLLECT_PLUGIN

    registry = load_registry([(COLLECT_PLUGIN, None)])
    with pytest.raises(ConfigError, match=r"\[sinks.notes\] accepts: unknown record kind 'kit_"):
        load_config(path, registry, {})


async def test_an_analyzer_that_raises_is_logged_counted_and_isolated(observer_engine, caplog):
    config = """
    [analyzers.boom]
    plugin = "kit_boom"
    [analyzers.after]
    plugin = "kit_seen"
    """
    async with observer_engine.start(config, plugins=PLUGINS) as engine:
        with caplog.at_level(logging.ERROR):
            await engine.run_cycles(2)
        after = engine.component("after")
        assert isinstance(after, Seen) and after.cycles == [1, 2]  # same cycle, and the next
        assert engine.errors("analyzers.boom") == 2
        assert engine.metric("observer_instance_errors_total", instance="analyzers.boom") == 2
        failures = [r for r in caplog.records if r.name == "observer.analyzers.boom"]
        assert len(failures) == 2 and "analyze failed" in failures[0].getMessage()
        assert "analyzer exploded" in caplog.text  # with its traceback


async def test_a_source_that_raises_in_poll_does_not_stop_the_cycle(observer_engine):
    config = """
    [sources.broken]
    plugin = "kit_tick"
    fail = true
    [sources.fine]
    plugin = "kit_tick"
    [analyzers.seen]
    plugin = "kit_seen"
    [sinks.out]
    plugin = "collect"
    """
    async with observer_engine.start(config, plugins=PLUGINS) as engine:
        await engine.run_cycles(2)
        assert [o.endpoint for o in engine.sink("out").ops] == ["/tick", "/tick"]
        assert engine.errors("sources.broken") == 2
        assert engine.errors("sources.fine") == 0
        seen = engine.component("seen")
        assert isinstance(seen, Seen) and seen.cycles == [1, 2]


async def test_a_slow_analyzer_is_cut_off_at_the_step_timeout(observer_engine, caplog):
    config = """
    [analyzers.sleepy]
    plugin = "kit_sleepy"
    [analyzers.after]
    plugin = "kit_seen"
    """
    async with observer_engine.start(config, plugins=PLUGINS, step_timeout=0.2) as engine:
        started = time.monotonic()
        await engine.run_cycle()
        assert time.monotonic() - started < 2
        assert engine.errors("analyzers.sleepy") == 1
        assert "analyze timed out after 0.2s" in caplog.text
        after = engine.component("after")
        assert isinstance(after, Seen) and after.cycles == [1]


async def test_spawned_work_is_isolated_and_bounded_by_its_timeout(observer_engine, caplog):
    config = """
    [analyzers.spawner]
    plugin = "kit_spawner"
    [sinks.out]
    plugin = "collect"
    """
    async with observer_engine.start(config, plugins=PLUGINS) as engine:
        await engine.run_cycle()
        assert engine.sink("out").findings() == []  # the cycle did not wait for spawned work
        await engine.settle()
        assert [f.data for f in engine.sink("out").findings("diagnosis")] == [{"late": 1}]
        assert engine.errors("analyzers.spawner") == 2
        assert "sleep timed out after 0.1s" in caplog.text
        assert "spawned job failed" in caplog.text


async def test_a_push_source_that_fails_is_logged_and_the_rest_keeps_running(observer_engine):
    config = """
    [sources.pusher]
    plugin = "kit_pusher"
    [sources.tick]
    plugin = "kit_tick"
    [sinks.out]
    plugin = "collect"
    """
    async with observer_engine.start(config, plugins=PLUGINS) as engine:
        await engine.wait_until(lambda: engine.errors("sources.pusher") == 1)
        await engine.run_cycle()
        assert [o.endpoint for o in engine.sink("out").ops] == ["/tick"]


async def test_an_instance_that_cannot_open_names_itself_and_what_was_open_is_closed(
    observer_engine,
):
    calls: list[str] = []

    class Unopenable(Source):
        name = "kit_unopenable"

        async def open(self) -> None:
            raise PermissionError(13, "Permission denied", "/var/spool/inbox")

        async def poll(self, emit: Emit) -> None:
            calls.append("poll")

    class Opened(Sink):
        name = "kit_opened"

        async def open(self) -> None:
            calls.append("open sink")

        async def write(self, records: Sequence[Record]) -> None:
            calls.append("write")

        async def aclose(self) -> None:
            calls.append("aclose sink")

    config = """
    [sources.inbox]
    plugin = "kit_unopenable"
    [sinks.out]
    plugin = "kit_opened"
    """
    with pytest.raises(StartupError) as caught:
        async with observer_engine.start(config, plugins=[plugin_of(Unopenable, Opened)]):
            calls.append("body")  # never reached
    assert str(caught.value) == "[sources.inbox] cannot start: Permission denied (/var/spool/inbox)"
    assert calls == ["open sink", "aclose sink"]  # sinks open first; closed when a source fails


async def test_shutdown_drains_flushes_then_closes_in_reverse_config_order(observer_engine):
    order: list[str] = []

    class Recorder(Sink):
        name = "kit_recorder"

        async def write(self, records: Sequence[Record]) -> None:
            await anyio.sleep(0.01)
            order.append(f"write {self.ctx.instance} {len(records)}")

        async def flush(self) -> None:
            order.append(f"flush {self.ctx.instance}")

        async def aclose(self) -> None:
            order.append(f"aclose {self.ctx.instance}")

    class Listener(Source):
        name = "kit_listener"

        async def run(self, emit: Emit) -> None:
            try:
                await anyio.sleep_forever()
            finally:
                order.append("run cancelled")

        async def aclose(self) -> None:
            order.append(f"aclose {self.ctx.instance}")

    config = """
    [sources.listener]
    plugin = "kit_listener"
    [sinks.first]
    plugin = "kit_recorder"
    [sinks.second]
    plugin = "kit_recorder"
    """
    async with observer_engine.start(config, plugins=[plugin_of(Recorder, Listener)]) as engine:
        await engine.emit([op(), op()])  # neither sink holds acks: queued, not yet written
    assert order[0] == "run cancelled"
    assert sorted(order[1:3]) == ["write sinks.first 2", "write sinks.second 2"]  # drained
    assert order[3:] == [
        "flush sinks.first",
        "flush sinks.second",
        "aclose sinks.second",
        "aclose sinks.first",
        "aclose sources.listener",
    ]


async def test_a_failing_ack_sink_refuses_the_ops(observer_engine):
    async with observer_engine.start('[sinks.out]\nplugin = "collect"\n') as engine:
        engine.sink("out").failing = OSError("disk full")
        with pytest.raises(NotAccepted, match="disk full"):
            await engine.emit([op()])
        assert engine.ring == []
        engine.sink("out").failing = None
        await engine.emit([op()])
        assert len(engine.ring) == 1 and len(engine.sink("out").ops) == 1


async def test_a_sink_that_does_not_hold_acks_gets_ops_through_its_queue(observer_engine):
    config = '[sinks.out]\nplugin = "collect"\nholds_ack = false\n'
    async with observer_engine.start(config) as engine:
        await engine.emit([op("/a"), op("/b")])
        await engine.settle()
        assert [o.endpoint for o in engine.sink("out").ops] == ["/a", "/b"]
        assert engine.sink("out").calls == ["open"]
    assert engine.sink("out").calls == ["open", "flush", "aclose"]


async def test_settle_waits_for_a_slow_write_behind_a_queue(observer_engine):
    written: list[Record] = []

    class Slow(Sink):
        name = "kit_slow_sink"

        async def write(self, records: Sequence[Record]) -> None:
            await anyio.sleep(0.1)
            written.extend(records)

    config = '[sinks.slow]\nplugin = "kit_slow_sink"\n'
    async with observer_engine.start(config, plugins=[plugin_of(Slow)]) as engine:
        await engine.emit([op("/a")])
        assert written == []  # not an ack sink: emit did not wait
        await engine.settle()
        assert [record.endpoint for record in written if isinstance(record, Op)] == ["/a"]


def pipe_row(row: Any) -> Op:
    """A row format: ``{"what": ..., "ok": ...}`` rows to ops."""
    if not isinstance(row, dict) or not isinstance(row.get("what"), str):
        raise ValueError("what: expected a string")
    return Op(
        timestamp="2026-01-01T00:00:00.000Z",
        endpoint=row["what"],
        input_summary="",
        success=bool(row.get("ok")),
        duration_ms=0,
        output_summary="",
        source="pipe",
    )


class PipeFormatPlugin:
    @hookimpl
    def observer_register_row_formats(self, register: Callable[[str, Any], None]) -> None:
        register("kit_pipe", pipe_row)


async def test_a_registered_row_format_is_used_by_jsonl_tail(observer_engine):
    (observer_engine.directory / "rows.jsonl").write_text(
        '{"what": "/one", "ok": true}\n{"nope": 1}\n{"what": "/two"}\n'
    )
    config = """
    [sources.rows]
    plugin = "jsonl_tail"
    path = "rows.jsonl"
    format = "kit_pipe"
    [sinks.out]
    plugin = "collect"
    """
    async with observer_engine.start(config, plugins=[PipeFormatPlugin()]) as engine:
        await engine.run_cycle()
        assert [(o.endpoint, o.success) for o in engine.sink("out").ops] == [
            ("/one", True),
            ("/two", False),
        ]


async def _start(factory: Any, config: str, plugins: Sequence[object]) -> None:
    async with factory.start(config, plugins=plugins):
        pass


def test_validate_config_errors_name_the_file_table_and_key(observer_engine):
    config = '[sources.v]\nplugin = "kit_validated"\nendpoint = "x"\n'
    with pytest.raises(ConfigError) as caught:
        anyio.run(_start, observer_engine, config, PLUGINS)
    assert str(caught.value) == "observer.toml: [sources.v] endpoint: must start with '/', got 'x'"


def test_a_plugin_under_test_that_does_not_register_fails_loudly(observer_engine):
    class Nameless(Source):
        async def poll(self, emit: Emit) -> None:
            pass

    with pytest.raises(AssertionError, match=r"did not register:\n.*Nameless has no `name`"):
        anyio.run(_start, observer_engine, "", [plugin_of(Nameless)])


# -- registration problems, in-process --------------------------------------------


class Reexported:
    """Registers Tick again, as a module that imports another plugin's hook would."""

    @hookimpl
    def observer_register_sources(self, register: Callable[[type[Source]], None]) -> None:
        register(Tick)


class Mixed:
    """One hook call with bad and good registrations, and a hook that raises."""

    @hookimpl
    def observer_register_sinks(self, register: Callable[[Any], None]) -> None:
        register(Tick)  # a source, through the sinks hook
        register(type("Unnamed", (Sink,), {"write": Sink.write}))
        register(type("NoWrite", (Sink,), {"name": "kit_no_write"}))
        register(type("Good", (Sink,), {"name": "kit_good", "write": _write_nothing}))

    @hookimpl
    def observer_register_analyzers(self, register: Callable[[Any], None]) -> None:
        raise KeyError("settings")

    @hookimpl
    def observer_register_finding_kinds(self, register: Callable[[Any], None]) -> None:
        register("")


async def _write_nothing(self: Sink, records: Sequence[Record]) -> None:
    pass


def test_each_invalid_registration_is_reported_and_the_valid_ones_still_count():
    registry = load_registry([(Mixed(), None)])
    messages = [error.message for error in registry.errors if "Mixed" in str(error.origin)]
    assert messages == [
        "invalid registration: Tick was registered as a sink but is not a Sink "
        "(it is a Source: register it with observer_register_sources)",
        "invalid registration: Unnamed has no `name` (a non-empty string)",
        "invalid registration: NoWrite ('kit_no_write') does not implement write()",
        "observer_register_analyzers failed: KeyError: 'settings'",
        "invalid registration: finding kind must be a non-empty string, got ''",
    ]
    assert registry.get("sinks", "kit_good") is not None
    assert "kit_no_write" in registry.broken_names


def test_a_name_registered_twice_is_used_by_neither_and_a_config_naming_it_says_why(tmp_path):
    class Other(Tick):
        pass

    registry = load_registry([(plugin_of(Tick), None), (plugin_of(Other), None)])
    assert registry.get("sources", "kit_tick") is None
    [error] = [e for e in registry.errors if "kit_tick" in e.message]
    assert "source 'kit_tick' is also registered by (not installed)" in error.message
    path = tmp_path / "observer.toml"
    path.write_text('[sources.t]\nplugin = "kit_tick"\n')
    with pytest.raises(ConfigError, match=r"\[sources.t\] plugin: 'kit_tick' .* also registered"):
        load_config(path, registry, {})


def test_the_same_class_registered_again_is_no_conflict():
    registry = load_registry([(plugin_of(Tick), None), (Reexported(), None)])
    assert registry.get("sources", "kit_tick") is not None
    assert not [error for error in registry.errors if "kit_tick" in error.message]


def test_unknown_hooks_and_bad_signatures_are_refused_with_the_reason():
    class Typo:
        @hookimpl
        def observer_register_source(self, register: Any) -> None:
            pass

    class BadSignature:
        @hookimpl
        def observer_register_sources(self, register: Any, extra: Any) -> None:
            pass

    registry = load_registry([(Typo(), None), (BadSignature(), None)])
    messages = [str(error) for error in registry.errors]
    assert any("unknown hook(s): observer_register_source" in m for m in messages), messages
    assert any("BadSignature" in m and "invalid plugin" in m and "extra" in m for m in messages)


# -- broken plugins installed by pip ---------------------------------------------


@pytest.fixture(scope="module")
def broken_path(installed_package, tmp_path_factory) -> dict[str, str]:
    """The broken fixture distribution, pip-installed into a folder of its own (on
    PYTHONPATH only for the processes that ask for it: concurrent tests see nothing)."""
    target = tmp_path_factory.mktemp("broken-plugins")
    installed_package(BROKEN, target=target)
    paths = [str(target), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(path for path in paths if path)}


BROKEN_ORIGIN = "observer-broken-plugins 0.0.1 (entry point {!r})"


def test_plugins_lists_the_healthy_ones_and_reports_each_broken_one(observer_daemon, broken_path):
    result = observer_daemon.run("plugins", env=broken_path)
    assert result.returncode == 0, result.stderr
    listed, _, not_loaded = result.stdout.partition("not loaded:\n")
    for name in ("http", "jsonl", "kit_healthy", "kit_after_invalid"):
        assert f"  {name} " in listed
    assert "kit_dup" not in listed and "kit_no_config" not in listed
    errors = not_loaded.splitlines()
    expected = {
        "kit_broken_import": "failed to import observer_broken_plugins.broken_import: "
        "ModuleNotFoundError: No module named 'observer_kit_missing_dependency'",
        "kit_no_config": "invalid registration: NoConfig ('kit_no_config') has no `Config` "
        "subclassing ComponentConfig",
        "kit_wrong_kind": "invalid registration: WrongKind was registered as a source but is "
        "not a Source (it is a Sink: register it with observer_register_sinks)",
        "kit_dup_first": "invalid registration: source 'kit_dup' is also registered by "
        + BROKEN_ORIGIN.format("kit_dup_second"),
    }
    for entry_point, message in expected.items():
        assert any(
            line.startswith(f"  {BROKEN_ORIGIN.format(entry_point)}: {message}") for line in errors
        ), (entry_point, errors)


def test_check_passes_when_the_config_uses_no_broken_plugin(observer_daemon, broken_path):
    observer_daemon.write_config('[sources.ok]\nplugin = "kit_healthy"\n')
    result = observer_daemon.run("check", "--config", "observer.toml", env=broken_path)
    assert result.returncode == 0, result.stderr
    assert "plugin=kit_healthy from observer-broken-plugins" in result.stdout
    warning = "warning: plugin not loaded: " + BROKEN_ORIGIN.format("kit_broken_import")
    assert warning in result.stderr


@pytest.mark.parametrize(
    ("plugin", "reason"),
    [
        ("kit_broken_import", "failed to import observer_broken_plugins.broken_import"),
        ("kit_no_config", "has no `Config` subclassing ComponentConfig"),
        ("kit_wrong_kind", "is not a Source (it is a Sink"),
        ("kit_dup", "is also registered by"),
    ],
)
def test_check_fails_naming_the_reason_when_the_config_uses_a_broken_plugin(
    observer_daemon, broken_path, plugin, reason
):
    observer_daemon.write_config(f'[sources.s]\nplugin = "{plugin}"\n')
    result = observer_daemon.run("check", "--config", "observer.toml", env=broken_path)
    assert result.returncode == 2
    [line] = [line for line in result.stderr.splitlines() if "config error" in line]
    assert f"[sources.s] plugin: {plugin!r}" in line and reason in line
    assert "observer-broken-plugins 0.0.1" in line and "Traceback" not in result.stderr


def test_the_daemon_reports_broken_plugins_and_runs_the_healthy_one(observer_daemon, broken_path):
    daemon = observer_daemon.start(
        """
        [observer]
        cycle_secs = 0.2
        state_dir = "state"
        [sources.ok]
        plugin = "kit_healthy"
        [sinks.ops]
        plugin = "jsonl"
        path = "ops.jsonl"
        """,
        env=broken_path,
    )
    ops = observer_daemon.directory / "ops.jsonl"
    wait_for(lambda: ops.exists() and ops.read_text(), what="an op from kit_healthy")
    assert json.loads(ops.read_text().splitlines()[0])["input_summary"] == "kit_healthy"
    assert daemon.stop() == 0
    logs = daemon.logs()
    assert "plugin not loaded: " + BROKEN_ORIGIN.format("kit_broken_import") in logs
    assert "plugin not loaded: " + BROKEN_ORIGIN.format("kit_wrong_kind") in logs


def test_plugins_name_of_a_broken_plugin_shows_why(observer_daemon, broken_path):
    result = observer_daemon.run("plugins", "kit_no_config", env=broken_path)
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "not loaded:",
        "  " + BROKEN_ORIGIN.format("kit_no_config") + ": invalid registration: "
        "NoConfig ('kit_no_config') has no `Config` subclassing ComponentConfig",
    ]


# -- the example package, installed as a user would -------------------------------


@pytest.fixture(scope="module")
def example_installed(installed_package):
    return installed_package(EXAMPLE)


def test_plugins_lists_the_example_with_its_distribution(observer_daemon, example_installed):
    plain = observer_daemon.run("plugins")
    listed = [line.split() for line in plain.stdout.splitlines()]
    assert ["json_inbox", "observer-source-example"] in listed
    verbose = observer_daemon.run("plugins", "--verbose")
    rows = [line.split() for line in verbose.stdout.splitlines()]
    assert ["json_inbox", "observer-source-example", "0.1.0"] in rows
    assert ["max_files", "int", ">=", "1", "100"] in rows


def test_a_daemon_configured_with_the_example_produces_ops(observer_daemon, example_installed):
    daemon = observer_daemon.start(
        """
        [observer]
        cycle_secs = 0.2
        state_dir = "state"
        [sources.inbox]
        plugin = "json_inbox"
        path = "inbox"
        [sinks.ops]
        plugin = "jsonl"
        path = "ops.jsonl"
        """
    )
    inbox = observer_daemon.directory / "inbox"
    wait_for(lambda: (inbox / "done").is_dir(), what="the inbox to be opened")
    for number in range(3):
        event = {"endpoint": f"/e{number}", "success": True}
        (inbox / f"{number}.tmp").write_text(json.dumps(event))
        (inbox / f"{number}.tmp").rename(inbox / f"{number}.json")
    ops = observer_daemon.directory / "ops.jsonl"
    wait_for(lambda: ops.exists() and len(ops.read_text().splitlines()) == 3, what="3 ops")
    rows = [json.loads(line) for line in ops.read_text().splitlines()]
    assert sorted(row["endpoint"] for row in rows) == ["/e0", "/e1", "/e2"]
    assert {row["source"] for row in rows} == {"scenario"}  # the /event default
    assert daemon.stop() == 0
    done = sorted(path.name for path in (inbox / "done").iterdir())
    assert done == ["0.json", "1.json", "2.json"]


def test_the_example_passes_its_own_tests(example_installed, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path}"],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "skipped" not in result.stdout


# -- observer-core plugins NAME / --verbose ------------------------------------------


def test_plugins_verbose_shows_readable_types_and_toml_defaults(capsys):
    assert main(["plugins", "--verbose"]) == 0
    out = capsys.readouterr().out
    registry = load_registry()
    names = {
        key.key
        for infos in registry.components.values()
        for info in infos.values()
        for key in config_keys(info)
    }
    keys = [line for line in out.splitlines() if line[:6] == " " * 6 and line.split()[0] in names]
    rows = {line.split()[0]: line for line in keys}
    for noise in ("msgspec", "Annotated", "typing", "Literal", "None", "'"):
        assert not [line for line in keys if noise in line], noise
    assert rows["fsync"].split()[1:] == ['"always"', "|", '"batch"', "|", '"never"', '"batch"']
    assert rows["queue_max"].split()[1:] == ["int", ">=", "1,", "<=", "10000000", "10000"]
    tokens = {" ".join(line.split()[1:]) for line in keys if line.split()[0] == "token"}
    # the http source's token: one, or a list (rotation)
    assert "str length >= 1 | list[str length >= 1] length >= 1 (unset)" in tokens
    assert rows["health_check"].split()[1:] == ["bool", "true"]
    assert rows["accepts"].split()[1] == "list[str]"
    prompt = rows["prompt"]
    assert len(prompt) < 100 and "characters)" in prompt  # long defaults are cut short


def test_plugins_name_shows_kind_entry_point_and_key_docs(capsys):
    assert main(["plugins", "jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sinks:"
    assert lines[1].split() == ["jsonl", "observer-core", lines[1].split()[-1]]
    assert lines[3].strip() == "a sink, entry point 'jsonl'"
    path = lines.index(next(line for line in lines if line.split()[:1] == ["path"]))
    assert lines[path].split()[1:] == ["str", "(required)"]
    assert "parent folders are created" in lines[path + 1]


def test_plugins_name_that_nobody_registered(capsys):
    assert main(["plugins", "kit_nothing_by_this_name"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no plugin named 'kit_nothing_by_this_name'" in captured.err
