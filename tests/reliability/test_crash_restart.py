"""kill -9 under load, again and again: nothing acknowledged is lost, no state is torn.

One daemon runs the whole pipeline (http and jsonl_tail sources, jsonl sinks for ops
and escalations, the gateway_log sink, the escalation and playbook analyzers) against
a flapping stub gateway and a stub code-review service, while client threads post a
steady stream of events and a writer appends to the tailed file. It is killed with
SIGKILL ``OBSERVER_KILLS`` times (default 5) and restarted on the same files each time.

What holds (CONTRACT §6, §7; docs/reliability.md):
- every acknowledged event is in ops.jsonl; an event appears twice only when the
  client sent it again because its first attempt got no answer (at least once);
- every line appended to the tailed file reaches ops.jsonl (at least once: the
  lines read between the last cursor save and the kill are read again);
- a sig_hash saved as escalated before a kill is never escalated after it;
- every /log entry spooled at a kill is delivered after it, in spool order;
- a torn last line in a sink or spool file is cut at start, not crash-looped on.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from reliability_kit import EventPump, errors_logged, id_counts, read_jsonl, record

from observer_core.testing import DaemonFactory, RecordedRequest, StubReply, StubServer, wait_for

KILLS = int(os.environ.get("OBSERVER_KILLS") or "5")
RATE = 3000.0
"""Events per second the clients post."""
CLUSTER_EVERY = 50
"""One batch in this many is a cluster of failures sharing a sig_hash (escalated once)."""
TORN_AT_KILL = 2

CONFIG = """
[observer]
cycle_secs = 0.2
state_dir = "state"
[sources.http]
port = {port}
[sources.tail]
plugin = "jsonl_tail"
path = "in/tail.jsonl"
format = "op"
[sinks.ops]
plugin = "jsonl"
path = "out/ops.jsonl"
[sinks.escalations]
plugin = "jsonl"
path = "out/escalations.jsonl"
accepts = ["escalation"]
[sinks.gw]
plugin = "gateway_log"
url = "GATEWAY"
accepts = ["playbook"]
[analyzers.escalation]
url = "REVIEW"
[analyzers.playbook]
every = 1
min_successes = 1
min_group = 1
"""


def event(ident: str) -> dict[str, Any]:
    """A success at /load (its id in the input summary, so playbook entries are unique),
    or, for one batch in CLUSTER_EVERY, a failure of that batch's cluster."""
    client, number = ident.split("-")
    batch = int(number) // 10
    if batch % CLUSTER_EVERY == CLUSTER_EVERY - 1:
        return {"id": ident, "success": False, "error": "e", "sig_hash": f"{client}-{batch}"}
    return {"id": ident, "endpoint": "/load", "input_summary": f"id {ident}", "success": True}


class TailWriter:
    """Appends op rows ``t-N`` to the tailed file, some of them in two writes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TailWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with open(self.path, "ab", buffering=0) as out:
            while not self._stop.is_set():
                row = {
                    "timestamp": "2026-01-01T00:00:00.000Z",
                    "endpoint": "/tail",
                    "input_summary": f"tailed {self.written}",  # keeps /log entries unique
                    "success": True,
                    "duration_ms": 1,
                    "output_summary": "ok",
                    "source": "tail",
                    "id": f"t-{self.written}",
                }
                line = json.dumps(row).encode() + b"\n"
                if self.written % 7 == 0:  # a half line now, the rest a moment later
                    out.write(line[:20])
                    time.sleep(0.003)
                    line = line[20:]
                out.write(line)
                self.written += 1
                time.sleep(0.005)


class Gateway:
    """A stub gateway whose /log fails (503) a third of the time; it keeps what it took."""

    def __init__(self, server: StubServer) -> None:
        self.server = server
        self.delivered: list[str] = []
        self.healthy = False
        server.replies["/log"] = self._answer

    def _answer(self, request: RecordedRequest) -> StubReply:
        if not self.healthy and int(time.monotonic() / 0.7) % 3 == 0:
            return StubReply(status=503, body={"error": "flapping"})
        self.delivered.append(entry_key(request.json()))
        return StubReply()


def entry_key(entry: dict[str, str]) -> str:
    """A /log entry as one string (its approach names the last ops, so it is unique)."""
    return json.dumps(entry, sort_keys=True)


def saved_escalations(directory: Path) -> set[str]:
    path = directory / "state" / "analyzers.escalation" / "escalated.json"
    if not path.exists():
        return set()
    saved = json.loads(path.read_bytes())  # never torn: written atomically
    return {sig for sig, row in saved.items() if row.get("escalated_at") is not None}


def spooled(directory: Path) -> list[str]:
    """The /log entries queued in the spool journal, in queue order."""
    pending: dict[int, str] = {}
    path = directory / "state" / "sinks.gw" / "spool.jsonl"
    for line in read_jsonl(path):
        if "entry" in line:
            pending[line["seq"]] = entry_key(line["entry"])
        elif line.get("done"):
            pending.pop(line["seq"], None)
    return [pending[seq] for seq in sorted(pending)]


def tear(directory: Path) -> None:
    """Leave half a line at the end of each append-only file, as a crash mid-write would."""
    for name in ("out/ops.jsonl", "out/escalations.jsonl", "state/sinks.gw/spool.jsonl"):
        with open(directory / name, "ab") as out:
            out.write(b'{"seq": 123456, "entry": {"operation": "torn')


def review_sig(request: RecordedRequest) -> str:
    return str(request.json()["input"].split(" ", 1)[0].removeprefix("sig_hash="))


@pytest.mark.slow
def test_kill_9_under_load_loses_nothing_acknowledged(
    observer_daemon: DaemonFactory, stub_server: Any
) -> None:
    gateway = Gateway(stub_server())
    review = stub_server()
    review.default = StubReply(body={"run_id": "r"})
    config = CONFIG.replace("GATEWAY", gateway.server.url).replace("REVIEW", review.url)
    daemon = observer_daemon.start(config)
    directory = daemon.directory
    port = daemon.port
    assert port is not None
    saved_at_kill: list[tuple[int, set[str]]] = []
    spooled_at_kill: list[list[str]] = []
    rng = random.Random(6)
    started = time.monotonic()
    with (
        EventPump(lambda: port, event, rate=RATE) as pump,
        TailWriter(directory / "in/tail.jsonl") as tail,
    ):
        for kill in range(KILLS):
            time.sleep(rng.uniform(0.8, 1.6))
            daemon.kill()
            saved_at_kill.append((len(review.requests), saved_escalations(directory)))
            spooled_at_kill.append(spooled(directory))
            if kill == TORN_AT_KILL:
                tear(directory)
            daemon = observer_daemon.start(config, port=port)
        time.sleep(1.0)
    loaded_secs = time.monotonic() - started

    gateway.healthy = True
    wait_for(
        lambda: (
            id_counts(directory / "out/ops.jsonl").keys() >= {f"t-{n}" for n in range(tail.written)}
        ),
        timeout=20,
        what="every tailed line in ops.jsonl",
    )
    wait_for(
        lambda: daemon.metric("observer_sink_queue_depth", instance="sinks.gw") == 0,
        timeout=30,
        what="the /log backlog to drain",
    )
    assert daemon.stop() == 0
    written = id_counts(directory / "out/ops.jsonl")

    # Acknowledged events: all there; twice only when the client sent them twice.
    missing = pump.acked - written.keys()
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"
    posted = {ident for ident in written if not ident.startswith("t-")}
    duplicated = {ident for ident in posted if written[ident] > 1}
    assert duplicated <= pump.retried, "an event sent once was written twice"
    assert max((written[ident] for ident in posted), default=1) <= 2 + KILLS

    # Tailed lines: all there, at least once.
    tail_lines = Counter({ident: n for ident, n in written.items() if ident.startswith("t-")})
    assert len(tail_lines) == tail.written
    reread = sum(tail_lines.values()) - len(tail_lines)

    # Escalations: the saved set only grows, and nothing saved is escalated again.
    escalated_sets = [saved for _, saved in saved_at_kill]
    for earlier, later in itertools.pairwise(escalated_sets):
        assert earlier <= later, "the escalated set lost entries across a restart"
    for at, saved in saved_at_kill:
        again = {review_sig(request) for request in review.requests[at:]} & saved
        assert not again, f"re-escalated after a restart: {sorted(again)}"
    calls = Counter(review_sig(request) for request in review.requests)
    rows = Counter(row["sig_hash"] for row in read_jsonl(directory / "out/escalations.jsonl"))
    assert set(rows) <= set(calls)

    # The /log spool: everything spooled at a kill is delivered afterwards, in order.
    first_delivery: dict[str, int] = {}
    for position, key in enumerate(gateway.delivered):
        first_delivery.setdefault(key, position)
    for entries in spooled_at_kill:
        lost = [entry for entry in entries if entry not in first_delivery]
        assert not lost, f"{len(lost)} spooled /log entries never delivered"
        order = [first_delivery[entry] for entry in entries]
        assert order == sorted(order), "spooled /log entries delivered out of order"

    # Torn lines were cut at start, and nothing crashed.
    logs = "\n".join(started_daemon.logs() for started_daemon in observer_daemon.started)
    assert logs.count("torn last line") >= 3, "a torn line was not repaired at start"
    assert not [line for d in observer_daemon.started for line in errors_logged(d)]

    record(
        "crash_restart",
        kills=KILLS,
        seconds_under_load=round(loaded_secs, 1),
        events_acked=len(pump.acked),
        events_written=sum(written[ident] for ident in posted),
        events_lost=len(missing),
        events_duplicated=len(duplicated),
        events_retried_by_client=len(pump.retried),
        tail_lines=tail.written,
        tail_lines_read_twice=reread,
        escalations=len(rows),
        escalation_calls_repeated=sum(n - 1 for n in calls.values() if n > 1),
        log_entries_delivered=len(first_delivery),
        log_entries_redelivered=len(gateway.delivered) - len(first_delivery),
        log_entries_spooled_at_kills=sum(map(len, spooled_at_kill)),
    )


TORN_LINE = b'{"seq": 7, "entry": {"operation": "half a li'
DAMAGE = {
    # file (relative to the config's folder): (bytes left in it, what the log must say)
    "ops-torn": ("out/ops.jsonl", b'{"id": "kept"}\n' + TORN_LINE, "torn last line"),
    "escalations-torn": ("out/escalations.jsonl", b"{}\n" + TORN_LINE, "torn last line"),
    "spool-torn": ("state/sinks.gw/spool.jsonl", TORN_LINE, "torn last line"),
    "spool-garbage-line": ("state/sinks.gw/spool.jsonl", b"garbage\n", "line 1 skipped"),
    "cursor-torn": ("state/sources.tail/cursor.json", b'{"path": "in/ta', "could not be read"),
    "escalated-torn": (
        "state/analyzers.escalation/escalated.json",
        b'{"a": {"attempts"',
        "could not be read",
    ),
    "playbook-empty": ("state/analyzers.playbook/emitted.json", b"", "could not be read"),
    "atomic-write-leftover": ("state/sources.tail/.cursor.json.tmp", b'{"pa', "running"),
    "dead-letter-torn": ("state/sinks.gw/dead_letter.jsonl", TORN_LINE, "running"),
}


@pytest.mark.parametrize("case", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_state_or_sink_file_is_repaired_at_start(
    observer_daemon: DaemonFactory, stub_server: Any, case: str
) -> None:
    name, content, said = DAMAGE[case]
    path = observer_daemon.directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    config = CONFIG.replace("GATEWAY", stub_server().url).replace("REVIEW", stub_server().url)
    daemon = observer_daemon.start(config)  # ready: it neither exited nor crash-looped
    daemon.post_events([{"id": "after"}])
    daemon.wait_cycles(2)
    assert said in daemon.logs()
    assert daemon.stop() == 0
    assert "after" in id_counts(observer_daemon.directory / "out/ops.jsonl")
    if name.endswith(".jsonl") and "dead_letter" not in name:
        assert path.read_bytes().endswith(b"\n") or path.read_bytes() == b""
    if said == "could not be read":  # moved aside for a human to look at, not lost
        assert path.with_name(path.name + ".corrupt").read_bytes() == content
    assert not errors_logged(daemon)


def test_a_dead_letter_after_a_torn_one_is_a_line_of_its_own(
    observer_daemon: DaemonFactory, stub_server: Any
) -> None:
    dead = observer_daemon.directory / "state/sinks.gw/dead_letter.jsonl"
    dead.parent.mkdir(parents=True)
    dead.write_bytes(b'{"ts": "2026-01-01T00:00:00.000Z", "attempts": 1, "entry": {"oper')
    gateway = stub_server()
    gateway.default = StubReply(status=500, body={"error": "down"})
    config = CONFIG.replace("GATEWAY", gateway.url).replace("REVIEW", stub_server().url)
    daemon = observer_daemon.start(
        config.replace('accepts = ["playbook"]', 'accepts = ["playbook"]\nmax_attempts = 1')
    )
    daemon.post_events([{"endpoint": "/ok", "input_summary": "fine", "success": True}])
    wait_for(lambda: dead.read_bytes().count(b"\n") >= 1, what="a dead letter")
    assert daemon.stop() == 0
    *_, last = dead.read_bytes().splitlines()
    assert json.loads(last)["entry"]["context"] == "endpoint=/ok"
