"""The jsonl sink's writeback (``writeback_bytes``): sync_file_range(2) on a real file, from
the syncer's thread, over every byte written but the newest ``writeback_bytes``."""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading

import pytest
from jsonl_kit import ids, open_sink
from observer_plugins.sinks import jsonl
from observer_plugins.sinks.jsonl import syncer

from observer_core.testing import numbered_op as op
from observer_core.testing import wait_for

pytestmark = pytest.mark.skipif(
    syncer.start_writeback is None, reason="no sync_file_range(2) on this host"
)

EVERY = 4096


class _Writebacks:
    """Each range the sink started writing back, and on which thread; passes each to the
    real sync_file_range(2) unless ``error`` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.threads: set[str] = set()
        self.error: int | None = None
        real = syncer.start_writeback
        assert real is not None

        def recording(fd: int, offset: int, nbytes: int) -> None:
            self.ranges.append((offset, nbytes))
            self.threads.add(threading.current_thread().name)
            if self.error is not None:
                raise OSError(self.error, os.strerror(self.error))
            real(fd, offset, nbytes)

        monkeypatch.setattr(jsonl, "start_writeback", recording)

    def covered(self, start: int = 0) -> int:
        """Where the ranges end, checking that they follow each other from ``start``."""
        end = start
        for offset, nbytes in self.ranges:
            assert offset == end, self.ranges
            end += nbytes
        return end


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once os.fdatasync (the real one) has run."""
    done = threading.Event()
    real_sync = os.fdatasync

    def sync(fd: int) -> None:
        real_sync(fd)
        done.set()

    monkeypatch.setattr(os, "fdatasync", sync)
    return done


def _written_back(size: int, every: int = EVERY) -> int:
    """Where the writeback of a file of ``size`` bytes ends: ``every`` short of its end,
    at a page's start."""
    return (size - every) // mmap.PAGESIZE * mmap.PAGESIZE


def _sink_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "sync_file_range" in r.getMessage()]


async def _write(sink: jsonl.JsonlSink, first: int, count: int) -> None:
    """``count`` batches of 60 numbered ops (~10 KB each: each crosses ``EVERY``)."""
    for n in range(first, first + count):
        await sink.write([op(n * 100 + k) for k in range(60)])


@pytest.mark.anyio
@pytest.mark.parametrize("fsync", ["batch", "never"])
async def test_writeback_covers_the_file_in_order_on_the_syncer_thread(
    tmp_path, monkeypatch, caplog, fsync
):
    caplog.set_level(logging.WARNING)
    writebacks = _Writebacks(monkeypatch)
    sink = await open_sink(
        tmp_path, fsync=fsync, fsync_interval_ms=3_600_000, writeback_bytes=EVERY
    )
    await _write(sink, 0, 5)
    size = (tmp_path / "ops.jsonl").stat().st_size
    wait_for(lambda: writebacks.covered() == _written_back(size), what="all but the tail")
    assert writebacks.threads == {"jsonl-sync"}
    assert len(writebacks.ranges) <= 5  # one per kick at most
    await sink.aclose()
    assert not _sink_warnings(caplog)
    assert len(ids(tmp_path / "ops.jsonl")) == 300


@pytest.mark.anyio
async def test_batch_writes_back_each_mib_by_default_never_nothing(tmp_path, monkeypatch):
    writebacks = _Writebacks(monkeypatch)
    sink = await open_sink(tmp_path, fsync="batch", fsync_interval_ms=3_600_000)
    await _write(sink, 0, 230)  # ~2.3 MB: the kick at 2 MiB writes back at least 1 MiB
    size = (tmp_path / "ops.jsonl").stat().st_size
    wait_for(lambda: writebacks.covered() >= 1 << 20, what="the first MiB written back")
    await sink.aclose()
    covered = writebacks.covered()
    assert covered <= _written_back(size, 1 << 20)  # the newest MiB was left dirty
    never = await open_sink(tmp_path / "never", fsync="never")
    await _write(never, 0, 250)
    await never.aclose()
    assert writebacks.covered() == covered  # no more ranges


@pytest.mark.anyio
@pytest.mark.parametrize(("fsync", "every"), [("batch", 0), ("always", EVERY)])
async def test_no_writeback_with_0_or_always(tmp_path, monkeypatch, synced, fsync, every):
    writebacks = _Writebacks(monkeypatch)
    sink = await open_sink(tmp_path, fsync=fsync, fsync_interval_ms=10, writeback_bytes=every)
    await _write(sink, 0, 5)
    wait_for(synced.is_set, what="an fdatasync")  # the syncer (or the write) has run
    await sink.aclose()
    assert writebacks.ranges == []


@pytest.mark.anyio
async def test_after_a_reopen_writeback_starts_at_the_new_file(tmp_path, monkeypatch):
    writebacks = _Writebacks(monkeypatch)
    sink = await open_sink(
        tmp_path, fsync="batch", fsync_interval_ms=3_600_000, writeback_bytes=EVERY
    )
    await _write(sink, 0, 2)
    first = (tmp_path / "ops.jsonl").stat().st_size
    wait_for(lambda: writebacks.covered() == _written_back(first), what="the first file")
    os.rename(tmp_path / "ops.jsonl", tmp_path / "ops.jsonl.1")
    await sink.reopen()
    writebacks.ranges.clear()
    await _write(sink, 2, 3)
    second = (tmp_path / "ops.jsonl").stat().st_size
    wait_for(lambda: writebacks.covered() == _written_back(second), what="the new file")
    await sink.aclose()


@pytest.mark.anyio
async def test_a_failing_writeback_is_logged_once_and_left_to_fdatasync(
    tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.WARNING)
    writebacks = _Writebacks(monkeypatch)
    writebacks.error = errno.ESPIPE
    sink = await open_sink(
        tmp_path, fsync="batch", fsync_interval_ms=3_600_000, writeback_bytes=EVERY
    )
    await _write(sink, 0, 1)
    wait_for(lambda: _sink_warnings(caplog), what="the warning")
    await _write(sink, 1, 4)
    assert len(writebacks.ranges) == 1
    [message] = _sink_warnings(caplog)
    assert "sync_file_range failed" in message and os.strerror(errno.ESPIPE) in message
    assert len(ids(tmp_path / "ops.jsonl")) == 300  # the writes went on
    # a reopen (logrotate's) tries again, from the new file's start
    writebacks.error = None
    writebacks.ranges.clear()
    os.rename(tmp_path / "ops.jsonl", tmp_path / "ops.jsonl.1")
    await sink.reopen()
    await _write(sink, 5, 3)
    size = (tmp_path / "ops.jsonl").stat().st_size
    wait_for(lambda: writebacks.covered() == _written_back(size), what="writeback again")
    await sink.aclose()


@pytest.mark.anyio
async def test_a_file_with_data_is_written_back_from_its_end_at_open(tmp_path, monkeypatch):
    (tmp_path / "ops.jsonl").write_bytes(b'{"old":1}\n' * 100_000)  # ~1 MB, not ours
    existing = (tmp_path / "ops.jsonl").stat().st_size
    writebacks = _Writebacks(monkeypatch)
    sink = await open_sink(tmp_path, fsync="never", writeback_bytes=EVERY)
    await _write(sink, 0, 3)
    size = (tmp_path / "ops.jsonl").stat().st_size
    wait_for(lambda: writebacks.covered(existing) == _written_back(size), what="the new lines")
    await sink.aclose()
    assert writebacks.ranges[0][0] == existing


@pytest.mark.anyio
async def test_without_sync_file_range_batch_still_syncs_and_never_starts_no_thread(
    tmp_path, monkeypatch, synced
):
    monkeypatch.setattr(jsonl, "start_writeback", None)
    batch = await open_sink(tmp_path, fsync="batch", fsync_interval_ms=10, writeback_bytes=EVERY)
    await _write(batch, 0, 3)
    wait_for(synced.is_set, what="an fdatasync")
    await batch.aclose()
    never = await open_sink(tmp_path / "never", fsync="never", writeback_bytes=EVERY)
    assert "jsonl-sync" not in {thread.name for thread in threading.enumerate()}
    await _write(never, 0, 3)
    await never.aclose()
    assert len(ids(tmp_path / "never" / "ops.jsonl")) == 180


def test_a_stop_that_comes_as_a_kick_is_taken_ends_the_thread(monkeypatch):
    """A stop between the thread's wake-up and its clearing of the wake-up is not lost
    (with no interval, a lost stop would leave the thread waiting for ever)."""
    stop_now: list[syncer.SyncThread] = []

    class StopComesDuringClear(threading.Event):
        def clear(self) -> None:
            if stop_now:  # stop()'s first steps, at the worst moment
                thread = stop_now.pop()
                thread._stopping = True
                thread._wake.set()
            super().clear()

    monkeypatch.setattr(syncer.threading, "Event", StopComesDuringClear)
    thread = syncer.SyncThread(lambda: None, lambda: None, None, _no_failure)
    monkeypatch.undo()
    stop_now.append(thread)
    thread.kick()
    thread._thread.join(5)
    assert not thread._thread.is_alive()


def _no_failure(what: str, exc: Exception) -> None:
    raise AssertionError(f"{what} failed: {exc!r}")


def test_a_failing_call_is_reported_and_the_thread_goes_on():
    failures: list[str] = []
    calls: list[int] = []

    def writeback() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    thread = syncer.SyncThread(lambda: None, writeback, None, lambda w, e: failures.append(w))
    thread.kick()
    wait_for(lambda: failures == ["writeback"], what="the failure reported")
    thread.kick()
    wait_for(lambda: len(calls) == 2, what="a second writeback")
    thread.stop()
    assert not thread._thread.is_alive()
