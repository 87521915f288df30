"""The ``jsonl_tail`` source.

Most tests run the real daemon as a subprocess, with the http source (for
/stats and /metrics) and a jsonl sink whose file shows exactly what was
emitted, and write the tailed file themselves. Where a test must freeze the
daemon between two file operations (so that it sees them together), it stops
the process with SIGSTOP and lets it go with SIGCONT. A few tests drive the
component in-process: chunked reading of a large file, a refused emit, and
the fast op decoder agreeing with the core's EventDecoder.
"""

from __future__ import annotations

import json
import os
import signal
import tomllib
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from observer_plugins.sources import jsonl_tail
from observer_plugins.sources.jsonl_tail import JsonlTailConfig, JsonlTailSource
from observer_plugins.sources.jsonl_tail import reader as tail_reader
from observer_plugins.sources.jsonl_tail.formats import OpFormat, overseer_correction
from observer_plugins.sources.jsonl_tail.reader import read_chunk

from observer_core import (
    EventDecoder,
    InvalidEvent,
    NotAccepted,
    Op,
)
from observer_core.ingest import REQUIRED_OP_FIELDS
from observer_core.testing import (
    Daemon,
    DaemonFactory,
    PackageInstaller,
    make_context,
    wait_for,
)

PLUGIN_DIR = Path(jsonl_tail.__file__).parent
TEST_PLUGIN_DIR = Path(__file__).parent / "format_plugin"
TS = "2026-01-31T12:00:00.000Z"


def config(format: str = "op", read_from: str = "start", path: str = "in.jsonl") -> str:
    return f"""
        [observer]
        cycle_secs = 0.2
        state_dir = "state"

        [sources.http]
        port = {{port}}

        [sources.tail]
        plugin = "jsonl_tail"
        path = "{path}"
        format = "{format}"
        read_from = "{read_from}"

        [sinks.ops]
        plugin = "jsonl"
        path = "ops.jsonl"
        fsync = "never"
        """


def op_line(n: int, **extra: Any) -> bytes:
    row = {
        "timestamp": TS,
        "endpoint": f"/op/{n}",
        "input_summary": f"input {n}",
        "success": True,
        "duration_ms": n,
        "output_summary": f"output {n}",
        "source": "mcp",
        **extra,
    }
    return json.dumps(row).encode() + b"\n"


def lines(*numbers: int) -> bytes:
    return b"".join(op_line(n) for n in numbers)


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(data)


def written(daemon: Daemon) -> list[dict[str, Any]]:
    """The ops the jsonl sink wrote so far."""
    path = daemon.directory / "ops.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def numbers(daemon: Daemon) -> list[int]:
    return [int(op["endpoint"].rsplit("/", 1)[1]) for op in written(daemon)]


def wait_written(daemon: Daemon, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    wait_for(lambda: len(written(daemon)) >= count, timeout, what=f"{count} ops written")
    return written(daemon)


def wait_numbers(daemon: Daemon, count: int) -> list[int]:
    wait_written(daemon, count)
    return numbers(daemon)


def stats(daemon: Daemon) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{daemon.url}/stats", timeout=5).json()
    return body


def tail_status(daemon: Daemon) -> dict[str, Any]:
    status: dict[str, Any] = stats(daemon)["instances"]["sources.tail"]
    return status


def start(factory: DaemonFactory, text: str, **kwargs: Any) -> tuple[Daemon, Path]:
    daemon = factory.start(text, **kwargs)
    return daemon, daemon.directory / "in.jsonl"


def restart(factory: DaemonFactory, daemon: Daemon, **kwargs: Any) -> Daemon:
    return factory.start(port=daemon.port, **kwargs)


# -- following a file ---------------------------------------------------------


def test_appended_lines_arrive_once(observer_daemon: DaemonFactory, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(lines(0, 1, 2))
    daemon, _ = start(observer_daemon, config())
    assert wait_numbers(daemon, 3) == [0, 1, 2]
    append(path, lines(3))
    append(path, lines(4))
    wait_numbers(daemon, 5)
    daemon.wait_cycles(2)
    assert numbers(daemon) == [0, 1, 2, 3, 4]
    status = tail_status(daemon)
    assert status["state"] == "following"
    assert status["lines"] == 5
    assert status["offset"] == status["size"] == path.stat().st_size
    assert stats(daemon)["by_source"] == {"mcp": 5}


def test_half_line_waits_for_its_newline(observer_daemon: DaemonFactory) -> None:
    daemon, path = start(observer_daemon, config())
    whole = op_line(1)
    path.write_bytes(op_line(0) + whole[:40])
    wait_numbers(daemon, 1)
    daemon.wait_cycles(2)
    assert numbers(daemon) == [0]
    assert tail_status(daemon)["offset"] == len(op_line(0))
    append(path, whole[40:])
    wait_numbers(daemon, 2)
    daemon.wait_cycles(2)
    assert written(daemon)[1] == json.loads(whole)
    assert len(written(daemon)) == 2
    assert tail_status(daemon)["skipped"] == 0


def test_truncated_file_is_read_from_its_start(observer_daemon: DaemonFactory) -> None:
    daemon, path = start(observer_daemon, config())
    path.write_bytes(lines(0, 1, 2))
    wait_numbers(daemon, 3)
    path.write_bytes(lines(3))  # truncates: shorter than the cursor
    assert wait_numbers(daemon, 4) == [0, 1, 2, 3]
    daemon.wait_cycles(2)
    assert numbers(daemon) == [0, 1, 2, 3]
    daemon.wait_log("was truncated: reading it again from its start")


def _rewrite_in_place(path: Path, data: bytes) -> None:
    """New content over the old, in one write, without truncating: same inode, never shorter."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def _recreate(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


@pytest.mark.parametrize("how", [_rewrite_in_place, _recreate], ids=["rewritten", "recreated"])
@pytest.mark.parametrize("while_running", [True, False], ids=["running", "stopped"])
def test_replaced_file_is_read_from_its_start(
    observer_daemon: DaemonFactory, how: Any, while_running: bool
) -> None:
    """Different content of at least the old size, same inode or not: known by its first bytes."""
    daemon, path = start(observer_daemon, config())
    path.write_bytes(lines(0, 1))
    wait_numbers(daemon, 2)
    new = lines(10, 11, 12)
    assert len(new) > path.stat().st_size
    if while_running:
        how(path, new)
    else:
        assert daemon.stop() == 0
        how(path, new)
        daemon = restart(observer_daemon, daemon)
    assert wait_numbers(daemon, 5) == [0, 1, 10, 11, 12]
    daemon.wait_cycles(2)
    assert numbers(daemon) == [0, 1, 10, 11, 12]


def test_rotation_finishes_the_old_file_first(observer_daemon: DaemonFactory) -> None:
    daemon, path = start(observer_daemon, config())
    path.write_bytes(lines(0, 1))
    wait_numbers(daemon, 2)
    rotated = path.with_name("in.jsonl.1")
    daemon.signal(signal.SIGSTOP)  # the daemon sees all of this at once
    try:
        append(path, lines(2, 3))  # unread when the file is renamed
        path.rename(rotated)
        path.write_bytes(lines(4, 5))
        append(rotated, lines(6))  # its writer still had it open
    finally:
        daemon.signal(signal.SIGCONT)
    assert wait_numbers(daemon, 7) == [0, 1, 2, 3, 6, 4, 5]
    daemon.wait_log("in.jsonl was rotated away")
    wait_for(lambda: "rotated" not in tail_status(daemon), what="the old file to be let go")
    daemon.wait_log("finished")
    assert tail_status(daemon)["skipped"] == 0


def test_rotation_while_stopped_finishes_the_old_file_first(
    observer_daemon: DaemonFactory,
) -> None:
    daemon, path = start(observer_daemon, config())
    path.write_bytes(lines(0, 1))
    wait_numbers(daemon, 2)
    assert daemon.stop() == 0
    append(path, lines(2))
    path.rename(path.with_name("in.jsonl.1"))
    path.write_bytes(lines(3))
    daemon = restart(observer_daemon, daemon)
    assert wait_numbers(daemon, 4) == [0, 1, 2, 3]
    daemon.wait_cycles(2)
    assert numbers(daemon) == [0, 1, 2, 3]


# -- restarts -----------------------------------------------------------------


def test_restart_neither_rereads_nor_skips(observer_daemon: DaemonFactory) -> None:
    daemon, path = start(observer_daemon, config())
    path.write_bytes(lines(0, 1, 2))
    wait_numbers(daemon, 3)
    assert daemon.stop() == 0
    append(path, lines(3, 4))  # written while it was down
    cursor = json.loads((daemon.directory / "state/sources.tail/cursor.json").read_text())
    assert cursor["current"]["offset"] == len(lines(0, 1, 2))
    daemon = restart(observer_daemon, daemon)
    wait_numbers(daemon, 5)
    daemon.wait_cycles(2)
    assert numbers(daemon) == [0, 1, 2, 3, 4]


def test_sigterm_while_reading_a_backlog_neither_rereads_nor_skips(
    observer_daemon: DaemonFactory,
) -> None:
    total = 30000  # about 6 chunks: stopped part-way through
    daemon, path = start(observer_daemon, config())
    path.write_bytes(lines(*range(total)))
    wait_for(lambda: len(written(daemon)) > 0, what="the first ops")
    assert daemon.stop() == 0
    daemon = restart(observer_daemon, daemon)
    size = path.stat().st_size
    wait_for(lambda: tail_status(daemon)["offset"] == size, 20, what="the whole file read")
    assert numbers(daemon) == list(range(total))


def test_kill_9_after_the_cursor_was_saved_rereads_nothing(observer_daemon: DaemonFactory) -> None:
    daemon, path = start(observer_daemon, config())
    path.write_bytes(lines(0, 1, 2))
    wait_numbers(daemon, 3)
    # /stats shows the offset only after the cursor covering it was saved.
    wait_for(lambda: tail_status(daemon)["offset"] == path.stat().st_size)
    daemon.kill()
    append(path, lines(3))
    daemon = restart(observer_daemon, daemon)
    wait_numbers(daemon, 4)
    daemon.wait_cycles(2)
    assert numbers(daemon) == [0, 1, 2, 3]


def test_kill_9_while_reading_loses_no_line(observer_daemon: DaemonFactory) -> None:
    """Killed mid-file: every line arrives after the restart, in order. Duplicates are
    possible (at least once): the restart resumes from the last saved cursor, and lines
    handed on after that save (at most SAVE_EVERY_SECS of reading, or the chunk in flight)
    are read again. Lines whose cursor was saved are never read twice."""
    total = 30000  # about 6 chunks
    daemon, path = start(observer_daemon, config())
    path.write_bytes(lines(*range(total)))
    wait_for(lambda: len(written(daemon)) > 0, what="the first ops")
    daemon.kill()
    daemon = restart(observer_daemon, daemon)
    size = path.stat().st_size
    wait_for(lambda: tail_status(daemon)["offset"] == size, 20, what="the whole file read")
    got = numbers(daemon)
    first_run = next((i for i, n in enumerate(got) if n != i), total)
    assert got[:first_run] == list(range(first_run))
    resumed_at = got[first_run] if first_run < len(got) else total
    assert resumed_at <= first_run  # no gap: nothing skipped
    assert got[first_run:] == list(range(resumed_at, total))  # re-read from a saved cursor


# -- where to start -----------------------------------------------------------


def test_read_from_end_skips_what_was_there_then_resumes_from_the_cursor(
    observer_daemon: DaemonFactory, tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(lines(0, 1, 2))
    daemon, _ = start(observer_daemon, config(read_from="end"))
    daemon.wait_cycles(2)
    assert written(daemon) == []
    assert tail_status(daemon)["offset"] == path.stat().st_size
    append(path, lines(3, 4))
    assert wait_numbers(daemon, 2) == [3, 4]
    assert daemon.stop() == 0
    append(path, lines(5))  # seen before: resumes from the cursor, not from the end
    daemon = restart(observer_daemon, daemon)
    wait_numbers(daemon, 3)
    daemon.wait_cycles(2)
    assert numbers(daemon) == [3, 4, 5]


def test_missing_file_is_waited_for(observer_daemon: DaemonFactory) -> None:
    # read_from = "end" too: a file that appears after start-up is new, read from its start.
    daemon, path = start(observer_daemon, config(read_from="end"))
    daemon.wait_cycles(2)
    assert tail_status(daemon) == {
        "path": str(path),
        "state": "waiting for file",
        "offset": 0,
        "size": 0,
        "lines": 0,
        "skipped": 0,
    }
    assert not daemon.metric("observer_instance_errors_total", instance="sources.tail")
    path.write_bytes(lines(0, 1))
    assert wait_numbers(daemon, 2) == [0, 1]
    assert tail_status(daemon)["state"] == "following"


# -- bad lines ----------------------------------------------------------------


def test_bad_lines_are_skipped_counted_and_logged(observer_daemon: DaemonFactory) -> None:
    daemon, path = start(observer_daemon, config())
    bad = [
        (b"not json at all\n", "invalid JSON"),
        (json.dumps({"endpoint": "/x"}).encode() + b"\n", "timestamp: required field is missing"),
        (op_line(9, duration_ms="12"), "duration_ms: Expected `int | float`, got `str`"),
        (b"[1, 2]\n", "Expected `object`, got `array`"),
    ]
    data = op_line(0)
    offsets = []
    for line, _ in bad:
        offsets.append(len(data))
        data += line
    data += b"\n   \n" + op_line(1)  # blank lines are not counted
    path.write_bytes(data)
    assert wait_numbers(daemon, 2) == [0, 1]
    wait_for(lambda: tail_status(daemon)["skipped"] == 4)
    assert daemon.metric("observer_tail_lines_skipped_total", instance="sources.tail") == 4
    for offset, (_, reason) in zip(offsets, bad, strict=True):
        daemon.wait_log(f"{path}: skipped the line at byte {offset}: {reason}")
    append(path, op_line(2))  # the tail goes on
    assert wait_numbers(daemon, 3) == [0, 1, 2]


def test_skipped_lines_do_not_flood_the_log(observer_daemon: DaemonFactory) -> None:
    daemon, path = start(observer_daemon, config())
    path.write_bytes(b"{oops\n" * 50 + op_line(0))
    wait_numbers(daemon, 1)
    wait_for(lambda: tail_status(daemon)["skipped"] == 50)
    daemon.wait_log("skipped 45 more lines in this poll")
    assert daemon.logs().count("skipped the line at byte") == 5


# -- row formats --------------------------------------------------------------


def test_op_rows_map_exactly(observer_daemon: DaemonFactory) -> None:
    daemon, path = start(observer_daemon, config())
    row = {
        "timestamp": "2026-01-31T14:00:00+02:00",
        "endpoint": "/search",
        "input_summary": "in",
        "success": False,
        "duration_ms": 1.5,
        "output_summary": "out",
        "error": "boom",
        "source": "scenario",
        "staffer_id": "s1",
        "sig_hash": "h1",
        "event_kind": "fill",
        "role": "welder",
        "city": "Springfield",
        "state": "IL",
        "count": 3,
        "rescue_attempted": True,
        "rescue_succeeded": False,
        "task_class": "staffing.fill",
        "correction": "c",
        "applied_at_turn": 2,
        "id": "abc-1",
        "attributes": {"k": "v", "n": 1, "b": True},
        "unknown_field": "ignored",
        "role_hint": None,
    }
    minimal = json.loads(op_line(7, error=None, city=None))
    path.write_bytes(json.dumps(row).encode() + b"\n" + json.dumps(minimal).encode() + b"\n")
    wait_written(daemon, 2)
    out = (daemon.directory / "ops.jsonl").read_text().splitlines()
    assert out[0] == (
        '{"timestamp":"2026-01-31T12:00:00.000Z","endpoint":"/search","input_summary":"in",'
        '"success":false,"duration_ms":1.5,"output_summary":"out","error":"boom",'
        '"source":"scenario","staffer_id":"s1","sig_hash":"h1","event_kind":"fill",'
        '"role":"welder","city":"Springfield","state":"IL","count":3,'
        '"rescue_attempted":true,"rescue_succeeded":false,"task_class":"staffing.fill",'
        '"correction":"c","applied_at_turn":2,"id":"abc-1",'
        '"attributes":{"k":"v","n":1,"b":true}}'
    )
    assert out[1] == (
        '{"timestamp":"2026-01-31T12:00:00.000Z","endpoint":"/op/7","input_summary":"input 7",'
        '"success":true,"duration_ms":7,"output_summary":"output 7","source":"mcp"}'
    )


def test_overseer_correction_rows_map_exactly(observer_daemon: DaemonFactory) -> None:
    daemon, path = start(observer_daemon, config(format="overseer_correction"))
    long_correction = "é" * 150 + "x" * 100
    rows = [
        {
            "created_at": "2026-04-23T12:00:00.5+02:00",
            "model": "qwen3:32b",
            "task_class": "staffing.fill",
            "reason": "drift",
            "usage": {"latency_ms": 812, "tokens": 90},
            "correction": long_correction,
            "sig_hash": "abc123",
            "applied_at_turn": 4,
            "extra": "ignored",
        },
        {"created_at": None, "model": None, "reason": None, "usage": None, "correction": None},
        {"correction": "", "reason": "", "usage": {}},
        {"model": 5},  # wrong type: skipped
        {"created_at": "yesterday"},  # not a timestamp: skipped
        {"usage": {"latency_ms": -1}},  # negative duration: skipped
        {"applied_at_turn": 1.5},  # not an integer: skipped
        ["not", "an", "object"],  # skipped
    ]
    before = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    path.write_bytes(b"".join(json.dumps(row).encode() + b"\n" for row in rows))
    wait_written(daemon, 3)
    wait_for(lambda: tail_status(daemon)["skipped"] == 5)
    after = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    out = (daemon.directory / "ops.jsonl").read_text().splitlines()
    assert out[0] == json.dumps(
        {
            "timestamp": "2026-04-23T10:00:00.500Z",
            "endpoint": "overseer:qwen3:32b",
            "input_summary": "staffing.fill: drift",
            "success": True,
            "duration_ms": 812,
            "output_summary": "é" * 150 + "x" * 50,
            "source": "overseer_correction",
            "sig_hash": "abc123",
            "task_class": "staffing.fill",
            "correction": long_correction,
            "applied_at_turn": 4,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    now_stamped = [json.loads(line) for line in out[1:]]
    for op in now_stamped:
        assert before <= op.pop("timestamp") <= after
    assert now_stamped == [
        {
            "endpoint": "overseer:gpt-oss:120b",
            "input_summary": "?: escalation",
            "success": True,
            "duration_ms": 0,
            "output_summary": "",
            "source": "overseer_correction",
        },
        {
            "endpoint": "overseer:gpt-oss:120b",
            "input_summary": "?: ",
            "success": True,
            "duration_ms": 0,
            "output_summary": "",
            "source": "overseer_correction",
            "correction": "",
        },
    ]
    assert tuple(json.loads(out[1])) == REQUIRED_OP_FIELDS  # and in this order
    for reason in [
        "model: Expected `str`, got `int`",
        "created_at: expected an RFC 3339 timestamp",
        "usage.latency_ms: Expected `int` >= 0",
        "applied_at_turn: Expected `int`, got `float`",
        "Expected `object`, got `array`",
    ]:
        daemon.wait_log(reason)


@pytest.fixture(scope="session")
def format_plugin(
    installed_package: PackageInstaller, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The environment for a daemon that has the test plugin (``format_plugin/``)
    pip-installed into a folder on its PYTHONPATH: found through its entry point,
    as users get it, while the shared venv stays as it is."""
    site = tmp_path_factory.mktemp("site")
    installed_package(TEST_PLUGIN_DIR, target=site)
    paths = [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(paths)}


def test_a_plugin_can_register_a_row_format(
    observer_daemon: DaemonFactory, format_plugin: dict[str, str]
) -> None:
    daemon, path = start(observer_daemon, config(format="shouty"), env=format_plugin)
    path.write_bytes(b'{"say": "hi"}\n{"say": 3}\n{"say": "bye"}\n')
    wait_written(daemon, 2)
    assert [op["endpoint"] for op in written(daemon)] == ["shouty:HI", "shouty:BYE"]
    assert written(daemon)[0]["output_summary"] == "HI!"
    wait_for(lambda: tail_status(daemon)["skipped"] == 1)
    daemon.wait_log(f"{path}: skipped the line at byte 14: say: expected a string")
    checked = observer_daemon.run("check", "--config", "observer.toml", env=format_plugin)
    assert checked.returncode == 0, checked.stderr


def test_unknown_format_is_a_config_error(
    observer_daemon: DaemonFactory, format_plugin: dict[str, str]
) -> None:
    observer_daemon.write_config(config(format="nope").replace("{port}", "3999"))
    for command in ("check", "run"):
        result = observer_daemon.run(command, "--config", "observer.toml")
        assert result.returncode == 2
        assert (
            "observer.toml: [sources.tail] format: unknown row format 'nope' "
            "(known: op, overseer_correction)" in result.stderr
        )
    result = observer_daemon.run("check", "--config", "observer.toml", env=format_plugin)
    assert "(known: op, overseer_correction, shouty)" in result.stderr


def test_sample_toml_decodes() -> None:
    sample = tomllib.loads((PLUGIN_DIR / "sample.toml").read_text())
    tables = sample["sources"]
    assert tables
    for table in tables.values():
        assert table.pop("plugin") == "jsonl_tail"
        msgspec.convert(table, JsonlTailConfig)
    assert msgspec.to_builtins(msgspec.convert({"path": "x"}, JsonlTailConfig)) == {
        "path": "x",
        "format": "op",
        "read_from": "start",
    }


# -- in-process ---------------------------------------------------------------


def make_source(tmp_path: Path, **keys: Any) -> JsonlTailSource:
    ctx = make_context(tmp_path, "sources.tail")
    ctx.row_formats = {"op": OpFormat(), "overseer_correction": overseer_correction}
    return JsonlTailSource(msgspec.convert({"path": "in.jsonl", **keys}, JsonlTailConfig), ctx)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The size of every read the tail makes."""
    sizes: list[int] = []
    real_pread = os.pread

    def recording_pread(fd: int, size: int, offset: int) -> bytes:
        sizes.append(size)
        return real_pread(fd, size, offset)

    monkeypatch.setattr(tail_reader.os, "pread", recording_pread)
    yield sizes


@pytest.mark.anyio
async def test_a_large_file_is_read_in_bounded_chunks(tmp_path: Path, reads: list[int]) -> None:
    block = lines(*range(1000))
    copies = 50 * 2**20 // len(block) + 1
    path = tmp_path / "in.jsonl"
    with open(path, "wb") as handle:
        for _ in range(copies):
            handle.write(block)
    size = path.stat().st_size
    source = make_source(tmp_path)
    batches: list[int] = []

    async def emit(ops: Any) -> None:
        batches.append(len(ops))

    await source.open()
    tracemalloc.start()
    try:
        while source.ctx.status["offset"] < size:
            await source.poll(emit)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        await source.aclose()
    assert sum(batches) == copies * 1000
    assert max(reads) <= tail_reader.CHUNK_BYTES
    assert len(batches) >= size // tail_reader.CHUNK_BYTES
    assert max(batches) <= tail_reader.CHUNK_BYTES // len(op_line(0)) + 1
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB file"


def test_a_line_longer_than_the_limit_is_skipped_without_being_held(
    tmp_path: Path, reads: list[int]
) -> None:
    data = op_line(0) + b'{"x": "' + b"y" * 1000 + b'"}\n' + op_line(1)
    (tmp_path / "in.jsonl").write_bytes(data)
    fd = os.open(tmp_path / "in.jsonl", os.O_RDONLY)
    offset, discarding, ops, skipped = 0, False, [], []
    try:
        while True:
            chunk = read_chunk(fd, offset, discarding, OpFormat(), 64, max_line_bytes=256)
            ops += chunk.ops
            skipped += chunk.skipped
            if chunk.end == offset and chunk.discarding == discarding:
                break
            offset, discarding = chunk.end, chunk.discarding
    finally:
        os.close(fd)
    assert [op.endpoint for op in ops] == ["/op/0", "/op/1"]
    assert skipped == [(len(op_line(0)), "line longer than 256 bytes")]
    assert offset == len(data)
    assert max(reads) == 256


@pytest.mark.anyio
async def test_a_refused_emit_keeps_the_cursor(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(lines(0, 1))
    source = make_source(tmp_path)
    await source.open()
    handed: list[Op] = []

    async def refuse(ops: Any) -> None:
        raise NotAccepted("backed up")

    async def accept(ops: Any) -> None:
        handed.extend(ops)

    try:
        with pytest.raises(NotAccepted):
            await source.poll(refuse)
        assert source.ctx.status["offset"] == 0
        assert source.ctx.status["lines"] == 0
        saved = json.loads((tmp_path / "state/sources.tail/cursor.json").read_text())
        assert saved["current"]["offset"] == 0
        await source.poll(accept)
        await source.poll(accept)
    finally:
        await source.aclose()
    assert [op.endpoint for op in handed] == ["/op/0", "/op/1"]
    saved = json.loads((tmp_path / "state/sources.tail/cursor.json").read_text())
    assert saved["current"]["offset"] == len(lines(0, 1))


_EDGE_CASES = [
    op_line(1),
    op_line(1, timestamp="2026-01-31T12:00:00Z"),
    op_line(1, timestamp="2026-01-31T12:00:00.123456+05:30"),
    op_line(1, timestamp="2026-02-30T12:00:00.000Z"),
    op_line(1, timestamp="2026-01-31T24:00:00.000Z"),
    op_line(1, timestamp="2026-01-31T12:00:60.000Z"),
    op_line(1, timestamp="２０２６-01-31T12:00:00.000Z"),
    op_line(1, timestamp="yesterday"),
    op_line(1, timestamp=f"{TS}\n{TS}"),
    op_line(1, timestamp=""),
    op_line(1, timestamp=None),
    op_line(1, duration_ms=-1),
    op_line(1, duration_ms=True),
    op_line(1, duration_ms="1"),
    op_line(1, source=""),
    op_line(1, count=1.5),
    op_line(1, count=2),
    op_line(1, error=None, staffer_id=None),
    op_line(1, id="x" * 128),
    op_line(1, id="x" * 129),
    op_line(1, attributes={str(i): i for i in range(64)}),
    op_line(1, attributes={str(i): i for i in range(65)}),
    op_line(1, attributes={"k": [1]}),
    op_line(1, correction="z" * 70000),
    op_line(1, success=1),
    b'{"timestamp": "2026-01-31T12:00:00.000Z"}\n',
    b"[]\n",
    b"{} {}\n",
    b"nope\n",
]


@pytest.mark.parametrize("line", _EDGE_CASES, ids=range(len(_EDGE_CASES)))
def test_op_format_agrees_with_the_event_decoder(line: bytes) -> None:
    """The fast path accepts exactly what EventDecoder accepts, and makes the same op."""
    expected: Op | str
    try:
        expected = EventDecoder(require_all=True).decode(line)
    except InvalidEvent as exc:
        expected = str(exc)
    fast = OpFormat()
    try:
        one: Op | str = fast.decode_line(line.rstrip(b"\n"))
    except InvalidEvent as exc:
        one = str(exc)
    assert one == expected
    block = fast.decode_block(op_line(0) + line)  # None: decode it line by line
    if block is not None:
        assert block == [fast.decode_line(op_line(0)[:-1]), expected]


def test_op_format_decodes_canonical_lines_a_block_at_a_time() -> None:
    block = OpFormat().decode_block(lines(0, 1) + b"\n" + op_line(2, count=3, id="x"))
    assert block is not None
    assert [op.endpoint for op in block] == ["/op/0", "/op/1", "/op/2"]
