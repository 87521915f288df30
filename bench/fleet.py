"""Fleet throughput on NATS JetStream: events/s with 1 and 2 consumer observers.

    python bench/fleet.py [--events 200000] [--batch 1000] [--rounds 3] [--consumers 1,2]

Each point runs on a fresh ``nats-server -js`` (loopback, store in a temp dir) and fresh
observers (``observer-core run`` subprocesses). Writers are observers with a ``nats``
source sharing the durable consumer ``writers`` and a ``jsonl`` sink (fsync "batch").

- **drain**: C writers start and are frozen (SIGSTOP); an edge (``http`` source,
  ``nats`` sink) takes N events into the stream; the writers are thawed (SIGCONT) at
  once, and the clock runs until they have written all N. What the consuming side
  sustains.
- **analyzer drain**: the same with one analyzer observer (its own durable consumer,
  ``escalation`` and ``playbook`` every cycle, no op sink) instead of the writers;
  the clock runs until its ring has taken all N (``observer_ops_received_total``).
- **end to end**: 2 edges and C writers run; a client posts N events as NDJSON
  batches of ``--batch`` from 2 threads (one per edge; a 503 is retried), and the
  clock runs from the first POST until the writers have written all N: HTTP ingest,
  JetStream publish acks, delivery, jsonl write and JetStream acks, all included.

Prints a markdown table: median events/s over ``--rounds``, and CPU µs per event of
each role (from /proc, summed over the role's processes) in the median round.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from observer_plugins.fleet.testing import NatsServer  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
READY_SECS = 30.0
DONE_SECS = 300.0

EDGE = """
[observer]
cycle_secs = 5
state_dir = "state/{name}"
[sources.http]
port = {port}
[sinks.bus]
plugin = "nats"
url = "{nats}"
"""

WRITER = """
[observer]
cycle_secs = 5
state_dir = "state/{name}"
[sources.bus]
plugin = "nats"
url = "{nats}"
durable = "writers"
[sources.status]
port = {port}
[sinks.ops]
plugin = "jsonl"
path = "out/{name}.jsonl"
"""


ANALYZER = """
[observer]
cycle_secs = 1
state_dir = "state/{name}"
[sources.bus]
plugin = "nats"
url = "{nats}"
durable = "analysis-{name}"
[sources.status]
port = {port}
[analyzers.escalation]
url = "http://127.0.0.1:9"
[analyzers.playbook]
every = 1
[sinks.findings]
plugin = "console"
enabled = false
"""


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def body(start: int, count: int) -> bytes:
    return b"".join(
        json.dumps(
            {
                "id": f"e{n}",
                "endpoint": f"/e{n % 10}",
                "input_summary": f"query {n}",
                "success": n % 10 != 0,
                "duration_ms": n % 97,
                "source": "mcp",
                **({"error": "boom", "sig_hash": f"s{n % 50}"} if n % 10 == 0 else {}),
            }
        ).encode()
        + b"\n"
        for n in range(start, start + count)
    )


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Observer:
    """One ``observer-core run`` process with an HTTP port (http or status source)."""

    def __init__(self, directory: Path, name: str, template: str, nats: str) -> None:
        self.name = name
        self._base = 0.0
        self.port = free_port()
        config = directory / f"{name}.toml"
        config.write_text(template.format(name=name, port=self.port, nats=nats))
        with open(directory / f"{name}.log", "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "observer_core", "run", "--config", str(config)],
                cwd=directory,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_SECS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    self.mark()
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {READY_SECS}s")

    def cpu_seconds(self) -> float:
        """CPU time used since :meth:`mark` (the start-up is not the work measured)."""
        return self._cpu() - self._base

    def mark(self) -> None:
        self._base = self._cpu()

    def _cpu(self) -> float:
        return cpu_of(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class MetricCounter:
    """Ops an observer took in, read from its ``/metrics``."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self.lines = 0

    def count(self) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.observer.port, timeout=5)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        self.lines = int(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("observer_ops_received_total{")
            )
        )
        return self.lines


class LineCounter:
    """Counts the lines of growing files, reading only what was appended."""

    def __init__(self, paths: list[Path]) -> None:
        self.offsets = {path: 0 for path in paths}
        self.lines = 0

    def count(self) -> int:
        for path, offset in self.offsets.items():
            if not path.exists():
                continue
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
            self.lines += data.count(b"\n")
            self.offsets[path] = offset + len(data)
        return self.lines


def post_all(port: int, bodies: list[bytes]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for data in bodies:
        while True:
            connection.request("POST", "/events", body=data)
            reply = connection.getresponse()
            reply.read()
            if reply.status == 200:
                break
            if reply.status != 503:
                raise RuntimeError(f"POST /events answered {reply.status}")
            time.sleep(0.05)


def lanes(edges: int, events: int, batch: int) -> list[list[bytes]]:
    """The request bodies, made before the clock runs: lane ``i`` takes every
    ``edges``-th batch."""
    starts = list(range(0, events, batch))
    return [
        [body(start, min(batch, events - start)) for start in starts[lane::edges]]
        for lane in range(edges)
    ]


def load(edges: list[Observer], bodies: list[list[bytes]]) -> None:
    """Post each lane of bodies to its edge, the lanes at once."""
    threads = [
        threading.Thread(target=post_all, args=(edge.port, lane))
        for edge, lane in zip(edges, bodies, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def wait_written(counter: LineCounter | MetricCounter, events: int) -> None:
    deadline = time.monotonic() + DONE_SECS
    while counter.count() < events:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {counter.lines} of {events} written")
        time.sleep(0.01)


def wait_consumers(nats: str, durable: str, waiting: int) -> None:
    """Wait until ``waiting`` observers are idle on ``durable`` (a pull request each)."""
    import asyncio

    import nats as nats_py

    async def poll() -> None:
        client = await nats_py.connect(nats)
        try:
            js = client.jetstream()
            deadline = time.monotonic() + READY_SECS
            while time.monotonic() < deadline:
                try:
                    if (await js.consumer_info("OBSERVER", durable)).num_waiting >= waiting:
                        return
                except Exception:  # not created yet
                    pass
                await asyncio.sleep(0.05)
            raise RuntimeError(f"{durable}: {waiting} consumers not waiting after {READY_SECS}s")
        finally:
            await client.close()

    asyncio.run(poll())


def signal_all(items: list[Observer], signum: int) -> None:
    for item in items:
        item.process.send_signal(signum)


def cpu_per_event(roles: dict[str, list[Observer]], events: int) -> dict[str, float]:
    return {
        role: sum(item.cpu_seconds() for item in items) / events * 1e6
        for role, items in roles.items()
    }


def one_round(mode: str, consumers: int, events: int, batch: int) -> tuple[float, dict[str, float]]:
    binary = shutil.which("nats-server")
    if binary is None:
        raise SystemExit("nats-server is not installed: bash ci/nats-server.sh install")
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as temp:
        directory = Path(temp)
        (directory / "out").mkdir()
        nats = NatsServer(binary, directory / "nats")
        nats.start()
        started: list[Observer] = []
        try:
            return _measure(mode, consumers, events, batch, directory, nats, started)
        finally:
            for item in started:
                item.stop()
            nats.stop()


def _measure(
    mode: str,
    consumers: int,
    events: int,
    batch: int,
    directory: Path,
    nats: NatsServer,
    started: list[Observer],
) -> tuple[float, dict[str, float]]:
    def spawn(name: str, template: str) -> Observer:
        item = Observer(directory, name, template, nats.url)
        started.append(item)
        return item

    drain = mode != "end to end"
    edges = [spawn(f"edge{n}", EDGE) for n in range(1 if drain else 2)]
    if mode == "analyzer drain":
        writers = [spawn("analyzer", ANALYZER)]
    else:
        writers = [spawn(f"writer{n}", WRITER) for n in range(consumers)]
    for item in edges + writers:
        item.wait_ready()
    counter: LineCounter | MetricCounter = LineCounter(
        [directory / "out" / f"writer{n}.jsonl" for n in range(consumers)]
    )
    if mode == "analyzer drain":
        counter = MetricCounter(writers[0])
    bodies = lanes(len(edges), events, batch)
    if drain:
        durable = "analysis-analyzer" if mode == "analyzer drain" else "writers"
        wait_consumers(nats.url, durable, len(writers))
        signal_all(writers, signal.SIGSTOP)
        load(edges, bodies)
        for writer in writers:
            writer.mark()
        assert nats.process is not None
        nats_cpu = cpu_of(nats.process.pid)
        begin = time.perf_counter()
        signal_all(writers, signal.SIGCONT)
    else:
        assert nats.process is not None
        nats_cpu = cpu_of(nats.process.pid)
        begin = time.perf_counter()
        load(edges, bodies)
    wait_written(counter, events)
    elapsed = time.perf_counter() - begin
    role = "analyzer" if mode == "analyzer drain" else "writers"
    roles = {role: writers} if drain else {"edges": edges, "writers": writers}
    cpu = cpu_per_event(roles, events)
    cpu["nats-server"] = (cpu_of(nats.process.pid) - nats_cpu) / events * 1e6
    return events / elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000, help="events per POST /events")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--consumers", default="1,2", help="writer counts to measure")
    parser.add_argument(
        "--modes", default="drain,analyzer drain,end to end", help="comma-separated modes"
    )
    args = parser.parse_args()
    print(
        f"{os.cpu_count()} cores; {args.events} events; batches of {args.batch}; "
        f"median of {args.rounds} rounds\n"
    )
    print("| mode | writers | events/s (median) | rounds | CPU µs/event by role |")
    print("|---|---|---|---|---|")
    for mode in args.modes.split(","):
        counts = [1] if mode == "analyzer drain" else [int(n) for n in args.consumers.split(",")]
        for consumers in counts:
            results = [
                one_round(mode, consumers, args.events, args.batch) for _ in range(args.rounds)
            ]
            rates = [rate for rate, _ in results]
            median = statistics.median(rates)
            _, cpu = min(results, key=lambda result: abs(result[0] - median))
            shown = ", ".join(f"{role} {value:.1f}" for role, value in cpu.items())
            rounds = " / ".join(f"{rate:,.0f}" for rate in rates)
            print(f"| {mode} | {consumers} | {median:,.0f} | {rounds} | {shown} |", flush=True)


if __name__ == "__main__":
    main()
