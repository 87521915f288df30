"""The jsonl sink: acknowledgement, durability, fsync modes, repair, reopen (CONTRACT §7)."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx
import pytest
from jsonl_kit import ids, open_sink, read_lines
from observer_plugins.sinks.gateway_log.entry import LogEntry

from observer_core import Finding
from observer_core.testing import daemon_config, wait_for
from observer_core.testing import numbered_op as op

CONFIG = daemon_config("out/ops.jsonl", fsync="FSYNC")


@pytest.mark.parametrize("fsync", ["never", "batch", "always"])
def test_kill_9_right_after_acks_loses_nothing(observer_daemon, fsync):
    daemon = observer_daemon.start(CONFIG.replace("FSYNC", fsync))
    acked = 0

    def send(index: int) -> int:
        with httpx.Client() as client:
            ok = 0
            for n in range(25):
                reply = client.post(f"{daemon.url}/event", json={"id": f"{index}-{n}"})
                ok += reply.status_code == 200
            return ok

    with ThreadPoolExecutor(8) as pool:
        acked = sum(pool.map(send, range(8)))
    daemon.kill()
    ids = [row["id"] for row in read_lines(daemon.directory / "out/ops.jsonl")]
    assert acked == 200
    assert sorted(ids) == sorted(f"{i}-{n}" for i in range(8) for n in range(25))


def test_torn_last_line_is_repaired_at_start(observer_daemon, tmp_path):
    path = tmp_path / "out/ops.jsonl"
    path.parent.mkdir()
    path.write_bytes(b'{"complete":1}\n{"torn":')
    daemon = observer_daemon.start(CONFIG.replace("FSYNC", "never"))
    httpx.post(f"{daemon.url}/event", json={"id": "after"})
    rows = read_lines(path)
    assert rows[0] == {"complete": 1}
    assert rows[1]["id"] == "after" and len(rows) == 2
    assert "torn last line" in daemon.logs()


def test_sighup_reopens_the_file_for_logrotate(observer_daemon, tmp_path):
    daemon = observer_daemon.start(CONFIG.replace("FSYNC", "batch"))
    httpx.post(f"{daemon.url}/event", json={"id": "before"})
    os.rename(tmp_path / "out/ops.jsonl", tmp_path / "out/ops.jsonl.1")
    daemon.signal(signal.SIGHUP)
    daemon.wait_log("reopening sink files")

    def lands_in_new_file() -> bool:
        httpx.post(f"{daemon.url}/event", json={"id": "after"})
        return (tmp_path / "out/ops.jsonl").exists()

    wait_for(lands_in_new_file, what="a new file after SIGHUP")
    assert daemon.process.poll() is None  # SIGHUP never kills it
    assert read_lines(tmp_path / "out/ops.jsonl.1")[0]["id"] == "before"
    assert read_lines(tmp_path / "out/ops.jsonl")[0]["id"] == "after"


def test_sigterm_exits_0_and_keeps_everything(observer_daemon, tmp_path):
    daemon = observer_daemon.start(CONFIG.replace("FSYNC", "batch"))
    for n in range(10):
        assert httpx.post(f"{daemon.url}/event", json={"id": str(n)}).status_code == 200
    assert daemon.stop() == 0
    assert len(read_lines(tmp_path / "out/ops.jsonl")) == 10
    assert "shutdown complete" in daemon.logs()


class _SyncCounter:
    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        real = os.fdatasync

        def counting(fd: int) -> None:
            self.calls += 1
            real(fd)

        monkeypatch.setattr(os, "fdatasync", counting)


@pytest.mark.anyio
async def test_fsync_always_syncs_before_returning(tmp_path, monkeypatch):
    syncs = _SyncCounter(monkeypatch)
    sink = await open_sink(tmp_path, fsync="always")
    await sink.write([op(1), op(2)])
    assert syncs.calls == 1
    await sink.write([op(3)])
    assert syncs.calls == 2
    await sink.aclose()


@pytest.mark.anyio
async def test_fsync_batch_syncs_in_the_background(tmp_path, monkeypatch):
    syncs = _SyncCounter(monkeypatch)
    sink = await open_sink(tmp_path, fsync="batch", fsync_interval_ms=20)
    await sink.write([op(1)])
    assert syncs.calls == 0  # the write did not wait for a sync
    with anyio.fail_after(5):
        while syncs.calls == 0:
            await anyio.sleep(0.01)
    await sink.aclose()


@pytest.mark.anyio
async def test_fsync_never_never_syncs(tmp_path, monkeypatch):
    syncs = _SyncCounter(monkeypatch)
    sink = await open_sink(tmp_path, fsync="never", fsync_interval_ms=1)
    await sink.write([op(1)])
    await anyio.sleep(0.05)
    assert syncs.calls == 0
    await sink.aclose()


@pytest.mark.anyio
async def test_findings_are_written_as_their_payload(tmp_path):
    sink = await open_sink(tmp_path, fsync="never", accepts=["diagnosis"])
    entry = LogEntry(operation="o", approach="a", result="r", context="c")
    await sink.write([Finding("diagnosis", entry)])
    await sink.aclose()
    assert read_lines(tmp_path / "ops.jsonl") == [
        {"operation": "o", "approach": "a", "result": "r", "context": "c"}
    ]


@pytest.mark.anyio
async def test_failed_write_leaves_no_partial_line(tmp_path):
    sink = await open_sink(tmp_path, fsync="never")  # inline: write(2) on the event loop
    await sink.write([op(1)])
    os.close(sink._fd)  # the next write fails like a broken disk would
    sink._fd = os.open(os.devnull, os.O_RDONLY)
    with pytest.raises(OSError):
        await sink.write([op(2)])
    await sink.aclose()
    assert ids(tmp_path / "ops.jsonl") == [1]
