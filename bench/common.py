"""Shared pieces of the benchmark: servers as pinned subprocesses, files, statistics."""

from __future__ import annotations

import http.client
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
LOAD_CORE = "0"
"""wrk, the constant-rate generator and py-spy run here."""
SERVER_CORE = "1"
"""The server under test (and the in-process benchmarks) run here."""
NICE = 0
"""Niceness for everything the benchmark starts (run.py --nice; below 0 needs root): a
shared machine's other work then takes less from the measured processes."""
QUIET_BELOW = 0.0
"""Before each measured point, wait until other processes use less than this % of the
machine (run.py --quiet-below; 0: do not wait)."""
QUIET_WAIT = 120.0
"""The longest such wait, in seconds."""
KEEP_AWAKE = False
"""run.py --keep-awake: a SCHED_IDLE busy loop shares SERVER_CORE with each server under
test, so the core never halts between two requests (see keep_awake)."""
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


def pinned(core: str, argv: Sequence[str]) -> list[str]:
    """``argv`` under ``taskset -c core`` when the machine has more than one core,
    and under ``nice -n NICE`` when NICE is set."""
    command = list(argv)
    if (os.cpu_count() or 1) >= 2:
        command = ["taskset", "-c", core, *command]
    if NICE:
        command = ["nice", "-n", str(NICE), *command]
    return command


def shareable(path: Path) -> str:
    """``path`` as a results file may name it: relative to the repository when inside it,
    else its name alone (beside the results, or in ``--data-dir``). Results are committed,
    and a path of the machine that ran them means nothing elsewhere (issue 25)."""
    path = Path(os.path.abspath(path))
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def shareable_command(argv: Sequence[str]) -> list[str]:
    """``argv`` of bench/run.py with every path made ``shareable``; ``--results`` and
    ``--data-dir`` outside the repository are left out, as they say only where files
    went, not what was measured."""
    dropped = ("--results", "--data-dir")
    command: list[str] = []
    args = iter(argv)
    for arg in args:
        option, equals, value = arg.partition("=")
        if option in dropped:
            value = value if equals else next(args, "")
            if Path(os.path.abspath(value)).is_relative_to(REPO):
                command += [option, shareable(Path(value))]
        elif equals and os.path.isabs(value):
            command.append(f"{option}={shareable(Path(value))}")
        else:
            command.append(shareable(Path(arg)) if os.path.isabs(arg) else arg)
    return command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """One GET to 127.0.0.1:port; raises OSError when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


class Server:
    """A server process under test: started pinned to SERVER_CORE, ready once /health is 200."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path,
        port: int,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.cwd = cwd
        self._log = (cwd / "server.log").open("wb")
        self.proc = subprocess.Popen(
            pinned(SERVER_CORE, argv),
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(self._ready, READY_TIMEOUT, f"{name} on port {port}")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            log = (self.cwd / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{log}")
        try:
            return http_get(self.port, "/health", timeout=0.5)[0] == 200
        except OSError:
            return False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def memory_kb(self, field: str = "VmHWM") -> int:
        """``VmHWM`` (peak resident set) or ``VmRSS`` of the process, in kB."""
        return proc_status_kb(self.pid, field)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def proc_status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds of reaped children (wrk runs as one)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_pressure_us() -> int | None:
    """Total µs some runnable task waited for a CPU (Linux PSI), or None without PSI."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return None
    return int(first.rsplit("total=", 1)[1])


def others_busy_pct(sample: float = 1.0) -> float:
    """How busy the machine is over ``sample`` seconds, in % of all cores (call it while
    the benchmark runs nothing: it is then other people's work)."""
    before = cpu_times()
    time.sleep(sample)
    after = cpu_times()
    total = sum(after.values()) - sum(before.values())
    idle = after["idle"] + after["iowait"] - before["idle"] - before["iowait"]
    return 100.0 * (total - idle) / total if total else 0.0


def wait_for_quiet() -> dict[str, float]:
    """Wait (up to QUIET_WAIT s) until other processes use under QUIET_BELOW % of the
    machine; return how long it waited and how busy it was when it stopped waiting."""
    if not QUIET_BELOW:
        return {}
    started = time.monotonic()
    busy = others_busy_pct()
    while busy >= QUIET_BELOW and time.monotonic() - started < QUIET_WAIT:
        busy = others_busy_pct()
    return {"waited_s": round(time.monotonic() - started, 1), "busy_before_pct": round(busy, 1)}


@contextmanager
def keep_awake() -> Iterator[int | None]:
    """While the block runs, keep SERVER_CORE busy with a ``SCHED_IDLE`` busy loop (when
    KEEP_AWAKE is set; yields its pid, else None).

    A SCHED_IDLE task runs only when nothing else wants the core, so it takes no time from
    the server; it only stops the (virtual) CPU from halting while the server waits for
    the next request. On a VM whose guest does not poll before halting, waking a halted
    vCPU costs tens of µs per request, which at c=1 is most of a request's latency.
    """
    if not KEEP_AWAKE:
        yield None
        return
    spinner = subprocess.Popen(
        pinned(SERVER_CORE, ["chrt", "--idle", "0", sys.executable, "-c", "while True: pass"])
    )
    try:
        yield spinner.pid
    finally:
        spinner.kill()
        spinner.wait()


class CpuWatch:
    """What the machine did during a measurement: the server's CPU, the load generator's,
    and everyone else's (other processes make the figures noisy)."""

    def __init__(self, pid: int, *, ours: int | None = None) -> None:
        self.pid = pid
        self.ours = ours  # the keep-awake loop: the benchmark's own, not "other" work
        self._ours = process_cpu_s(ours) if ours else 0.0
        self._system = cpu_times()
        self._pressure = cpu_pressure_us()
        self._started = time.monotonic()
        self._server = process_cpu_s(pid)
        self._children = children_cpu_s()

    def stop(self) -> dict[str, float | None]:
        system = cpu_times()
        server = process_cpu_s(self.pid) - self._server
        load = children_cpu_s() - self._children
        if self.ours:
            load += process_cpu_s(self.ours) - self._ours
        ticks = os.sysconf("SC_CLK_TCK")
        total = (sum(system.values()) - sum(self._system.values())) / ticks
        idle = system["idle"] + system["iowait"] - self._system["idle"] - self._system["iowait"]
        busy = total - idle / ticks
        pressure = cpu_pressure_us()
        waited = None
        if pressure is not None and self._pressure is not None and not self.ours:
            waited = 100 * (pressure - self._pressure) / 1e6 / (time.monotonic() - self._started)
        return {
            "cpu_pressure_pct": waited,
            "server_cpu_s": server,
            "load_cpu_s": load,
            "other_cpu_pct": max(0.0, 100 * (busy - server - load) / total) if total else 0.0,
            "steal_pct": steal_percent(self._system, system),
        }


def count_lines(path: Path) -> int:
    """Newline-terminated lines in ``path`` (0 when it does not exist)."""
    if not path.exists():
        return 0
    total = 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            total += block.count(b"\n")
    return total


def settled_lines(path: Path, quiet: float = 0.3, timeout: float = 15.0) -> int:
    """The line count once the file stopped growing for ``quiet`` seconds
    (the peer appends after it answers)."""
    deadline = time.monotonic() + timeout
    size = -1
    while True:
        current = path.stat().st_size if path.exists() else 0
        if current == size or time.monotonic() > deadline:
            return count_lines(path)
        size = current
        time.sleep(quiet)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def spread(values: Sequence[float]) -> float:
    """(max - min) / median: how far the rounds disagree."""
    if len(values) < 2:
        return 0.0
    middle = median(values)
    return (max(values) - min(values)) / middle if middle else 0.0


def cpu_times() -> dict[str, int]:
    """System-wide jiffies from /proc/stat (user, system, idle, steal...)."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return {name: int(value) for name, value in zip(names, fields, strict=False)}


def steal_percent(before: dict[str, int], after: dict[str, int]) -> float:
    """CPU time stolen by the hypervisor between two cpu_times() samples, in %."""
    total = sum(after.values()) - sum(before.values())
    return 100.0 * (after["steal"] - before["steal"]) / total if total else 0.0


def python() -> str:
    """The interpreter running the benchmark (the project's venv)."""
    return sys.executable


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_json(argv: Sequence[str], timeout: float) -> Any:
    """Run a helper that prints one JSON document on its last stdout line."""
    import json

    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
