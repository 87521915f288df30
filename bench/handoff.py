"""What handing one append off the event loop costs, the cost the jsonl sink pays per commit.

    python bench/handoff.py                      # 50,000 appends per point, 3 rounds
    python bench/handoff.py --writes 20000 --rounds 5

Each point appends 300-byte lines to a file from a uvloop event loop, in one process
pinned to one core (as the daemon is in ``bench/run.py``), and reports appends/s and
CPU µs per append (the process's CPU time, every thread's), the median of the rounds:

- ``thread``: the jsonl sink's own writer thread (``WriterThread.run``): the call into a
  deque and a ring on an eventfd the thread waits on, write(2) in the thread, the
  result into another deque and a ring on an eventfd the event loop watches. What the
  daemon does.
- ``call_soon_threadsafe``: a writer thread as the sink had up to phase 6: a
  ``queue.SimpleQueue`` put, write(2) in the thread, ``loop.call_soon_threadsafe`` back.
- ``io_uring``: the write submitted to io_uring, its completion read from an eventfd
  the event loop watches. Only when the ``liburing`` package is installed
  (``pip install liburing``); not a dependency of observer-core.
- ``inline``: write(2) on the event loop itself, which the design rules out (a write can
  block for as long as the disk makes it wait); the floor.

``in flight`` 1 waits for each append before the next (a lone request's commit); 16
keeps 16 appends waiting at once (the writer thread then drains several per wake).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

LINE = b"x" * 299 + b"\n"
Append = Callable[[bytes], Awaitable[int]]


def _thread(loop: asyncio.AbstractEventLoop, fd: int) -> Append:
    from observer_plugins.sinks.jsonl.writer import WriterThread

    writer = WriterThread(loop)

    def append(data: bytes) -> Awaitable[int]:
        return writer.run(os.write, fd, data)

    return append


def _threadsafe(loop: asyncio.AbstractEventLoop, fd: int) -> Append:
    """The writer thread as it was before: each write settled by ``call_soon_threadsafe``."""
    import queue
    import threading

    jobs: queue.SimpleQueue[tuple[bytes, asyncio.Future[int]]] = queue.SimpleQueue()

    def work() -> None:
        while True:
            data, future = jobs.get()
            loop.call_soon_threadsafe(future.set_result, os.write(fd, data))

    threading.Thread(target=work, daemon=True).start()

    async def append(data: bytes) -> int:  # a coroutine, as WriterThread.run is
        future: asyncio.Future[int] = loop.create_future()
        jobs.put((data, future))
        return await future

    return append


def _inline(loop: asyncio.AbstractEventLoop, fd: int) -> Append:
    async def append(data: bytes) -> int:
        return os.write(fd, data)

    return append


def _io_uring(loop: asyncio.AbstractEventLoop, fd: int) -> Append:
    import liburing  # type: ignore[import-not-found]

    ring = liburing.Ring()
    liburing.io_uring_queue_init(256, ring)
    completion = liburing.Cqe()
    ready = os.eventfd(0, os.EFD_NONBLOCK)
    liburing.io_uring_register_eventfd(ring, ready)
    waiting: dict[int, tuple[asyncio.Future[int], bytes]] = {}
    ids = iter(range(1, 1 << 62))

    def completed() -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(ready)
        while True:
            try:
                liburing.io_uring_peek_cqe(ring, completion)
            except Exception:  # nothing more has completed
                return
            entry = completion[0]
            key, result = entry.user_data, entry.res
            liburing.io_uring_cqe_seen(ring, entry)
            future, _ = waiting.pop(key)
            future.set_result(result)

    loop.add_reader(ready, completed)

    def append(data: bytes) -> Awaitable[int]:
        future: asyncio.Future[int] = loop.create_future()
        entry = liburing.io_uring_get_sqe(ring)
        liburing.io_uring_prep_write(entry, fd, data, 0)  # O_APPEND: offset ignored
        key = next(ids)
        entry.user_data = key
        waiting[key] = (future, data)  # the buffer lives until the write completes
        liburing.io_uring_submit(ring)
        return future

    return append


WAYS: dict[str, Callable[[asyncio.AbstractEventLoop, int], Append]] = {
    "thread": _thread,
    "call_soon_threadsafe": _threadsafe,
    "io_uring": _io_uring,
    "inline": _inline,
}


async def _point(way: str, folder: Path, writes: int, in_flight: int) -> tuple[float, float]:
    """(appends/s, CPU µs per append) for one round."""
    loop = asyncio.get_running_loop()
    fd = os.open(folder / f"{way}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC)
    try:
        append = WAYS[way](loop, fd)
        for _ in range(1000):  # warm-up
            await append(LINE)

        async def client(count: int) -> None:
            for _ in range(count):
                if await append(LINE) != len(LINE):
                    raise RuntimeError("short write")

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client(writes // in_flight) for _ in range(in_flight)))
        elapsed, used = time.perf_counter() - started, time.process_time() - cpu
        return writes / elapsed, used / writes * 1e6
    finally:
        os.close(fd)


def _run(way: str, writes: int, in_flight: int) -> tuple[float, float]:
    import uvloop

    with tempfile.TemporaryDirectory() as folder:
        return uvloop.run(_point(way, Path(folder), writes, in_flight))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writes", type=int, default=50_000, help="appends per point")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per point (median)")
    parser.add_argument("--inner", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        way, writes, in_flight = args.inner
        rate, cpu = _run(way, int(writes), int(in_flight))
        print(f"{rate} {cpu}")
        return 0
    try:
        import liburing  # noqa: F401
    except ImportError:
        ways = [way for way in WAYS if way != "io_uring"]
        print("(io_uring left out: pip install liburing to include it)")
    else:
        ways = list(WAYS)
    print("| way | in flight | appends/s | CPU µs/append |")
    print("|---|---|---|---|")
    for in_flight in (1, 16):
        for way in ways:
            rounds: list[tuple[float, float]] = []
            for _ in range(args.rounds):  # a fresh process per round, pinned to core 1
                argv = ["taskset", "-c", "1", sys.executable, __file__, "--inner"]
                argv += [way, str(args.writes), str(in_flight)]
                done = subprocess.run(argv, capture_output=True, text=True, check=True)
                rate, cpu = (float(part) for part in done.stdout.split())
                rounds.append((rate, cpu))
            rate = statistics.median(rate for rate, _ in rounds)
            cpu = statistics.median(cpu for _, cpu in rounds)
            print(f"| {way} | {in_flight} | {rate:,.0f} | {cpu:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
