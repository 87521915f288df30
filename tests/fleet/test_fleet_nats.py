"""A fleet on one NATS JetStream: edge observers take events over HTTP and publish them;
writer observers share one durable consumer and write them; analyzer observers each read
the whole stream and escalate each sig_hash once between them.

Delivery is at least once: an event acknowledged (HTTP 200) by an edge is written by a
writer, even when a writer is killed with ``kill -9`` mid-stream or NATS is restarted; a
message a killed writer wrote but had not acknowledged is written again by the other one,
and a batch NATS stored just before it was killed (its ack lost) is refused to the client,
retried and stored again: duplicates, counted and printed. Run with ``-s`` to see them.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from observer_core.testing import Daemon, DaemonFactory, StubReply, wait_for

pytestmark = pytest.mark.slow

EDGE = """
[observer]
cycle_secs = 1
state_dir = "state/NAME"
[sources.http]
port = {port}
[sinks.bus]
plugin = "nats"
url = "NATS"
timeout_secs = 5
"""

WRITER = """
[observer]
cycle_secs = 1
state_dir = "state/NAME"
[sources.bus]
plugin = "nats"
url = "NATS"
durable = "writers"
ack_wait_secs = 5
batch = 16
[sources.status]
port = {port}
[sinks.ops]
plugin = "jsonl"
path = "out/NAME.jsonl"
fsync = "never"
"""

ANALYZER = """
[observer]
cycle_secs = 0.3
ring_size = 200000
state_dir = "state/NAME"
[sources.bus]
plugin = "nats"
url = "NATS"
durable = "analysis-NAME"
[sources.status]
port = {port}
[analyzers.escalation]
url = "STUB"
threshold = 3
fleet = { url = "NATS" }
[sinks.rows]
plugin = "jsonl"
path = "out/NAME-escalations.jsonl"
accepts = ["escalation"]
"""

BATCH = 1000


def event(n: int) -> dict[str, object]:
    """Event ``n``: every tenth fails, with one of 40 sig_hashes (20 others after 50 000)."""
    body: dict[str, object] = {"id": f"e{n}", "endpoint": f"/e{n % 10}", "success": True}
    if n % 10 == 0:
        sig = f"sig{(n // 10) % 40}" if n < 50_000 else f"late{(n // 10) % 20}"
        body.update(success=False, error="boom", sig_hash=sig)
    return body


def expected_sigs(total: int) -> set[str]:
    return {str(event(n)["sig_hash"]) for n in range(0, total, 10)}


@dataclass
class Load:
    """Posts events ``0..total-1`` in batches to the edges, retrying refused batches."""

    edges: list[Daemon]
    total: int
    acked: set[str] = field(default_factory=set)
    refused: int = 0
    sent: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, lane: int) -> None:
        edge = self.edges[lane]
        starts = range(lane * BATCH, self.total, BATCH * len(self.edges))
        with httpx.Client(timeout=30) as client:
            for start in starts:
                batch = [event(n) for n in range(start, min(start + BATCH, self.total))]
                self._post(client, edge, batch)

    def _post(self, client: httpx.Client, edge: Daemon, batch: list[dict[str, object]]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                reply = client.post(f"{edge.url}/events", json=batch)
            except httpx.TransportError:
                reply = None
            if reply is not None and reply.status_code == 200:
                with self._lock:
                    self.acked.update(str(item["id"]) for item in batch)
                    self.sent += len(batch)
                return
            with self._lock:
                self.refused += 1
            time.sleep(0.2)  # a client backing off after a 503, as Retry-After asks
        raise AssertionError("a batch was refused for 60 s")

    def start(self) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=self.run, args=(lane,)) for lane in range(len(self.edges))
        ]
        for thread in threads:
            thread.start()
        return threads


def written_ids(directory: Path, names: list[str]) -> list[str]:
    ids = []
    for name in names:
        path = directory / "out" / f"{name}.jsonl"
        if path.exists():
            ids += [json.loads(line)["id"] for line in path.read_text().splitlines()]
    return ids


def line_count(directory: Path, names: list[str]) -> int:
    paths = [directory / "out" / f"{name}.jsonl" for name in names]
    return sum(path.read_bytes().count(b"\n") for path in paths if path.exists())


def start_all(
    factory: DaemonFactory, configs: dict[str, str], nats_url: str, stub_url: str
) -> dict[str, Daemon]:
    daemons = {
        name: factory.start(
            text.replace("NAME", name).replace("NATS", nats_url).replace("STUB", stub_url),
            name=f"{name}.toml",
            wait=False,
        )
        for name, text in configs.items()
    }
    for daemon in daemons.values():
        daemon.wait_ready(30)
    return daemons


def stats(daemon: Daemon) -> dict[str, object]:
    return httpx.get(f"{daemon.url}/stats", timeout=5).json()


@pytest.fixture
def code_review(stub_server):
    stub = stub_server()
    stub.replies["/api/run"] = StubReply(body={"run_id": "r", "facts": ["fact"]})
    return stub


def escalated(stub) -> Counter[str]:
    """POSTs to the code-review service, by sig_hash."""
    return Counter(
        request.json()["input"].split(" ")[0].removeprefix("sig_hash=")
        for request in stub.received("/api/run")
    )


def report(what: str, **numbers: object) -> None:
    print(f"\n[{what}] " + ", ".join(f"{key}={value}" for key, value in numbers.items()))


def test_100k_events_two_edges_two_writers_one_killed(observer_daemon, nats_server, code_review):
    total = 100_000
    configs = {
        "edge0": EDGE,
        "edge1": EDGE,
        "writer0": WRITER,
        "writer1": WRITER,
        "analyzer0": ANALYZER,
        "analyzer1": ANALYZER,
    }
    daemons = start_all(observer_daemon, configs, nats_server.url, code_review.url)
    writers = ["writer0", "writer1"]
    load = Load([daemons["edge0"], daemons["edge1"]], total)
    started = time.monotonic()
    threads = load.start()

    wait_for(
        lambda: line_count(observer_daemon.directory, writers) >= 30_000,
        timeout=60,
        interval=0.05,
        what="30 000 events written",
    )
    daemons["writer0"].kill()  # kill -9, mid-stream
    killed_at = line_count(observer_daemon.directory, ["writer0"])
    for thread in threads:
        thread.join(90)
    assert load.sent == total

    def all_written() -> bool:
        return load.acked <= set(written_ids(observer_daemon.directory, writers))

    wait_for(all_written, timeout=60, interval=0.2, what="every acknowledged event written")
    elapsed = time.monotonic() - started
    ids = written_ids(observer_daemon.directory, writers)
    duplicates = len(ids) - len(set(ids))
    assert set(ids) == load.acked
    writer1 = stats(daemons["writer1"])["instances"]["sources.bus"]

    for name in ("analyzer0", "analyzer1"):  # each saw every event once: none counted twice
        wait_for(
            lambda name=name: stats(daemons[name])["total"] == total,
            timeout=60,
            interval=0.2,
            what=f"{name} to see all events",
        )
    wait_for(
        lambda: set(escalated(code_review)) == expected_sigs(total),
        timeout=60,
        interval=0.2,
        what="every sig_hash escalated",
    )
    for name in ("analyzer0", "analyzer1"):
        daemons[name].wait_cycles(3)
    counts = escalated(code_review)
    assert set(counts.values()) == {1}, counts.most_common(3)
    report(
        "fleet 100k",
        events=total,
        acknowledged=len(load.acked),
        written=len(ids),
        duplicates=duplicates,
        writer0_lines_at_kill=killed_at,
        refused_batches=load.refused,
        sig_hashes_escalated=len(counts),
        seconds=round(elapsed, 1),
        writer1_pending=writer1.get("pending"),
    )
    # at most one part (whole messages, up to 2048 ops) written by writer0 and not acknowledged
    assert duplicates <= 2 * BATCH


def test_nats_restarted_mid_run_loses_nothing_acknowledged(
    observer_daemon, nats_server, code_review
):
    total = 30_000
    configs = {"edge0": EDGE, "edge1": EDGE, "writer0": WRITER, "analyzer0": ANALYZER}
    daemons = start_all(observer_daemon, configs, nats_server.url, code_review.url)
    load = Load([daemons["edge0"], daemons["edge1"]], total)
    threads = load.start()
    wait_for(lambda: len(load.acked) >= 10_000, timeout=60, interval=0.02, what="10 000 acks")
    nats_server.stop(signal.SIGKILL)  # kill -9; start again on the same store once the
    wait_for(lambda: load.refused >= 2, timeout=20, what="edges refusing events")  # edges refuse
    nats_server.start()
    for thread in threads:
        thread.join(120)
    assert load.sent == total

    def all_written() -> bool:
        return load.acked <= set(written_ids(observer_daemon.directory, ["writer0"]))

    wait_for(all_written, timeout=60, interval=0.2, what="every acknowledged event written")
    ids = written_ids(observer_daemon.directory, ["writer0"])
    wait_for(
        lambda: set(escalated(code_review)) == expected_sigs(total),
        timeout=60,
        interval=0.2,
        what="every sig_hash escalated",
    )
    daemons["analyzer0"].wait_cycles(3)
    assert set(escalated(code_review).values()) == {1}
    assert load.refused >= 2  # refused while NATS was down, retried by the client, not lost
    for daemon in daemons.values():  # NATS did go away under every one of them
        assert "reconnected to NATS" in daemon.logs()
    report(
        "NATS restart",
        events=total,
        acknowledged=len(load.acked),
        written=len(ids),
        duplicates=len(ids) - len(set(ids)),
        refused_batches=load.refused,
    )
