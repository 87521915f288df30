"""``[observer] busy_poll_us``: after a commit the event loop polls instead of sleeping, for
that long, and no longer (a change needs a restart); measured on the real daemon by its main
thread's context switches and CPU time (``/proc``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from observer_core.testing import Daemon, daemon_config

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")

BASE = daemon_config(state_dir="state")
REQUESTS = 200


def with_busy_poll(micros: int) -> str:
    return BASE.replace("cycle_secs = 60", f"cycle_secs = 60\nbusy_poll_us = {micros}")


def main_thread(daemon: Daemon) -> Path:
    pid = daemon.process.pid
    return Path(f"/proc/{pid}/task/{pid}")


def sleeps_per_request(daemon: Daemon) -> float:
    """Voluntary context switches of the daemon's event loop thread per request, over
    ``REQUESTS`` posted one after another on one keep-alive connection."""

    def voluntary() -> int:
        for line in (main_thread(daemon) / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
        raise AssertionError("no voluntary_ctxt_switches in /proc status")

    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        client.post("/event", json={"success": True}).raise_for_status()  # connected
        before = voluntary()
        for _ in range(REQUESTS):
            client.post("/event", json={"success": True}).raise_for_status()
        return (voluntary() - before) / REQUESTS


def cpu_seconds(daemon: Daemon) -> float:
    """User and system CPU time of the event loop thread so far."""
    fields = (main_thread(daemon) / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_busy_poll_keeps_the_loop_awake_between_requests(observer_daemon):
    off = observer_daemon.start(with_busy_poll(0))
    # Off: the loop sleeps in epoll_wait after each answer, and is woken by the next request.
    assert sleeps_per_request(off) > 0.7
    assert off.stop() == 0

    on = observer_daemon.start(with_busy_poll(10000))
    # 10 ms: a client that posts again at once finds the loop still polling.
    assert sleeps_per_request(on) < 0.3
    assert (on.directory / "ops.jsonl").read_text().count("\n") == 2 * (REQUESTS + 1)


def test_a_busy_poll_change_needs_a_restart(observer_daemon):
    daemon = observer_daemon.start(with_busy_poll(50))
    daemon.config_path.write_text(with_busy_poll(10000).replace("{port}", str(daemon.port)))
    refused = observer_daemon.run("reload", "--config", "observer.toml")
    # Contract §12.1: only its four [observer] keys change live; any other is refused.
    assert refused.returncode == 1
    assert "busy_poll_us" in refused.stdout + refused.stderr
    # Nothing changed: 50 µs is still in force. httpx often posts again after more than
    # that (0.3-0.5 sleeps per request here, by load), never with 10 ms (0.00-0.01).
    assert sleeps_per_request(daemon) > 0.15


def test_an_idle_daemon_does_not_spin(observer_daemon):
    daemon = observer_daemon.start(with_busy_poll(10000))
    sleeps_per_request(daemon)  # polls after each of these commits
    time.sleep(0.1)  # (the window, 10 ms, is long over)
    before = cpu_seconds(daemon)
    time.sleep(1.0)
    # A loop that kept polling would have burned about the whole second.
    assert cpu_seconds(daemon) - before < 0.25
