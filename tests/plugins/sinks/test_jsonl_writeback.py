"""The jsonl sink's writeback (``writeback_bytes``): sync_file_range(2) on a real file, from
the syncer's thread, over every byte written but the newest ``writeback_bytes``."""

from __future__ import annotations

import errno
import logging
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

    def covered(self) -> int:
        """Bytes written back from offset 0, checking that the ranges follow each other."""
        end = 0
        for offset, nbytes in self.ranges:
            assert offset == end, self.ranges
            end += nbytes
        return end


def _written_back(size: int, every: int = EVERY) -> int:
    """Where the writeback of a file of ``size`` bytes ends: ``every`` short of its end,
    at a page's start."""
    return (size - every) // 4096 * 4096


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
    assert writebacks.threads == {"jsonl-fsync"}
    assert len(writebacks.ranges) <= 5  # one per kick at most
    await sink.aclose()
    assert not caplog.records
    assert len(ids(tmp_path / "ops.jsonl")) == 300


@pytest.mark.anyio
async def test_batch_writes_back_each_mib_by_default_never_nothing(tmp_path, monkeypatch):
    writebacks = _Writebacks(monkeypatch)
    sink = await open_sink(tmp_path, fsync="batch", fsync_interval_ms=3_600_000)
    await _write(sink, 0, 150)  # ~1.5 MB: past the first MiB and the tail behind it
    size = (tmp_path / "ops.jsonl").stat().st_size
    wait_for(lambda: writebacks.ranges, what="a writeback")
    await sink.aclose()
    covered = writebacks.covered()  # from the kick at 1 MiB, up to a MiB short of the end
    assert 0 < covered <= _written_back(size, 1 << 20)
    never = await open_sink(tmp_path / "never", fsync="never")
    await _write(never, 0, 250)
    await never.aclose()
    assert writebacks.covered() == covered  # no more ranges


@pytest.mark.anyio
@pytest.mark.parametrize(("fsync", "every"), [("batch", 0), ("always", EVERY)])
async def test_no_writeback_with_0_or_always(tmp_path, monkeypatch, fsync, every):
    writebacks = _Writebacks(monkeypatch)
    synced = threading.Event()
    real_sync = os.fdatasync

    def sync(fd: int) -> None:
        real_sync(fd)
        synced.set()

    monkeypatch.setattr(os, "fdatasync", sync)
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
    wait_for(lambda: len(caplog.records) == 1, what="the warning")
    await _write(sink, 1, 4)
    await sink.aclose()
    assert len(writebacks.ranges) == 1
    message = caplog.records[0].getMessage()
    assert "sync_file_range failed" in message and "Illegal seek" in message
    assert len(ids(tmp_path / "ops.jsonl")) == 300  # the writes went on
