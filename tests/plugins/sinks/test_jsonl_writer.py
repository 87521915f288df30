"""The jsonl sink's writer thread: order, results, errors, cancellation, shutdown."""

from __future__ import annotations

import asyncio
import os
import threading

import anyio
import pytest
from observer_plugins.sinks.jsonl.writer import SIGNAL_EVERY, WriterThread


@pytest.mark.anyio
async def test_calls_run_in_order_off_the_loop_and_settle_with_their_results():
    writer = WriterThread(asyncio.get_running_loop())
    seen: list[tuple[int, str]] = []

    def call(n: int) -> int:
        seen.append((n, threading.current_thread().name))
        return n * 2

    try:
        results = await asyncio.gather(*(writer.run(call, n) for n in range(5 * SIGNAL_EVERY)))
    finally:
        await writer.stop()
    assert results == [n * 2 for n in range(5 * SIGNAL_EVERY)]
    assert [n for n, _ in seen] == list(range(5 * SIGNAL_EVERY))
    assert {name for _, name in seen} == {"jsonl-writer"}


@pytest.mark.anyio
async def test_an_error_reaches_its_caller_and_the_next_call_still_runs():
    writer = WriterThread(asyncio.get_running_loop())

    def fail() -> None:
        raise OSError(28, "No space left on device")

    try:
        with pytest.raises(OSError, match="No space left"):
            await writer.run(fail)
        assert await writer.run(len, "abc") == 3
    finally:
        await writer.stop()


@pytest.mark.anyio
async def test_a_cancelled_caller_does_not_cut_its_call_short():
    writer = WriterThread(asyncio.get_running_loop())
    release = threading.Event()
    finished: list[str] = []

    def slow() -> None:
        release.wait(5)
        finished.append("slow")

    try:
        with anyio.move_on_after(0.05):
            await writer.run(slow)
        release.set()
        assert await writer.run(len, "ab") == 2  # queued after slow: slow is done by now
        assert finished == ["slow"]
    finally:
        await writer.stop()


@pytest.mark.anyio
async def test_stop_finishes_queued_calls_and_closes_its_descriptor():
    loop = asyncio.get_running_loop()
    writer = WriterThread(loop)
    pending = [loop.create_task(writer.run(len, "x" * n)) for n in range(3)]
    await asyncio.sleep(0)  # the tasks queue their calls
    fd = writer._done.fd
    await writer.stop()
    assert await asyncio.gather(*pending) == [0, 1, 2]
    with pytest.raises(OSError):
        os.fstat(fd)


@pytest.mark.anyio
async def test_no_call_waits_forever_however_submissions_interleave_with_settling():
    """Callers that submit while the thread finishes, sleeps or is woken: every call
    settles (a lost wake-up would hang one until the timeout)."""
    writer = WriterThread(asyncio.get_running_loop())
    results: list[int] = []

    async def caller(offset: int) -> None:
        for n in range(300):
            results.append(await writer.run(int.__add__, offset, n))
            if n % 7 == 0:
                await asyncio.sleep(0)

    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                for offset in range(0, 20_000, 1000):
                    group.start_soon(caller, offset)
    finally:
        await writer.stop()
    assert sorted(results) == sorted(o + n for o in range(0, 20_000, 1000) for n in range(300))
