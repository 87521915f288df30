"""The ``jsonl`` sink: append one JSON line per record to a file.

It holds acknowledgements: an op is acknowledged only after the batch holding
it was written by write(2) (and, with ``fsync = "always"``, made durable).
Concurrent requests share one write: the engine hands over every op waiting
at that moment as one batch (group commit). A write that fails (a full disk)
leaves no partial line, refuses the batch, and marks the file unhealthy in
``/health`` checks until a write succeeds again.

With ``fsync = "never"`` or ``"batch"`` the write(2) runs inline on the event loop
(a copy into the page cache: no hand-off to the writer thread and back); fdatasync
always runs on a thread. A write goes to the writer thread instead while the thread
has work queued (order), while an fdatasync is in flight (as Redis postpones its AOF
writes: a write may wait for the sync), and for a cool-down after an inline write took
longer than ``inline_write_max_ms`` (see :mod:`.guard`). With ``"batch"`` (and with
``"never"`` when set) a thread starts the kernel's writeback of every
``writeback_bytes`` written, so neither an fdatasync nor the kernel's flusher finds
much to write at once and holds the writes behind it (see :mod:`.syncer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import mmap
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, cast

import anyio
import msgspec

from observer_core import Finding, Record, RegisterSink, Sink, SinkConfig, hookimpl, now_timestamp
from observer_core.files import open_output, parse_file_mode

from .guard import InlineGuard
from .syncer import SyncThread, start_writeback
from .writer import WriterThread

PROBE_FREE_BYTES = 64 << 10
"""What ``probe()`` wants free on the file's filesystem before it calls the sink writable."""
BATCH_WRITEBACK_BYTES = 1 << 20
"""``writeback_bytes`` when unset, with ``fsync = "batch"`` (with "never": 0)."""
WRITEBACK_ALIGN = mmap.PAGESIZE
"""Writeback ranges end on a page's start."""
FALLBACK_LOG_SECS = 60.0
"""At most one warning this often that slow writes moved to the writer thread."""

__all__ = ["JsonlSink"]


class JsonlConfig(SinkConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[sinks.NAME]`` with ``plugin = "jsonl"``."""

    path: str
    """The file to append to; parent folders are created. Relative to the config file."""
    fsync: Literal["batch", "never", "always"] = "batch"
    """never: write(2) before the ack; batch: also fdatasync every fsync_interval_ms;
    always: fdatasync before the ack."""
    fsync_interval_ms: Annotated[int, msgspec.Meta(ge=1, le=3_600_000)] = 1000
    inline_writes: bool = True
    """never and batch: write(2) on the event loop, guarded; false: always on the writer
    thread (as with "always")."""
    inline_write_max_ms: Annotated[float, msgspec.Meta(gt=0, le=10_000)] = 5.0
    """never and batch: an inline write(2) slower than this sends writes to the writer
    thread for ``inline_cooldown_ms``, then one write probes inline again."""
    inline_cooldown_ms: Annotated[int, msgspec.Meta(ge=1, le=3_600_000)] = 1000
    """The first cool-down; doubled after each slow probe in a row (at most 32 times)."""
    inline_max_bytes: Annotated[int, msgspec.Meta(ge=0, le=1 << 30)] = 262144
    """never and batch: a commit larger than this goes to the writer thread (the hand-off
    costs little beside its copy, and no one write holds the loop long)."""
    writeback_bytes: Annotated[int, msgspec.Meta(ge=0, le=1 << 30)] | None = None
    """never and batch: start the kernel's writeback (sync_file_range) of each this many
    bytes written, so neither an fdatasync nor the kernel's flusher finds much to write at
    once and holds the writes made meanwhile; 0: leave it to them. Unset: 1 MiB with batch,
    0 with never."""
    file_mode: str | None = None
    """Mode of the file when this creates it, an octal string such as "0640";
    unset: the process's umask decides. An existing file keeps its mode."""
    accepts: list[str] = msgspec.field(default_factory=lambda: ["op"])


class JsonlSink(Sink):
    """Appends records to a JSONL file; ops are acknowledged only once written."""

    name: ClassVar[str] = "jsonl"
    Config = JsonlConfig
    holds_ack: ClassVar[bool] = True
    config: JsonlConfig

    @classmethod
    def validate_config(cls, config: Any, registry: object) -> None:
        if config.file_mode is not None:
            parse_file_mode(config.file_mode)

    def __init__(self, config: JsonlConfig, ctx: object) -> None:
        super().__init__(config, ctx)  # type: ignore[arg-type]
        self.path: Path = self.ctx.resolve_path(config.path)
        self._fd = -1
        self._size = 0
        self._dirty = False
        self._io = threading.Lock()
        self._encoder = msgspec.json.Encoder()
        self._syncer: SyncThread | None = None
        self._writer: WriterThread | None = None
        self._failing = False
        """The last write failed: /health shows the file unhealthy until one succeeds."""
        self._inline = config.inline_writes and config.fsync != "always"
        self._inline_max = config.inline_max_bytes
        self._sync_each = config.fsync == "always"  # (read per write: the config's, once)
        self._sync_later = config.fsync == "batch"
        self._syncing = False
        """An fdatasync is in flight (set by the syncer under ``_io``): writes go to the thread."""
        writeback = config.writeback_bytes
        if writeback is None:
            writeback = BATCH_WRITEBACK_BYTES if self._sync_later else 0
        self._writeback_bytes = writeback
        self._writeback_on = False
        """``writeback_bytes`` is set, and this host has sync_file_range (set at open)."""
        self._writeback_at = sys.maxsize
        """The file size at which a write kicks the syncer to start a writeback (under
        ``_io``); ``sys.maxsize`` while writeback is off, or after it failed (until a
        reopen)."""
        self._written_back = 0
        """Where the next writeback starts (under ``_io``)."""
        self._guard = InlineGuard(
            config.inline_write_max_ms / 1000, config.inline_cooldown_ms / 1000
        )
        self._fallbacks = self.ctx.metrics.counter(
            "observer_sink_inline_fallbacks_total",
            "Inline write(2)s slower than inline_write_max_ms, each sending writes to the "
            "writer thread for a cool-down.",
        )
        self._logged_fallbacks = 0
        self._next_fallback_log = 0.0

    async def open(self) -> None:
        self._writer = WriterThread(asyncio.get_running_loop())
        await self._writer.run(self._open_file)
        if self._inline:  # the series exists from the start, at 0
            self._fallbacks.inc(0, instance=self.ctx.instance)
        batch = self.config.fsync == "batch"
        self._writeback_on = (
            self._writeback_bytes > 0 and not self._sync_each and start_writeback is not None
        )
        if batch or self._writeback_on:
            interval = self.config.fsync_interval_ms / 1000 if batch else None
            self._syncer = SyncThread(
                self.sync_if_dirty, self.write_back, interval, self._bg_failed
            )
        if self._writeback_on:
            with self._io:
                self._writeback_at = self._size + self._writeback_bytes
        self.ctx.status["path"] = str(self.path)

    def _open_file(self) -> None:
        mode = self.config.file_mode
        fd = open_output(
            self.path, os.O_WRONLY | os.O_APPEND, None if mode is None else parse_file_mode(mode)
        )
        try:
            size = self._repair_torn_tail(fd)
        except BaseException:
            os.close(fd)
            raise
        with self._io:
            self._fd, self._size, self._written_back = fd, size, size
            if self._writeback_on:  # a reopen: counted from the new file's end, on again
                self._writeback_at = size + self._writeback_bytes

    def _repair_torn_tail(self, fd: int) -> int:
        """Cut a last line left without its newline by a crash; return the file size."""
        size = os.fstat(fd).st_size
        if size == 0:
            return 0
        with open(self.path, "rb") as reader:
            reader.seek(size - 1)
            if reader.read(1) == b"\n":
                return size
            position = size
            while position > 0:
                step = min(65536, position)
                position -= step
                reader.seek(position)
                newline = reader.read(step).rfind(b"\n")
                if newline >= 0:
                    position += newline + 1
                    break
        os.ftruncate(fd, position)
        self.ctx.logger.warning(
            "%s: removed a torn last line (%d bytes) left by an earlier crash",
            self.path,
            size - position,
        )
        return position

    def _encode(self, records: Sequence[Record]) -> bytes:
        """A batch is ops or findings (Sink.write); a finding's line is its payload."""
        if records and isinstance(records[0], Finding):
            return self._encoder.encode_lines([cast(Finding, record).data for record in records])
        return self._encoder.encode_lines(records)

    def _append(self, data: bytes) -> None:
        with self._io:
            self._append_locked(data)

    def _append_locked(self, data: bytes) -> None:
        """Write all of ``data`` (short writes continue), fdatasync when "always"; on failure
        cut the file back so no partial line is left. The caller holds ``_io``."""
        start = self._size
        try:
            written = os.write(self._fd, data)
            if written < len(data):  # a short write: the rest follows
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(self._fd, view) :]
            if self._sync_each:
                os.fdatasync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):  # no partial line for the next write
                os.ftruncate(self._fd, start)
            raise
        self._size = size = start + len(data)
        self._dirty = self._sync_later
        if size >= self._writeback_at:
            self._writeback_at = size + self._writeback_bytes
            assert self._syncer is not None
            self._syncer.kick()

    def _append_inline(self, data: bytes) -> bool:
        """Write ``data`` on the event loop when nothing stands in the way; False: it was not
        written (the thread is busy or has work queued, an fdatasync is in flight, or the
        guard is cooling down), so the caller hands it to the thread."""
        writer = self._writer
        assert writer is not None, "write() before open()"
        started = time.perf_counter()
        if not writer.idle or not self._guard.inline(started):
            return False
        if not self._io.acquire(blocking=False):  # a sync taking its dup, a probe
            return False
        if self._syncing:  # read under the lock, which the syncer sets it under
            self._io.release()
            return False
        try:
            self._append_locked(data)
        finally:
            self._io.release()
            ended = time.perf_counter()
            cooldown = self._guard.timed(started, ended)
            if cooldown is not None:
                self._fell_back(ended - started, cooldown, ended)
        return True

    def _fell_back(self, took: float, cooldown: float, now: float) -> None:
        """Count a slow inline write; warn, at most every ``FALLBACK_LOG_SECS``."""
        self._fallbacks.inc(instance=self.ctx.instance)
        if now < self._next_fallback_log:
            return
        self._next_fallback_log = now + FALLBACK_LOG_SECS
        since = self._guard.fallbacks - self._logged_fallbacks
        self._logged_fallbacks = self._guard.fallbacks
        self.ctx.logger.warning(
            "%s: a write(2) took %.1f ms (inline_write_max_ms %g): writing on the writer "
            "thread for %.1f s, then trying inline again (%d such switches since the last "
            "such warning, counted in observer_sink_inline_fallbacks_total)",
            self.path,
            took * 1000,
            self.config.inline_write_max_ms,
            cooldown,
            since,
        )

    def sync_if_dirty(self) -> None:
        """fdatasync a duplicate of the fd outside the lock: writes never queue behind it."""
        with self._io:
            if not self._dirty or self._fd < 0:
                return
            fd = os.dup(self._fd)
            self._dirty = False
            self._syncing = True
        try:
            os.fdatasync(fd)
        except OSError as exc:
            self.ctx.error("fdatasync of %s failed: %s", self.path, exc)
        finally:
            self._syncing = False
            os.close(fd)

    def write_back(self) -> None:
        """Start the kernel's writeback of what was written since the last start but the
        newest ``writeback_bytes`` (on the syncer's thread). Those stay dirty: a write that
        appends to a page under writeback can wait for it, and the page would be written
        twice (RocksDB leaves its newest 1 MB for the same reasons). Where the call fails,
        the writeback is left to the kernel's flusher and the fdatasyncs until a reopen."""
        with self._io:
            end = (self._size - self._writeback_bytes) & -WRITEBACK_ALIGN
            start = min(self._written_back, end)
            if end <= start or self._fd < 0 or start_writeback is None:
                return
            fd = os.dup(self._fd)
            self._written_back = end
        try:
            start_writeback(fd, start, end - start)
        except OSError as exc:
            with self._io:
                self._writeback_at = sys.maxsize
            self.ctx.logger.warning(
                "%s: sync_file_range failed (%s): writeback is left to the kernel until the "
                "file is reopened",
                self.path,
                exc.strerror or exc,
            )
        finally:
            os.close(fd)

    def _bg_failed(self, what: str, exc: Exception) -> None:
        """The sync thread's call failed unexpectedly (e.g. EMFILE): said and counted."""
        self.ctx.error("%s of %s failed: %s", what, self.path, exc)

    async def write(self, records: Sequence[Record]) -> None:
        """Append ``records``; returns once write(2) (and fdatasync when "always") is done."""
        data = self._encode(records)
        assert self._writer is not None, "write() before open()"
        try:
            inline = self._inline and len(data) <= self._inline_max
            if not (inline and self._append_inline(data)):
                await self._writer.run(self._append, data)
        except OSError as exc:
            self._failed(exc)
            raise
        if self._failing:
            self._recovered()

    def write_now(self, records: Sequence[Record]) -> bool:
        """Append ``records`` on the event loop, as ``write`` does when its slow-write guard
        lets it (``inline_writes``, ``inline_max_bytes``, the writer thread idle): True once
        written; False, nothing written, when ``write`` is to hand them to the thread."""
        if not self._inline:
            return False
        data = self._encode(records)
        try:
            if len(data) > self._inline_max or not self._append_inline(data):
                return False
        except OSError as exc:
            self._failed(exc)
            raise
        if self._failing:
            self._recovered()
        return True

    def _failed(self, exc: OSError) -> None:
        """A write failed: the sink's check says so (once, until one succeeds)."""
        if not self._failing:
            self._failing = True
            error = exc.strerror or str(exc)
            self.ctx.set_check(self.ctx.instance, False, now_timestamp(), error=error)

    def _recovered(self) -> None:
        """A write succeeded after one failed: the check is green again."""
        self._failing = False
        self.ctx.set_check(self.ctx.instance, True, now_timestamp())

    async def probe(self) -> None:
        """Writable again? The file is open and its filesystem has ``PROBE_FREE_BYTES`` free
        (an empty write would succeed on a full disk). Changes nothing."""
        assert self._writer is not None, "probe() before open()"
        await self._writer.run(self._check_room)

    def _check_room(self) -> None:
        with self._io:
            if self._fd < 0:
                raise OSError(errno.EBADF, f"{self.path} is not open")
            stats = os.fstatvfs(self._fd)
        if stats.f_bavail * stats.f_frsize < PROBE_FREE_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    async def flush(self) -> None:
        if self._writer is not None:
            await self._writer.run(self._fsync)

    def _fsync(self) -> None:
        with self._io:
            if self._fd >= 0:
                os.fsync(self._fd)

    async def reopen(self) -> None:
        """Reopen the path (after logrotate moved the file away)."""
        assert self._writer is not None, "reopen() before open()"
        await self._writer.run(self._reopen)

    def _reopen(self) -> None:
        self._close_file()
        self._open_file()

    def _close_file(self) -> None:
        with self._io:
            fd, self._fd = self._fd, -1
            if fd >= 0:
                os.close(fd)

    async def aclose(self) -> None:
        if self._syncer is not None:  # its join may wait for an fdatasync: not on the loop
            await anyio.to_thread.run_sync(self._syncer.stop)
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.run(self._close_file)
            await writer.stop()


@hookimpl
def observer_register_sinks(register: RegisterSink) -> None:
    register(JsonlSink)
