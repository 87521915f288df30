"""The jsonl sink's background syncing: ``fsync = "batch"``, and ``writeback_bytes``.

One thread starts the kernel's writeback of every ``writeback_bytes`` written
(``sync_file_range(2)`` with ``SYNC_FILE_RANGE_WRITE``, which does not wait for the
pages to be written, only, at worst, for room in the device's queue), as
RocksDB's ``bytes_per_sync`` and PostgreSQL's ``wal_writer_flush_after`` do, and, for
``"batch"``, calls fdatasync every interval. Without the writeback, each fdatasync
wrote a whole interval's data at once and the write(2)s made meanwhile waited behind
it (at 180 MB/s, 70 ms fdatasyncs held writes for up to 53 ms); with ``"never"``,
gigabytes of dirty pages piled up until the kernel's flusher wrote them out under the
writes (BENCHMARKS.md, "Round six").
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
import time
from collections.abc import Callable

__all__ = ["StartWriteback", "SyncThread", "start_writeback"]

SYNC_FILE_RANGE_WRITE = 2
"""sync_file_range(2)'s flag: start writing the range's dirty pages, wait for none of them."""

StartWriteback = Callable[[int, int, int], None]
"""``(fd, offset, nbytes)``: start writing back that range of the file; raises OSError."""


def _bind_sync_file_range() -> StartWriteback | None:
    """libc's sync_file_range(2) as a :data:`StartWriteback`; None where libc has none
    (macOS, the BSDs), and the writeback is left to the kernel and the fdatasyncs."""
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # pragma: no cover - hosts without it
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int

    def start(fd: int, offset: int, nbytes: int) -> None:
        if call(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE) != 0:  # lets go of the GIL
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))

    return start


start_writeback: StartWriteback | None = _bind_sync_file_range()
"""This host's sync_file_range(2), or None."""


class SyncThread:
    """Calls ``writeback`` soon after each :meth:`kick` (the sink kicks every
    ``writeback_bytes`` written) and ``sync`` every ``interval`` seconds (never when it is
    None). Both run on this thread, never at once, so neither holds up the event loop or
    the writer thread. An exception from either goes to ``failed`` (with ``"writeback"``
    or ``"fdatasync"``), and the thread goes on."""

    def __init__(
        self,
        sync: Callable[[], None],
        writeback: Callable[[], None],
        interval: float | None,
        failed: Callable[[str, Exception], None],
    ) -> None:
        self._sync = sync
        self._writeback = writeback
        self._interval = interval
        self._failed = failed
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="jsonl-sync", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        """Ask for a writeback of what was written since the last one (any thread)."""
        self._wake.set()

    def _loop(self) -> None:
        interval = self._interval
        due = math.inf if interval is None else time.monotonic() + interval
        while True:
            kicked = self._wake.wait(None if interval is None else max(0.0, due - time.monotonic()))
            if kicked:  # cleared before _stopping is read: a stop() after it sets it again
                self._wake.clear()
            if self._stopping:
                return
            if kicked:
                self._call("writeback", self._writeback)
            if interval is not None and time.monotonic() >= due:
                self._call("fdatasync", self._sync)
                due = time.monotonic() + interval

    def _call(self, what: str, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as exc:  # e.g. EMFILE from a dup: said, and the next turn tries again
            self._failed(what, exc)

    def stop(self) -> None:
        """End the thread (waiting at most 5 s for a sync in flight): blocking, so the
        event loop calls it on a worker thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=5)
