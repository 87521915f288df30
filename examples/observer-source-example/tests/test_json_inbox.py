"""The json_inbox source, in-process (observer_engine) and in the real daemon (observer_daemon)."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import msgspec
import pytest
from observer_core.testing import DaemonFactory, EngineFactory, wait_for

import observer_json_inbox
from observer_json_inbox import MOVING, JsonInboxConfig

CONFIG = """
[sources.inbox]
plugin = "json_inbox"
path = "inbox"

[sinks.out]
plugin = "collect"
"""


def drop(folder: Path, name: str, event: object) -> None:
    """Write a file as a producer should: under another name, then renamed into place."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{name}.tmp"
    partial.write_text(json.dumps(event))
    partial.rename(folder / name)


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.is_file())


@pytest.mark.anyio
async def test_each_file_becomes_one_op_and_moves_to_done(observer_engine: EngineFactory) -> None:
    async with observer_engine.start(CONFIG, plugins=[observer_json_inbox]) as engine:
        inbox = engine.directory / "inbox"
        drop(inbox, "a.json", {"endpoint": "/search", "success": True, "duration_ms": 12})
        drop(inbox, "b.json", {"endpoint": "/sql", "error": "timeout"})

        await engine.run_cycle()

        ops = engine.sink("out").ops
        assert [(op.endpoint, op.success) for op in ops] == [("/search", True), ("/sql", False)]
        assert ops[1].output_summary == "timeout"  # the /event defaults apply
        assert names(inbox / "done") == ["a.json", "b.json"]
        assert names(inbox) == []

        await engine.run_cycle()
        assert len(engine.sink("out").ops) == 2  # a file is taken once


@pytest.mark.anyio
async def test_a_bad_file_goes_to_failed_and_the_others_still_go_through(
    observer_engine: EngineFactory,
) -> None:
    async with observer_engine.start(CONFIG, plugins=[observer_json_inbox]) as engine:
        inbox = engine.directory / "inbox"
        drop(inbox, "good.json", {"endpoint": "/ok", "success": True})
        drop(inbox, "bad.json", {"duration_ms": "slow"})
        (inbox / "broken.json").write_text("{not json")

        await engine.run_cycle()

        assert [op.endpoint for op in engine.sink("out").ops] == ["/ok"]
        assert names(inbox / "failed") == ["bad.json", "broken.json"]
        assert engine.metric("observer_json_inbox_files_total", outcome="failed") == 2
        assert engine.metric("observer_json_inbox_files_total", outcome="accepted") == 1
        assert engine.errors("sources.inbox") == 0  # bad input is not a failure of the source


@pytest.mark.anyio
async def test_a_file_over_max_file_bytes_is_not_read(observer_engine: EngineFactory) -> None:
    config = CONFIG.replace('path = "inbox"', 'path = "inbox"\nmax_file_bytes = 64')
    async with observer_engine.start(config, plugins=[observer_json_inbox]) as engine:
        inbox = engine.directory / "inbox"
        drop(inbox, "big.json", {"endpoint": "/x", "input_summary": "y" * 100})
        await engine.run_cycle()
        assert engine.sink("out").ops == []
        assert names(inbox / "failed") == ["big.json"]


@pytest.mark.anyio
async def test_files_stay_while_a_sink_refuses_and_go_once_it_accepts(
    observer_engine: EngineFactory,
) -> None:
    async with observer_engine.start(CONFIG, plugins=[observer_json_inbox]) as engine:
        inbox = engine.directory / "inbox"
        drop(inbox, "a.json", {"endpoint": "/a"})
        engine.sink("out").failing = OSError("disk full")

        await engine.run_cycle()
        assert names(inbox) == ["a.json"]  # not accepted: still waiting
        assert engine.ring == []

        engine.sink("out").failing = None
        await engine.run_cycle()
        assert [op.endpoint for op in engine.sink("out").ops] == ["/a"]
        assert names(inbox / "done") == ["a.json"]


@pytest.mark.anyio
async def test_max_files_per_cycle_oldest_first(observer_engine: EngineFactory) -> None:
    config = CONFIG.replace('path = "inbox"', 'path = "inbox"\nmax_files = 2')
    async with observer_engine.start(config, plugins=[observer_json_inbox]) as engine:
        inbox = engine.directory / "inbox"
        for number in (2, 0, 1):  # names and mtimes disagree: mtime decides
            drop(inbox, f"file-{2 - number}.json", {"endpoint": f"/{number}"})
            stamp = 1_700_000_000 + number
            os.utime(inbox / f"file-{2 - number}.json", (stamp, stamp))

        await engine.run_cycle()
        assert [op.endpoint for op in engine.sink("out").ops] == ["/0", "/1"]
        await engine.run_cycle()
        assert [op.endpoint for op in engine.sink("out").ops] == ["/0", "/1", "/2"]


@pytest.mark.anyio
async def test_a_move_cut_short_by_a_stop_is_finished_at_start_without_a_second_op(
    observer_engine: EngineFactory,
) -> None:
    inbox = observer_engine.directory / "inbox"
    drop(inbox, "accepted.json", {"endpoint": "/already-handed-on"})
    drop(inbox, "new.json", {"endpoint": "/new"})
    state = observer_engine.directory / "state" / "sources.inbox" / MOVING
    state.parent.mkdir(parents=True)
    state.write_text('["accepted.json"]')  # what a stop between emit and the move leaves

    async with observer_engine.start(CONFIG, plugins=[observer_json_inbox]) as engine:
        assert names(inbox / "done") == ["accepted.json"]
        await engine.run_cycle()
        assert [op.endpoint for op in engine.sink("out").ops] == ["/new"]
    assert json.loads(state.read_text()) == []


def test_sample_toml_decodes_against_the_config() -> None:
    sample = Path(observer_json_inbox.__file__).with_name("sample.toml")
    table = dict(tomllib.loads(sample.read_text())["sources"]["inbox"])
    assert table.pop("plugin") == "json_inbox"
    config = msgspec.convert(table, JsonInboxConfig)
    defaults = JsonInboxConfig(path=config.path)
    assert config == defaults  # the sample shows the defaults


def test_the_daemon_picks_files_up_end_to_end(observer_daemon: DaemonFactory) -> None:
    """Needs the package installed (pip install -e .): the daemon finds it by its entry point."""
    inbox = observer_daemon.directory / "inbox"
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
    drop(inbox, "e.json", {"endpoint": "/from-a-file", "success": True})
    ops_file = observer_daemon.directory / "ops.jsonl"
    wait_for(lambda: ops_file.exists() and ops_file.read_text(), what="ops.jsonl")
    [row] = [json.loads(line) for line in ops_file.read_text().splitlines()]
    assert row["endpoint"] == "/from-a-file" and row["success"] is True
    wait_for(lambda: (inbox / "done" / "e.json").exists(), what="the file in done/")
    assert daemon.stop() == 0
