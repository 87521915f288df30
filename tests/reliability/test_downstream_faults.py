"""Downstream faults: the gateway's /log down, failing or hanging; the model server and
the code-review service slow, hanging or dropping the connection.

- /log out for ``OBSERVER_OUTAGE_SECS`` (default 60) while findings keep coming:
  refused connections, 500s, or requests that hang. Nothing within ``queue_max`` is
  lost, the drops past it are counted, retries back off instead of hammering, and
  when the gateway returns the backlog is delivered in order, each entry once.
- A slow or broken model or code-review service: cycles keep their period (the calls
  run beside the cycle under their timeouts), calls in flight stay bounded (one for
  diagnosis, four for escalation), and the daemon still stops promptly.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from reliability_kit import errors_logged, open_sockets, record

from observer_core.testing import (
    Daemon,
    DaemonFactory,
    RecordedRequest,
    StubReply,
    StubServer,
    free_port,
    wait_for,
)

OUTAGE_SECS = float(os.environ.get("OBSERVER_OUTAGE_SECS") or "60")
ENTRIES = 60
QUEUE_MAX = 40
BACKOFF_MAX_SECS = 30.0
"""The gateway_log sink's longest wait between attempts (plus up to one send timeout)."""
SEND_TIMEOUT_SECS = 10.0

LOG_CONFIG = f"""
[observer]
cycle_secs = 0.2
state_dir = "state"
[sources.http]
port = {{port}}
[analyzers.playbook]
every = 1
min_successes = 1
min_group = 1
[sinks.gw]
plugin = "gateway_log"
url = "URL"
queue_max = {QUEUE_MAX}
"""


@dataclass
class Outage:
    """A stub gateway that fails as ``mode`` says until ``over`` is set, then takes entries."""

    mode: str
    server: StubServer | None = None
    port: int = field(default_factory=free_port)
    over: threading.Event = field(default_factory=threading.Event)
    attempts: list[float] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)

    def start(self) -> None:
        if self.mode != "down":
            self._serve()

    def end(self) -> None:
        self.over.set()
        if self.mode == "down":
            self._serve()

    def _serve(self) -> None:
        self.server = StubServer(self.port)
        self.server.replies["/log"] = self._answer

    def _answer(self, request: RecordedRequest) -> StubReply:
        if self.over.is_set():
            self.delivered.append(request.json()["context"])
            return StubReply()
        self.attempts.append(time.monotonic())
        if self.mode == "hang":
            self.over.wait(OUTAGE_SECS + 5)  # never answers in time
            return StubReply(status=503)
        return StubReply(status=500, body={"error": "internal"})

    def close(self) -> None:
        self.over.set()
        if self.server is not None:
            self.server.close()


def failed_attempts(daemon: Daemon, outage: Outage) -> int:
    if outage.mode == "down":
        return int(
            daemon.metric("observer_gateway_log_failed_attempts_total", instance="sinks.gw") or 0
        )
    return len(outage.attempts)


@pytest.mark.slow
def test_gateway_log_outage_loses_nothing_within_queue_max(observer_daemon: DaemonFactory) -> None:
    outages = [Outage("down"), Outage("500"), Outage("hang")]
    daemons: list[Daemon] = []
    try:
        for number, outage in enumerate(outages):
            outage.start()
            config = LOG_CONFIG.replace("URL", f"http://127.0.0.1:{outage.port}")
            config = config.replace('state_dir = "state"', f'state_dir = "{outage.mode}"')
            daemons.append(observer_daemon.start(config, name=f"observer{number}.toml"))
        started = time.monotonic()
        for number in range(ENTRIES):  # one new endpoint a cycle: one entry each, in order
            for daemon in daemons:
                daemon.post_events([{"endpoint": f"/e{number}", "success": True}])
            time.sleep(0.25)
        for daemon in daemons:
            wait_for(
                lambda d=daemon: (
                    d.metric("observer_sink_dropped_total", instance="sinks.gw")
                    == ENTRIES - QUEUE_MAX
                )
            )
            assert daemon.metric("observer_sink_queue_depth", instance="sinks.gw") == QUEUE_MAX
        time.sleep(max(0.0, OUTAGE_SECS - (time.monotonic() - started)))
        during = [
            failed_attempts(daemon, outage) for daemon, outage in zip(daemons, outages, strict=True)
        ]
        ended = time.monotonic()
        for outage in outages:
            outage.end()
        expected = [f"endpoint=/e{number}" for number in range(ENTRIES - QUEUE_MAX, ENTRIES)]
        recovery = {}
        for daemon, outage in zip(daemons, outages, strict=True):
            wait_for(
                lambda o=outage: len(o.delivered) >= QUEUE_MAX,
                timeout=BACKOFF_MAX_SECS + SEND_TIMEOUT_SECS + 10,
                what=f"the backlog after the {outage.mode} outage",
            )
            recovery[outage.mode] = round(time.monotonic() - ended, 1)
            wait_for(
                lambda d=daemon: d.metric("observer_sink_queue_depth", instance="sinks.gw") == 0
            )
            assert outage.delivered == expected, (
                f"{outage.mode}: not the newest {QUEUE_MAX}, in order"
            )
            assert not (daemon.directory / outage.mode / "sinks.gw/dead_letter.jsonl").exists()
    finally:
        for outage in outages:
            outage.close()

    for outage, attempts in zip(outages, during, strict=True):
        # Backing off: a handful of attempts in a minute, not one every cycle.
        assert 3 <= attempts <= 2 + OUTAGE_SECS / 5, f"{outage.mode}: {attempts} attempts"
    gaps = [later - earlier for earlier, later in itertools.pairwise(outages[1].attempts)]
    assert gaps[0] < 2 and max(gaps) >= 8, f"no exponential backoff: {gaps}"
    for daemon in daemons:
        assert daemon.stop() == 0
        assert not errors_logged(daemon)
    record(
        "downstream_faults",
        log_outage_secs=OUTAGE_SECS,
        log_entries_made=ENTRIES,
        log_queue_max=QUEUE_MAX,
        log_dropped_counted=ENTRIES - QUEUE_MAX,
        log_delivered_in_order=QUEUE_MAX,
        attempts_during_outage={o.mode: n for o, n in zip(outages, during, strict=True)},
        recovery_secs=recovery,
    )


# -- the model server and the code-review service ------------------------------------------

ANALYZER_CONFIG = """
[observer]
cycle_secs = 0.2
state_dir = "state"
shutdown_timeout_secs = 5
[sources.http]
port = {port}
[analyzers.diagnosis]
url = "LLM"
timeout_secs = 1
[analyzers.escalation]
url = "REVIEW"
timeout_secs = 1
max_attempts = 1000
[sinks.ops]
plugin = "jsonl"
path = "ops.jsonl"
[sinks.findings]
plugin = "jsonl"
path = "findings.jsonl"
accepts = ["diagnosis", "escalation"]
"""
RUN_SECS = 4.0


class InFlight(threading.Thread):
    """Samples, while the test runs, the analyzers' calls in flight (from /stats) and the
    sockets the daemon holds."""

    def __init__(self, daemon: Daemon) -> None:
        super().__init__(daemon=True)
        self._daemon = daemon
        self._done = threading.Event()
        self.baseline = open_sockets(daemon.process.pid)
        self.model = self.review = self.sockets = 0

    def run(self) -> None:
        with httpx.Client(base_url=self._daemon.url, timeout=5) as client:
            while not self._done.wait(0.02):
                instances = client.get("/stats").json()["instances"]
                self.model = max(self.model, int(instances["analyzers.diagnosis"]["in_flight"]))
                self.review = max(self.review, len(instances["analyzers.escalation"]["in_flight"]))
                extra = open_sockets(self._daemon.process.pid) - self.baseline
                self.sockets = max(self.sockets, extra)

    def stop(self) -> None:
        self._done.set()
        self.join(10)


class Concurrency:
    """A stub route that answers ``reply`` after ``delay``, counting calls in flight."""

    def __init__(self, reply: StubReply, delay: float) -> None:
        self._reply, self._delay = reply, delay
        self._lock = threading.Lock()
        self.now = self.most = self.calls = 0

    def __call__(self, request: RecordedRequest) -> StubReply:
        with self._lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(self._delay)
            return self._reply
        finally:
            with self._lock:
                self.now -= 1


MODES: dict[str, Callable[[dict[str, Any]], Concurrency]] = {
    "slow": lambda body: Concurrency(StubReply(body=body), 0.8),
    "hang": lambda body: Concurrency(StubReply(body=body), 30.0),
    "disconnect": lambda body: Concurrency(StubReply(disconnect=True), 0.0),
}


@pytest.mark.parametrize("mode", MODES, ids=list(MODES))
def test_slow_or_broken_analyzer_services_do_not_stall_the_cycle(
    observer_daemon: DaemonFactory, stub_server: Any, mode: str
) -> None:
    llm, review = stub_server(), stub_server()
    model = llm.replies["/ai/generate"] = MODES[mode]({"text": "a diagnosis"})
    service = review.replies["/api/run"] = MODES[mode]({"run_id": "r"})
    config = ANALYZER_CONFIG.replace("LLM", llm.url).replace("REVIEW", review.url)
    daemon = observer_daemon.start(config)
    first_cycle = daemon.cycles()
    in_flight = InFlight(daemon)
    in_flight.start()
    started = time.monotonic()
    with httpx.Client(base_url=daemon.url, timeout=5) as client:
        for number in itertools.count():
            if time.monotonic() - started > RUN_SECS:
                break
            failures = [{"success": False, "error": "e", "sig_hash": f"s{number}"}] * 3
            assert client.post("/events", json=failures).status_code == 200
            time.sleep(0.05)
    in_flight.stop()
    cycles = daemon.cycles() - first_cycle
    lag = daemon.metric("observer_event_loop_lag_seconds", stat="max") or 0.0
    skipped = daemon.metric("observer_cycles_skipped_total") or 0
    assert cycles >= 0.75 * RUN_SECS / 0.2, f"only {cycles} cycles in {RUN_SECS}s"
    assert skipped == 0
    assert lag < 0.5, f"event loop lag {lag:.3f}s"
    assert in_flight.model <= 1, f"{in_flight.model} model calls at once"
    assert in_flight.review <= 4, f"{in_flight.review} code-review calls at once"
    assert in_flight.sockets <= 1 + 4 + 4, f"{in_flight.sockets} more sockets"
    assert model.calls >= 2 and service.calls >= 4, "the services were not called"
    assert model.calls <= 2 * RUN_SECS / 0.2 and service.calls <= 8 * RUN_SECS / 0.2
    stopping = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - stopping < 5 + 2
    record(
        "downstream_faults",
        **{
            f"analyzers_{mode}": (
                f"{cycles} cycles in {RUN_SECS:g}s, 0 skipped, loop lag max {lag * 1000:.0f} ms, "
                f"calls in flight max {in_flight.model} (model) / {in_flight.review} "
                f"(code review), {in_flight.sockets} more sockets at most"
            )
        },
    )
