"""The jsonl sink's writer thread: file calls off the event loop, in order.

A call's result goes back through a deque, and the thread wakes the loop with one
write to an eventfd the loop watches (a pipe where there is no eventfd). That costs
about two thirds of settling each call with ``call_soon_threadsafe``
(``bench/handoff.py``), and the thread signals once for all the calls it finished
while the loop was busy.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import queue
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
    """A file descriptor one thread rings and the event loop watches."""

    def __init__(self) -> None:
        if hasattr(os, "eventfd"):
            self.fd = self._ring_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._eventfd = True
        else:  # pragma: no cover - macOS and other hosts without eventfd(2)
            self.fd, self._ring_fd = os.pipe()
            os.set_blocking(self.fd, False)
            os.set_blocking(self._ring_fd, False)
            self._eventfd = False

    def ring(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe is already ringing
            if self._eventfd:
                os.eventfd_write(self._ring_fd, 1)
            else:  # pragma: no cover
                os.write(self._ring_fd, b"\0")

    def answer(self) -> None:
        with contextlib.suppress(BlockingIOError):
            if self._eventfd:
                os.eventfd_read(self.fd)
            else:  # pragma: no cover
                os.read(self.fd, 4096)

    def close(self) -> None:
        os.close(self.fd)
        if self._ring_fd != self.fd:  # pragma: no cover
            os.close(self._ring_fd)


class WriterThread:
    """One thread that runs a sink's file calls in order, so the event loop never blocks.
    Being one, and first in first out, it is also what keeps writes, flushes, reopens and
    the close from overlapping: the sink needs no lock of its own on the event loop.

    A call runs to the end even when its caller is cancelled (a write is never cut in
    half). Created and stopped on the event loop it settles on.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._settled: collections.deque[_Settled] = collections.deque()
        self._doorbell = _Doorbell()
        loop.add_reader(self._doorbell.fd, self._settle)
        self._thread = threading.Thread(target=self._work, name="jsonl-writer", daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the thread after every call queued before it."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._jobs.put((fn, args, future))
        return await future

    def _work(self) -> None:
        unsignalled = 0
        while (job := self._next_job()) is not None:
            fn, args, future = job
            try:
                self._settled.append((future, True, fn(*args)))
            except BaseException as exc:  # handed to the caller, who re-raises it
                self._settled.append((future, False, exc))
            unsignalled += 1
            if unsignalled >= SIGNAL_EVERY or self._jobs.empty():
                self._doorbell.ring()
                unsignalled = 0

    def _next_job(self) -> _Job | None:
        """Wait for work (a profiler counts time in here as idle)."""
        return self._jobs.get()

    def _settle(self) -> None:
        self._doorbell.answer()
        while self._settled:
            future, ok, value = self._settled.popleft()
            if future.done():  # its caller was cancelled
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    async def stop(self, timeout: float = 5) -> None:
        """Finish the queued calls, then end the thread (waiting at most ``timeout``)."""
        self._jobs.put(None)
        await anyio.to_thread.run_sync(self._thread.join, timeout)
        self._loop.remove_reader(self._doorbell.fd)
        self._settle()
        if not self._thread.is_alive():  # a stuck thread may still ring: leave it the fd
            self._doorbell.close()
