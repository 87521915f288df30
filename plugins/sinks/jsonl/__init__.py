"""The ``jsonl`` sink: append one JSON line per record to a file.

It holds acknowledgements: an op is acknowledged only after the batch holding
it was written by write(2) (and, with ``fsync = "always"``, made durable).
Concurrent requests share one write: the engine hands over every op waiting
at that moment as one batch (group commit). A write that fails (a full disk)
leaves no partial line, refuses the batch, and marks the file unhealthy in
``/health`` checks until a write succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, cast

import msgspec

from observer_core import Finding, Record, RegisterSink, Sink, SinkConfig, hookimpl, now_timestamp
from observer_core.files import open_output, parse_file_mode

from .writer import WriterThread

PROBE_FREE_BYTES = 64 << 10
"""What ``probe()`` wants free on the file's filesystem before it calls the sink writable."""

__all__ = ["JsonlSink"]


class JsonlConfig(SinkConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[sinks.NAME]`` with ``plugin = "jsonl"``."""

    path: str
    """The file to append to; parent folders are created. Relative to the config file."""
    fsync: Literal["batch", "never", "always"] = "batch"
    """never: write(2) before the ack; batch: also fdatasync every fsync_interval_ms;
    always: fdatasync before the ack."""
    fsync_interval_ms: Annotated[int, msgspec.Meta(ge=1, le=3_600_000)] = 1000
    file_mode: str | None = None
    """Mode of the file when this creates it, an octal string such as "0640";
    unset: the process's umask decides. An existing file keeps its mode."""
    accepts: list[str] = msgspec.field(default_factory=lambda: ["op"])


class _SyncThread:
    """Calls fdatasync every ``interval`` seconds while there is unsynced data."""

    def __init__(self, sink: JsonlSink, interval: float) -> None:
        self._sink = sink
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="jsonl-fsync", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sink.sync_if_dirty()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


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
        self._syncer: _SyncThread | None = None
        self._writer: WriterThread | None = None
        self._failing = False
        """The last write failed: /health shows the file unhealthy until one succeeds."""

    async def open(self) -> None:
        self._writer = WriterThread(asyncio.get_running_loop())
        await self._writer.run(self._open_file)
        if self.config.fsync == "batch":
            self._syncer = _SyncThread(self, self.config.fsync_interval_ms / 1000)
        self.ctx.status["path"] = str(self.path)

    def _open_file(self) -> None:
        mode = self.config.file_mode
        fd = open_output(
            self.path, os.O_WRONLY | os.O_APPEND, None if mode is None else parse_file_mode(mode)
        )
        try:
            self._size = self._repair_torn_tail(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

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
            start = self._size
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
                if self.config.fsync == "always":
                    os.fdatasync(self._fd)
            except OSError:
                with contextlib.suppress(OSError):  # no partial line for the next write
                    os.ftruncate(self._fd, start)
                raise
            self._size = start + len(data)
            self._dirty = self.config.fsync == "batch"

    def sync_if_dirty(self) -> None:
        """fdatasync a duplicate of the fd outside the lock: writes never queue behind it."""
        with self._io:
            if not self._dirty or self._fd < 0:
                return
            self._dirty = False
            fd = os.dup(self._fd)
        try:
            os.fdatasync(fd)
        except OSError as exc:
            self.ctx.error("fdatasync of %s failed: %s", self.path, exc)
        finally:
            os.close(fd)

    async def write(self, records: Sequence[Record]) -> None:
        """Append ``records``; returns once write(2) (and fdatasync when "always") is done."""
        data = self._encode(records)
        assert self._writer is not None, "write() before open()"
        try:
            await self._writer.run(self._append, data)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                error = exc.strerror or str(exc)
                self.ctx.set_check(self.ctx.instance, False, now_timestamp(), error=error)
            raise
        if self._failing:
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
        if self._syncer is not None:
            self._syncer.stop()
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.run(self._close_file)
            await writer.stop()


@hookimpl
def observer_register_sinks(register: RegisterSink) -> None:
    register(JsonlSink)
