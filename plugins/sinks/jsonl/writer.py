"""The jsonl sink's writer thread: file calls off the event loop, in order.

Calls go to the thread through a deque, and their results come back through another;
each side wakes the other with one write to an eventfd (a pipe where there is no
eventfd): the thread waits on one, the event loop watches the other. Unlike a lock's
wake-up, ``os.eventfd_write`` lets go of the GIL first, so the woken thread can run at
once instead of waiting for it. Each side rings only when the other may be asleep:
the loop when the thread had nothing to do, the thread once for all the calls it
finished while the loop was busy. ``bench/handoff.py`` measures what this costs
against settling every call with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import os
import threading
from collections.abc import Callable
from typing import Any

import anyio

__all__ = ["WriterThread"]

_Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]
_Settled = tuple["asyncio.Future[Any]", bool, Any]

SIGNAL_EVERY = 16
"""While calls keep coming, the thread still wakes the loop after this many."""


class _Doorbell:
    """A file descriptor one thread rings and another answers: a waiting thread
    (``blocking``: ``answer`` waits for a ring), or an event loop that watches ``fd``
    for reading. On eventfd, ``ring`` and a blocking ``answer`` are bare C calls:
    the writer thread holds the GIL as briefly as it can around them."""

    ring: Callable[[], object]
    answer: Callable[[], object]

    def __init__(self, *, blocking: bool) -> None:
        if hasattr(os, "eventfd"):
            flags = os.EFD_CLOEXEC | (0 if blocking else os.EFD_NONBLOCK)
            self.fd = os.eventfd(0, flags)
            self._fds: tuple[int, ...] = (self.fd,)
            self.ring = functools.partial(os.eventfd_write, self.fd, 1)
            self.answer = functools.partial(os.eventfd_read, self.fd)
        else:  # pragma: no cover - macOS and other hosts without eventfd(2)
            self.fd, ring_fd = os.pipe()
            self._fds = (self.fd, ring_fd)
            os.set_blocking(self.fd, blocking)
            os.set_blocking(ring_fd, False)
            self.ring = functools.partial(_write_if_room, ring_fd)
            self.answer = functools.partial(os.read, self.fd, 4096)
        if not blocking:
            self.answer = functools.partial(_read_if_any, self.answer)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)


def _write_if_room(fd: int) -> None:  # pragma: no cover - the pipe fallback
    with contextlib.suppress(BlockingIOError):  # a full pipe is already ringing
        os.write(fd, b"\0")


def _read_if_any(read: Callable[[], object]) -> None:
    with contextlib.suppress(BlockingIOError):  # no ring since the last answer
        read()


class WriterThread:
    """One thread that runs a sink's file calls in order, so the event loop never blocks.
    Being one, and first in first out, it is also what keeps writes, flushes, reopens and
    the close from overlapping: the sink needs no lock of its own on the event loop.

    A call runs to the end even when its caller is cancelled (a write is never cut in
    half). Created and stopped on the event loop it settles on.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._jobs: collections.deque[_Job | None] = collections.deque()
        self._settled: collections.deque[_Settled] = collections.deque()
        self._outstanding = 0
        """Calls queued and not yet settled (the loop's count: only it reads or writes it)."""
        self._wake = _Doorbell(blocking=True)
        self._done = _Doorbell(blocking=False)
        loop.add_reader(self._done.fd, self._settle)
        self._thread = threading.Thread(target=self._work, name="jsonl-writer", daemon=True)
        self._thread.start()

    @property
    def idle(self) -> bool:
        """No call is queued or running: the sink may touch the file on the loop without
        overtaking one (the loop's view; only the loop queues calls)."""
        return self._outstanding == 0

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the thread after every call queued before it."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._jobs.append((fn, args, future))
        self._outstanding += 1
        if self._outstanding == 1:  # the thread had nothing to do: it may be asleep
            self._wake.ring()
        return await future

    def _work(self) -> None:
        jobs, settled, ring_done = self._jobs, self._settled, self._done.ring
        while True:
            self._wait_for_work()
            unsignalled = 0
            while jobs:
                job = jobs.popleft()
                if job is None:
                    return
                fn, args, future = job
                try:
                    settled.append((future, True, fn(*args)))
                except BaseException as exc:  # handed to the caller, who re-raises it
                    settled.append((future, False, exc))
                unsignalled += 1
                if unsignalled >= SIGNAL_EVERY:
                    ring_done()
                    unsignalled = 0
            if unsignalled:
                ring_done()

    def _wait_for_work(self) -> None:
        """Sleep until the loop rings (a profiler counts time in here as idle)."""
        self._wake.answer()

    def _settle(self) -> None:
        self._done.answer()
        while self._settled:
            future, ok, value = self._settled.popleft()
            self._outstanding -= 1
            if future.done():  # its caller was cancelled
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        if self._outstanding:  # queued after the thread's last look: it may be asleep
            self._wake.ring()

    async def stop(self, timeout: float = 5) -> None:
        """Finish the queued calls, then end the thread (waiting at most ``timeout``)."""
        self._jobs.append(None)
        self._wake.ring()
        await anyio.to_thread.run_sync(self._thread.join, timeout)
        self._loop.remove_reader(self._done.fd)
        self._settle()
        if not self._thread.is_alive():  # a stuck thread may still ring: leave it the fds
            self._wake.close()
            self._done.close()
