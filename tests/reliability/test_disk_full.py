"""A full disk: events the sink cannot write are refused (503), never acknowledged,
and the daemon carries on and recovers by itself when space returns.

The sink file and ``state_dir`` live on a 1 MiB tmpfs mounted for the test (root and
CAP_SYS_ADMIN needed, as in CI); failing that, a loop-mounted ext4 image; failing
that, the test is skipped and says why.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from reliability_kit import errors_logged, id_counts, record, ring_len

from observer_core.testing import DaemonFactory, wait_for

CONFIG = """
[observer]
cycle_secs = 0.3
state_dir = "disk/state"
[sources.http]
port = {port}
[sinks.ops]
plugin = "jsonl"
path = "disk/ops.jsonl"
"""
BATCH = 20
LEFT_FREE = 48 * 1024


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def _mount_small_disk(mount: Path, image: Path) -> str:
    """Mount a small filesystem at ``mount`` and say which; skip the test when none can be."""
    tmpfs = _run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount))
    if tmpfs.returncode == 0:
        return "1 MiB tmpfs"
    with open(image, "wb") as out:
        out.truncate(2 << 20)
    made = _run("mkfs.ext4", "-q", "-F", str(image))
    loop = _run("mount", "-o", "loop", str(image), str(mount)) if made.returncode == 0 else made
    if loop.returncode == 0:
        return "2 MiB ext4 on a loop device"
    pytest.skip(
        f"cannot mount a small filesystem (tmpfs: {tmpfs.stderr.strip()}; "
        f"loop: {loop.stderr.strip()}): the full-disk test needs root, as in CI"
    )


@pytest.fixture
def small_disk(observer_daemon: DaemonFactory) -> Iterator[tuple[Path, str]]:
    mount = observer_daemon.directory / "disk"
    mount.mkdir()
    kind = _mount_small_disk(mount, observer_daemon.directory / "disk.img")
    try:
        yield mount, kind
    finally:
        observer_daemon.close()
        _run("umount", "-l", str(mount))


def fill(disk: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of the disk with one file."""
    stats = os.statvfs(disk)
    filler = disk / "filler"
    # A filesystem's reserve or metadata may fill it before the end: full is full.
    with open(filler, "wb") as out, contextlib.suppress(OSError):
        out.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))
    return filler


def batch(prefix: str, number: int) -> tuple[list[str], bytes]:
    ids = [f"{prefix}{number}-{k}" for k in range(BATCH)]
    events = [{"id": one, "input_summary": "x" * 100, "success": True} for one in ids]
    return ids, "\n".join(json.dumps(event) for event in events).encode()


def test_full_disk_refuses_with_503_and_recovers(
    observer_daemon: DaemonFactory, small_disk: tuple[Path, str]
) -> None:
    disk, kind = small_disk
    daemon = observer_daemon.start(CONFIG)
    filler = fill(disk, LEFT_FREE)
    acked: list[str] = []
    refused: list[str] = []
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        number = 0
        while len(refused) < 10 * BATCH and number < 5000:
            ids, body = batch("a", number)
            number += 1
            reply = client.post("/events", content=body)
            if reply.status_code == 200:
                acked += ids
                continue
            assert reply.status_code == 503, reply.text
            assert int(reply.headers["retry-after"]) >= 1
            assert "No space left on device" in reply.json()["error"]
            refused += ids
        assert refused, "the disk never filled up"
        # One client, one batch at a time: written at once (Sink.write_now), refused there.
        assert (daemon.metric("observer_commits_total", path="now") or 0) > 0

        ops = disk / "ops.jsonl"
        written = id_counts(ops)
        assert set(acked) <= written.keys(), "an acknowledged event is not on disk"
        assert not set(refused) & written.keys(), "a refused event was written"
        assert ops.read_bytes().endswith(b"\n"), "a failed write left half a line"
        assert ring_len(daemon) == len(acked), "a refused event entered the ring"
        assert (daemon.metric("observer_instance_errors_total", instance="sinks.ops") or 0) >= 1
        assert "No space left on device" in daemon.logs()
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json()["checks"]["sinks.ops"]["healthy"] is False
        daemon.wait_cycles(2)  # still cycling
        ready = client.get("/ready")  # §12.2: not ready while the ack-holding sink cannot write
        assert ready.status_code == 503 and "sinks.ops" in ready.json()["waiting_for"]

        filler.unlink()
        # The sink's probe (every 5 s) sees the room come back, with no traffic at all.
        wait_for(lambda: client.get("/ready").status_code == 200, timeout=15)
        ids, body = batch("b", 0)
        wait_for(lambda: client.post("/events", content=body).status_code == 200, timeout=10)
        assert set(ids) <= id_counts(ops).keys()
        assert client.get("/health").json()["checks"]["sinks.ops"]["healthy"] is True
    assert daemon.stop() == 0
    assert not [line for line in errors_logged(daemon) if "No space left" not in line]
    record(
        "disk_full",
        filesystem=kind,
        events_acked_before_full=len(acked),
        events_refused_503=len(refused),
        refused_events_on_disk=0,
        recovered_after_space_returned=True,
    )
