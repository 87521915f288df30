"""A disk whose writes are slow (issue 24): the jsonl sink's inline write(2) guard moves
writes off the event loop, so ``/health`` keeps answering fast, and every acknowledged
event is still in the file.

The sink file lives on a passthrough FUSE filesystem whose every write takes
``WRITE_DELAY`` seconds (``slow_fuse.py``; root and /dev/fuse needed, as in CI). Without
mfusepy, libfuse 3 or the rights to mount, the test is skipped, unless
``OBSERVER_REQUIRE_FUSE=1`` (CI), when it fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from reliability_kit import id_counts, record

from observer_core.testing import DaemonFactory, daemon_config, wait_for

WRITE_DELAY = 0.2
"""Seconds each write(2) on the slow filesystem takes: what dirty-page throttling can do."""
HEALTH_P99_BOUND = 0.1
"""``/health``'s 99th percentile must stay under this: half of one slow write."""
CONFIG = daemon_config(
    "slow/ops.jsonl", fsync="never", inline_write_max_ms=20, inline_cooldown_ms=600000
)
POSTERS = 4
SECONDS = 3.0
FLAG = "OBSERVER_REQUIRE_FUSE"


def _unavailable(message: str) -> None:
    if os.environ.get(FLAG) == "1":
        pytest.fail(f"{FLAG}=1 but {message}")
    pytest.skip(f"{message} (CI installs fuse3 and mfusepy and sets {FLAG}=1)")


def _unmount(mount: Path) -> None:
    command = ["fusermount3", "-u", "-z"] if shutil.which("fusermount3") else ["umount", "-l"]
    subprocess.run([*command, str(mount)], capture_output=True, timeout=30, check=False)


@pytest.fixture
def slow_mount(observer_daemon: DaemonFactory) -> Iterator[Path]:
    """``slow/`` in the daemon's folder, every write to it taking ``WRITE_DELAY`` seconds."""
    if not os.path.exists("/dev/fuse"):
        _unavailable("there is no /dev/fuse")
    backing, mount = observer_daemon.directory / "backing", observer_daemon.directory / "slow"
    backing.mkdir()
    mount.mkdir()
    helper = Path(__file__).with_name("slow_fuse.py")
    server = subprocess.Popen(
        [sys.executable, str(helper), str(backing), str(mount), str(WRITE_DELAY)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not os.path.ismount(mount):
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                output = server.communicate(timeout=10)[0].strip()
                _unavailable(f"cannot mount the slow FUSE filesystem: {output[-500:]}")
            time.sleep(0.02)
        yield mount
    finally:
        observer_daemon.close()
        _unmount(mount)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def test_slow_writes_move_off_the_loop_and_health_stays_fast(observer_daemon, slow_mount):
    daemon = observer_daemon.start(CONFIG)
    assert daemon.metric("observer_sink_inline_fallbacks_total", instance="sinks.ops") == 0
    stop = threading.Event()
    acked: list[str] = []

    def post(poster: int) -> None:
        with httpx.Client(timeout=30) as client:
            n = 0
            while not stop.is_set():
                event_id = f"{poster}-{n}"
                n += 1
                if client.post(f"{daemon.url}/event", json={"id": event_id}).status_code == 200:
                    acked.append(event_id)

    posters = [threading.Thread(target=post, args=(index,)) for index in range(POSTERS)]
    for thread in posters:
        thread.start()
    latencies: list[float] = []
    try:
        wait_for(lambda: len(acked) > 0, what="a first acknowledged event", timeout=15)
        with httpx.Client(timeout=30) as client:
            end = time.monotonic() + SECONDS
            while time.monotonic() < end:
                started = time.perf_counter()
                assert client.get(f"{daemon.url}/health").status_code == 200
                latencies.append(time.perf_counter() - started)
                stop.wait(0.01)  # a steady rate of health checks, not a wait for anything
    finally:
        stop.set()
        for thread in posters:
            thread.join(timeout=60)

    fallbacks = daemon.metric("observer_sink_inline_fallbacks_total", instance="sinks.ops")
    p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
    assert daemon.stop() == 0
    written = id_counts(slow_mount.parent / "backing" / "ops.jsonl")
    record(
        "slow disk",
        write_delay_ms=WRITE_DELAY * 1000,
        acked=len(acked),
        health_checks=len(latencies),
        health_p50_ms=round(p50 * 1000, 2),
        health_p99_ms=round(p99 * 1000, 2),
        inline_fallbacks=fallbacks,
    )
    assert fallbacks is not None and fallbacks >= 1, "the guard never moved writes off the loop"
    assert "writing on the writer thread" in daemon.logs()
    assert p99 < HEALTH_P99_BOUND, f"/health p99 {p99 * 1000:.1f} ms while writes were slow"
    # The writes really were slow: a commit took a write of WRITE_DELAY, so far fewer
    # events were acknowledged than a fast disk would take in SECONDS.
    assert 0 < len(acked) < POSTERS * (SECONDS + 2) / WRITE_DELAY
    missing = [event_id for event_id in acked if written[event_id] != 1]
    assert not missing, f"{len(missing)} acknowledged events are not in the file once"
