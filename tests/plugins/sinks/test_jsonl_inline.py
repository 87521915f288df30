"""The jsonl sink's inline write(2): on the event loop for "never" and "batch", on the
writer thread for "always", while an fdatasync is in flight, and after a slow write."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import threading
from collections.abc import Iterator

import anyio
import msgspec
import pytest
from jsonl_kit import ids, open_sink
from observer_plugins.sinks.jsonl import JsonlConfig
from observer_plugins.sinks.jsonl.guard import MAX_COOLDOWN_FACTOR, InlineGuard

from observer_core.testing import numbered_op as op

FALLBACKS = "observer_sink_inline_fallbacks_total"


class _Writes:
    """Records which thread made each write(2) of a line, and lets a test slow them down."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.delay = 0.0


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Writes]:
    seen = _Writes()
    real = os.write
    slow = threading.Event()  # never set: a bounded, real wait on the calling thread

    def recording(fd: int, data: bytes | memoryview) -> int:
        if bytes(data[:1]) == b"{":
            seen.threads.append(threading.current_thread().name)
            if seen.delay:
                slow.wait(seen.delay)
        return real(fd, data)

    monkeypatch.setattr(os, "write", recording)
    yield seen


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fsync", "thread"),
    [("never", "MainThread"), ("batch", "MainThread"), ("always", "jsonl-writer")],
)
async def test_never_and_batch_write_on_the_loop_always_on_the_thread(
    tmp_path, writes, fsync, thread
):
    sink = await open_sink(tmp_path, fsync=fsync, fsync_interval_ms=3_600_000)
    for n in range(3):
        await sink.write([op(n)])
    await sink.aclose()
    assert writes.threads == [thread] * 3
    assert ids(tmp_path / "ops.jsonl") == [0, 1, 2]


@pytest.mark.anyio
async def test_inline_writes_false_keeps_every_write_on_the_thread(tmp_path, writes):
    sink = await open_sink(tmp_path, fsync="never", inline_writes=False)
    for n in range(3):
        await sink.write([op(n)])
    await sink.aclose()
    assert writes.threads == ["jsonl-writer"] * 3
    assert ids(tmp_path / "ops.jsonl") == [0, 1, 2]


@pytest.mark.anyio
async def test_a_commit_over_inline_max_bytes_goes_to_the_thread(tmp_path, writes):
    one_line = len(msgspec.json.encode(op(0))) + 1
    sink = await open_sink(tmp_path, fsync="never", inline_max_bytes=2 * one_line)
    await sink.write([op(0), op(1)])  # at the bound: inline
    await sink.write([op(2), op(3), op(4)])  # over it: the thread
    await sink.write([op(5)])
    await sink.aclose()
    assert writes.threads == ["MainThread", "jsonl-writer", "MainThread"]
    assert ids(tmp_path / "ops.jsonl") == list(range(6))


@pytest.mark.anyio
async def test_a_slow_write_sends_writes_to_the_thread_until_a_probe_is_fast(
    tmp_path, writes, caplog
):
    sink = await open_sink(tmp_path, fsync="never", inline_write_max_ms=20, inline_cooldown_ms=300)
    assert sink.ctx.metrics.sample(FALLBACKS, instance="sinks.test") == 0
    writes.delay = 0.05
    caplog.set_level(logging.WARNING)
    await sink.write([op(0)])  # inline and slow: the guard trips
    for n in range(1, 4):  # within the cool-down: on the thread, slow or not
        await sink.write([op(n)])
    assert writes.threads == ["MainThread"] + ["jsonl-writer"] * 3
    assert sink.ctx.metrics.sample(FALLBACKS, instance="sinks.test") == 1
    warnings = [r.getMessage() for r in caplog.records if "write(2) took" in r.getMessage()]
    assert len(warnings) == 1 and "writing on the writer thread for 0.3 s" in warnings[0]

    writes.delay = 0
    with anyio.fail_after(5):  # after the cool-down one write probes inline, and stays there
        while writes.threads[-1] != "MainThread":
            await sink.write([op(len(writes.threads))])
            await anyio.sleep(0.05)
    await sink.write([op(len(writes.threads))])
    assert writes.threads[-2:] == ["MainThread", "MainThread"]
    assert sink.ctx.metrics.sample(FALLBACKS, instance="sinks.test") == 1
    await sink.aclose()
    assert ids(tmp_path / "ops.jsonl") == list(range(len(writes.threads)))


@pytest.mark.anyio
async def test_writes_go_to_the_thread_while_an_fdatasync_is_in_flight(
    tmp_path, writes, monkeypatch
):
    syncing, release = threading.Event(), threading.Event()
    real = os.fdatasync

    def slow_sync(fd: int) -> None:
        syncing.set()
        release.wait(10)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow_sync)
    sink = await open_sink(tmp_path, fsync="batch", fsync_interval_ms=1)
    try:
        await sink.write([op(0)])  # inline; leaves the file dirty for the syncer
        with anyio.fail_after(5):
            while not syncing.is_set():
                await anyio.sleep(0.005)
        with anyio.fail_after(5):  # not held up by the sync in flight
            await sink.write([op(1)])
        assert writes.threads == ["MainThread", "jsonl-writer"]
    finally:
        release.set()
    await sink.aclose()
    assert ids(tmp_path / "ops.jsonl") == [0, 1]


@pytest.mark.anyio
async def test_a_write_after_a_queued_reopen_waits_for_it_on_the_thread(tmp_path, writes):
    sink = await open_sink(tmp_path, fsync="never")
    await sink.write([op(0)])
    (tmp_path / "ops.jsonl").rename(tmp_path / "ops.jsonl.1")  # logrotate moved it
    await asyncio.gather(sink.reopen(), sink.write([op(1)]))  # the reopen is queued first
    await sink.write([op(2)])  # the thread is idle again: inline, into the new file
    await sink.aclose()
    assert writes.threads == ["MainThread", "jsonl-writer", "MainThread"]
    assert ids(tmp_path / "ops.jsonl.1") == [0]
    assert ids(tmp_path / "ops.jsonl") == [1, 2]


def test_the_guard_doubles_its_cool_down_while_probes_stay_slow_and_resets_on_a_fast_one():
    guard = InlineGuard(max_seconds=0.01, cooldown_seconds=1.0)
    assert guard.timed(0.0, 0.005) is None and guard.inline(0.005)
    now, cooldowns = 0.0, []
    for _ in range(8):
        cooldown = guard.timed(now, now + 0.02)
        assert cooldown is not None
        cooldowns.append(cooldown)
        now += 0.02
        assert not guard.inline(now + cooldown - 0.001) and guard.inline(now + cooldown)
        now += cooldown
    assert cooldowns == [1, 2, 4, 8, 16, 32, 32, 32] and MAX_COOLDOWN_FACTOR == 32
    assert guard.fallbacks == 8
    assert guard.timed(now, now) is None
    assert guard.timed(now, now + 1) == 1.0


@pytest.mark.parametrize(("key", "value"), [("inline_write_max_ms", 0), ("inline_cooldown_ms", 0)])
def test_the_guard_keys_are_bounded(key, value):
    with pytest.raises(msgspec.ValidationError, match=key):
        msgspec.convert({"path": "x", key: value}, JsonlConfig)


@pytest.mark.anyio
async def test_write_now_writes_inline_or_nothing(tmp_path, writes):
    sink = await open_sink(tmp_path, fsync="never", inline_max_bytes=1024)
    assert sink.write_now([op(0)]) is True  # in the file before it returns
    assert ids(tmp_path / "ops.jsonl") == [0]
    big = [op(n) for n in range(1, 40)]  # over inline_max_bytes: the thread's, so not now
    assert sink.write_now(big) is False
    assert ids(tmp_path / "ops.jsonl") == [0]
    await sink.write(big)
    await sink.aclose()
    threaded = await open_sink(tmp_path, fsync="never", inline_writes=False)
    assert threaded.write_now([op(99)]) is False
    await threaded.aclose()
    assert ids(tmp_path / "ops.jsonl") == list(range(40))
    assert writes.threads == ["MainThread", "jsonl-writer"]


@pytest.mark.anyio
async def test_a_short_write_goes_on_and_a_failed_rest_leaves_no_partial_line(tmp_path):
    """RLIMIT_FSIZE makes the kernel write only up to the limit (a short write), then
    refuse the rest (EFBIG): the rest is tried, and the file cut back to its last line."""
    sink = await open_sink(tmp_path, fsync="never")
    await sink.write([op(0)])
    path = tmp_path / "ops.jsonl"
    size = path.stat().st_size
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    xfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    calls: list[int] = []
    real = os.write

    def counted(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        return real(fd, data)

    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, limits[1]))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "write", counted)
            with pytest.raises(OSError, match="too large"):
                sink.write_now([op(1), op(2)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, xfsz)
    assert len(calls) == 2 and calls[1] == calls[0] - 100  # the rest after 100 bytes
    assert path.stat().st_size == size  # cut back: no partial line
    assert sink.write_now([op(3)]) is True
    await sink.aclose()
    assert ids(path) == [0, 3]
