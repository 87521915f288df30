"""A real attack tool against the daemon: Debian's ``slowhttptest`` (contract §11.2).

Its three slow modes run against the ingest port (the ``http`` source) and against
the gateway proxy (a ``gateway`` source with ``listen``, its gateway a stub):

- slow headers (``-H``, Slowloris): headers trickle in, a few bytes a second;
- slow body (``-B``, R-U-Dead-Yet): a complete head, then the body a few bytes a second;
- slow read (``-X``): requests for large answers, read a few bytes a second through a
  tiny TCP window.

Each attack opens ``SLOW_CONNECTIONS`` connections (well under ``max_connections``)
for at most ``ATTACK_SECS``, while a normal client keeps posting and must be served
throughout, fast. The slow connections must be closed by the daemon: slowhttptest's own
report shows them closed (``-H``, ``-B``), and the daemon's side of the slow readers is
gone while the attack still runs (``-X``: slowhttptest counts a connection as open until
it has slowly read what the daemon sent before closing, so its report cannot show it).

Without slowhttptest (``apt-get install slowhttptest``) the tests are skipped, unless
``OBSERVER_REQUIRE_SLOWHTTPTEST=1`` (CI): then they fail.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
from reliability_kit import errors_logged, record

from observer_core.testing import Daemon, DaemonFactory, StubReply, StubServer, free_port, wait_for
from plugins.sources.gateway import GatewayConfig
from plugins.sources.http import HttpConfig

SLOW_CONNECTIONS = 300
"""Connections each attack opens (max_connections stays at its default, 1024)."""
RATE = 100
"""New slow connections per second."""
ATTACK_SECS = 20
"""slowhttptest's ``-l``: the longest an attack lasts."""
TIMEOUT = 2.0
"""header_timeout_secs, body_timeout_secs, idle_timeout_secs and send_timeout_secs, where a
listener has the key (every listener has them all today)."""
DEFAULT_TIMEOUT = 10.0
"""The server's header timeout where a listener has no key for it."""
SLACK = 4.0
"""How late a slow connection may be closed past its timeout (a loaded 2-core machine)."""
MEDIAN_BOUND = 0.05
P99_BOUND = 0.25
"""The normal client's median and 99th percentile latency during an attack (seconds)."""
OTHERS = 8
"""Connections to the attacked port that are not the attack's slow ones: the normal
client's and slowhttptest's probes (one a second, each reading the whole answer, so a
few may overlap), far fewer than the attack's."""
BIG_ANSWER = 512 << 10
"""The gateway stub's answer to the slow readers: more than socket buffers hold."""


@pytest.fixture(scope="module")
def slowhttptest() -> str:
    """The path of slowhttptest; skip (or fail, in CI) without it."""
    path = shutil.which("slowhttptest")
    if path is None:
        reason = "slowhttptest is not installed (apt-get install slowhttptest)"
        if os.environ.get("OBSERVER_REQUIRE_SLOWHTTPTEST") == "1":
            pytest.fail(f"OBSERVER_REQUIRE_SLOWHTTPTEST=1 but {reason}")
        pytest.skip(reason)
    return path


_TIMEOUT_KEYS = (
    "header_timeout_secs",
    "body_timeout_secs",
    "idle_timeout_secs",
    "send_timeout_secs",
)


def timeout_lines(config: type[msgspec.Struct]) -> str:
    """TOML lines setting each slow-client timeout key ``config`` has to `TIMEOUT`."""
    fields = config.__struct_fields__
    return "\n".join(f"{name} = {TIMEOUT}" for name in _TIMEOUT_KEYS if name in fields)


def cut_after(config: type[msgspec.Struct], *, body: bool) -> float:
    """When a slow head (or, with ``body``, a slow body) must be cut off on that listener."""
    fields = config.__struct_fields__
    key = "body_timeout_secs" if body and "body_timeout_secs" in fields else "header_timeout_secs"
    return TIMEOUT if key in fields else DEFAULT_TIMEOUT


@dataclass
class Target:
    """What is attacked: a listener's port, the URLs of each attack, the normal client's."""

    name: str
    daemon: Daemon
    port: int
    slow_url: str  # for slow headers and slow body
    read_url: str  # a large answer, for slow read
    read_repeat: int  # requests pipelined per slow reader (-k)
    normal_url: str  # where the normal client posts
    config: type[msgspec.Struct]  # the listener's Config


DAEMON = """
[observer]
cycle_secs = 60
[sources.http]
port = {{port}}
{http}
{gateway}
[sinks.ops]
plugin = "jsonl"
path = "ops.jsonl"
fsync = "never"
"""


@pytest.fixture(params=["http", "gateway"])
def target(
    request: pytest.FixtureRequest,
    slowhttptest: str,  # first: skip before starting anything
    observer_daemon: DaemonFactory,
    stub_server: Any,
) -> Target:
    """A daemon whose ``http`` source, or gateway proxy (to a stub), is to be attacked."""
    if request.param == "http":
        daemon = observer_daemon.start(DAEMON.format(http=timeout_lines(HttpConfig), gateway=""))
        assert daemon.port is not None
        url = daemon.url
        # /metrics is the largest answer; 10 requests pipelined is slowhttptest's most
        return Target("http", daemon, daemon.port, f"{url}/event", f"{url}/metrics", 10,
                      f"{url}/event", HttpConfig)  # fmt: skip
    gateway: StubServer = stub_server()
    gateway.replies["/big"] = StubReply(body=b"x" * BIG_ANSWER)
    gateway.replies["/v1/chat"] = StubReply(body={"ok": True})
    port = free_port()
    proxy = f"""
[sources.gateway]
url = "{gateway.url}"
listen = "127.0.0.1:{port}"
health_check = false
{timeout_lines(GatewayConfig)}
"""
    daemon = observer_daemon.start(DAEMON.format(http="", gateway=proxy))
    url = f"http://127.0.0.1:{port}"
    return Target("gateway", daemon, port, f"{url}/v1/chat", f"{url}/big", 1, f"{url}/v1/chat",
                  GatewayConfig)  # fmt: skip


# -- the attacker ------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class Report:
    """What slowhttptest said: its exit status, the second it ended, its per-second rows."""

    exit_status: str
    ended_after: int
    rows: list[dict[str, int]]
    output: str

    @property
    def peak_connected(self) -> int:
        return max((row["Connected"] for row in self.rows), default=0)

    def service_always_available(self) -> bool:
        """Its probe connection was answered every second (a 0 here: the probe timed out)."""
        return all(row["Service Available"] > 0 for row in self.rows)


class Attack:
    """slowhttptest running in the background, its report written under ``directory``."""

    def __init__(self, tool: str, mode: str, url: str, directory: Path, *extra: str) -> None:
        self.prefix = directory / f"slowhttptest{mode}"
        command = [
            tool, mode, "-u", url, "-c", str(SLOW_CONNECTIONS), "-r", str(RATE),
            "-l", str(ATTACK_SECS), "-i", "1", "-p", "3", "-g", "-o", str(self.prefix), *extra,
        ]  # fmt: skip
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def running(self) -> bool:
        return self.process.poll() is None

    def report(self) -> Report:
        """Wait for the end (at most the attack's length and a margin), then parse it."""
        try:
            output, _ = self.process.communicate(timeout=ATTACK_SECS + 30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise AssertionError("slowhttptest ran past its own time limit") from None
        text = _ANSI.sub("", output)
        status = re.search(r"Exit status:\s*(.+)", text)
        ended = re.search(r"Test ended on (\d+)\w* second", text)
        assert status and ended, f"slowhttptest (exit {self.process.returncode}):\n{text[-2000:]}"
        lines = Path(f"{self.prefix}.csv").read_text().splitlines()
        header = lines[0].split(",")
        rows = [dict(zip(header, map(int, line.split(",")), strict=True)) for line in lines[1:]]
        return Report(status.group(1).strip(), int(ended.group(1)), rows, text)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def attacks(slowhttptest: str, tmp_path: Path) -> Iterator[list[Attack]]:
    """Start attacks with ``attacks.append(Attack(...))``; any still running is killed."""
    started: list[Attack] = []
    try:
        yield started
    finally:
        for attack in started:
            attack.stop()


# -- the normal client -------------------------------------------------------------------


@dataclass
class NormalClient:
    """Posts a small JSON body every ``interval`` on a new connection, as a script would,
    noting each latency and every answer that is not 200."""

    url: str
    interval: float = 0.02
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> NormalClient:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), "the normal client did not stop"

    def _run(self) -> None:
        url = urlsplit(self.url)
        number = 0
        while not self._stop.wait(self.interval):
            number += 1
            body = b'{"id": "normal-%d"}' % number
            started = time.monotonic()
            connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=5)
            try:
                connection.request("POST", url.path, body, {"Content-Type": "application/json"})
                reply = connection.getresponse()
                answer = reply.read()
                if reply.status != 200:
                    self.failures.append(f"{reply.status} {answer[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
            finally:
                connection.close()
            self.latencies.append(time.monotonic() - started)

    def figures(self) -> tuple[float, float]:
        """(median, 99th percentile) latency in seconds."""
        assert len(self.latencies) >= 50, f"only {len(self.latencies)} requests were made"
        return statistics.median(self.latencies), statistics.quantiles(self.latencies, n=100)[98]


def assert_served(client: NormalClient) -> tuple[float, float]:
    assert not client.failures, f"{len(client.failures)} failed, e.g. {client.failures[:3]}"
    median, p99 = client.figures()
    assert median < MEDIAN_BOUND, f"normal client's median latency {median * 1000:.0f} ms"
    assert p99 < P99_BOUND, f"normal client's p99 latency {p99 * 1000:.0f} ms"
    return median, p99


# -- the daemon's side ---------------------------------------------------------------------

_HELD_STATES = ("01", "08")  # ESTABLISHED, CLOSE_WAIT: the process still holds the socket


def held_connections(port: int) -> int:
    """Connections to ``port`` on this host the server side has not closed yet (from
    /proc/net/tcp and tcp6: the local port is the listener's, the state one it holds)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local_port = int(fields[1].rpartition(":")[2], 16)
                count += local_port == port and fields[3] in _HELD_STATES
    return count


class HeldSampler:
    """Samples `held_connections` every 50 ms in a thread; ``peak`` is the most seen."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HeldSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, held_connections(self.port))


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["-H", "-B"])
def test_slow_heads_and_bodies_are_cut_off_while_a_normal_client_is_served(
    mode: str, target: Target, attacks: list[Attack], slowhttptest: str, tmp_path: Path
) -> None:
    cut = cut_after(target.config, body=mode == "-B")
    # slow body: a POST whose Content-Length is within max_body_bytes, so it is read
    extra = ("-t", "POST", "-s", "8192") if mode == "-B" else ()
    with NormalClient(target.normal_url) as client:
        attack = Attack(slowhttptest, mode, target.slow_url, tmp_path, *extra)
        attacks.append(attack)
        report = attack.report()
    median, p99 = assert_served(client)

    assert report.peak_connected >= SLOW_CONNECTIONS // 2, report.output[-1500:]
    assert report.exit_status == "No open connections left", (
        f"slow connections still open at the time limit: {report.rows[-1]}"
    )
    latest = SLOW_CONNECTIONS / RATE + cut + SLACK
    assert report.ended_after <= latest, f"the last slow connection closed after {latest}s"
    assert report.service_always_available(), report.rows
    assert held_connections(target.port) <= OTHERS
    assert not errors_logged(target.daemon)
    record(
        "slowhttptest",
        **{
            f"{target.name}{mode}": (
                f"all {SLOW_CONNECTIONS} closed by {report.ended_after}s "
                f"(timeout {cut:g}s); normal client {len(client.latencies)} requests, "
                f"median {median * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, 0 failed"
            )
        },
    )


@pytest.mark.parametrize("mode", ["-X"])
def test_slow_readers_are_cut_off_while_a_normal_client_is_served(
    mode: str, target: Target, attacks: list[Attack], slowhttptest: str, tmp_path: Path
) -> None:
    # A tiny advertised window (-w/-y) and a few bytes read a second (-z, -n).
    extra = ("-k", str(target.read_repeat), "-w", "16", "-y", "64", "-n", "1", "-z", "16")
    with NormalClient(target.normal_url) as client, HeldSampler(target.port) as held:
        attack = Attack(slowhttptest, mode, target.read_url, tmp_path, *extra)
        attacks.append(attack)
        wait_for(
            lambda: held.peak >= SLOW_CONNECTIONS // 3,
            timeout=10,
            what="the slow readers to connect",
        )
        # send_timeout_secs (the proxy's key; the ingest port's falls back to
        # idle_timeout_secs): a reader that leaves its answer unread is cut off.
        wait_for(
            lambda: held_connections(target.port) <= OTHERS,
            timeout=ATTACK_SECS,
            what="the daemon to close the slow readers",
        )
        cut_at = time.monotonic() - attack.started
        assert attack.running(), "the slow readers were only closed when the attack ended"
        latest = SLOW_CONNECTIONS / RATE + TIMEOUT + SLACK
        assert cut_at <= latest, f"the last slow reader was closed after {cut_at:.1f}s"
        report = attack.report()
        peak = held.peak
    median, p99 = assert_served(client)
    assert report.service_always_available(), report.rows
    outcome = f"the daemon's side closed {cut_at:.1f}s into the attack"
    assert not errors_logged(target.daemon)
    record(
        "slowhttptest",
        **{
            f"{target.name}{mode}": (
                f"{peak} slow readers; {outcome}; normal client {len(client.latencies)} "
                f"requests, median {median * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, 0 failed"
            )
        },
    )
