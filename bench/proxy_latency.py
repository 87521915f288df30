"""What the gateway source's proxy adds to each call.

    python bench/proxy_latency.py            # 3000 calls per point, 3 rounds
    python bench/proxy_latency.py --calls 500 --rounds 1

A fast local upstream (a minimal asyncio server in its own process, answering a
small JSON body) is called directly and through the proxy of a real
``observer-core run`` daemon (recording every call to a JSONL sink), over
keep-alive connections, by a tiny raw-socket client: one connection (c=1) and
16 concurrent connections (c=16). Each point runs ``--rounds`` times; the table
shows the median over rounds of each round's median and 99th percentile
per-call latency, and the added latency (proxy minus direct).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BODY = b'{"rows":[{"id":1},{"id":2},{"id":3}],"row_count":3}'
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
REQUEST = b"GET /search?q=bench HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n\r\n"
CONCURRENCY = (1, 16)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the upstream: answers every request with BODY, keep-alive -----------------------------


async def _serve_upstream(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                writer.write(RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def _upstream_main(port: int) -> None:
    _use_uvloop()
    asyncio.run(_serve_upstream(port))


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# -- the client ------------------------------------------------------------------------------


async def _worker(port: int, calls: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    clock = time.perf_counter
    try:
        for _ in range(calls):
            started = clock()
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            latencies.append(clock() - started)
    finally:
        writer.close()


async def measure(port: int, calls: int, concurrency: int) -> list[float]:
    """Per-call latencies (seconds) of ``calls`` calls over ``concurrency`` connections."""
    latencies: list[float] = []
    share = max(calls // concurrency, 1)
    await asyncio.gather(*(_worker(port, share, latencies) for _ in range(concurrency)))
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)]


# -- the daemon ------------------------------------------------------------------------------


def start_daemon(folder: Path, upstream: int, proxy: int, record: bool) -> subprocess.Popen[bytes]:
    config = folder / "observer.toml"
    config.write_text(
        f"""
[observer]
cycle_secs = 3600
state_dir = "state"

[sources.http]
port = {free_port()}

[sources.gateway]
url = "http://127.0.0.1:{upstream}"
listen = "127.0.0.1:{proxy}"
health_check = false
exclude_paths = {'["/search"]' if not record else '["/health"]'}

[sinks.ops]
plugin = "jsonl"
path = "ops.jsonl"
"""
    )
    log = open(folder / "daemon.log", "wb")  # noqa: SIM115 (kept open for the child)
    return subprocess.Popen(
        [sys.executable, "-m", "observer_core", "run", "--config", str(config)],
        cwd=folder,
        stderr=log,
        stdout=log,
    )


def wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {timeout}s")


# -- the run ---------------------------------------------------------------------------------


async def run_points(
    direct: int, proxy: int, calls: int, rounds: int
) -> dict[tuple[int, str], list[tuple[float, float]]]:
    """For each (concurrency, target): one (p50, p99) per round."""
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for concurrency in CONCURRENCY:
        for port in (direct, proxy):
            await measure(port, 200, concurrency)  # warm up: connections, caches
        for _ in range(rounds):
            for name, port in (("direct", direct), ("proxy", proxy)):
                latencies = await measure(port, calls, concurrency)
                point = (statistics.median(latencies), percentile(latencies, 0.99))
                results.setdefault((concurrency, name), []).append(point)
    return results


def table(results: dict[tuple[int, str], list[tuple[float, float]]]) -> str:
    def med(concurrency: int, name: str, index: int) -> float:
        return statistics.median(point[index] for point in results[(concurrency, name)]) * 1e6

    lines = [
        f"{'c':>3} {'direct p50':>11} {'proxy p50':>10} {'added p50':>10} "
        f"{'direct p99':>11} {'proxy p99':>10} {'added p99':>10}   (µs per call)"
    ]
    for concurrency in CONCURRENCY:
        d50, p50 = med(concurrency, "direct", 0), med(concurrency, "proxy", 0)
        d99, p99 = med(concurrency, "direct", 1), med(concurrency, "proxy", 1)
        lines.append(
            f"{concurrency:>3} {d50:>11.0f} {p50:>10.0f} {p50 - d50:>10.0f} "
            f"{d99:>11.0f} {p99:>10.0f} {p99 - d99:>10.0f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per point and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--no-record", action="store_true", help="proxy without recording (exclude the path)"
    )
    args = parser.parse_args()
    upstream_port, proxy_port = free_port(), free_port()
    upstream = multiprocessing.Process(target=_upstream_main, args=(upstream_port,), daemon=True)
    upstream.start()
    with tempfile.TemporaryDirectory() as folder:
        daemon = start_daemon(Path(folder), upstream_port, proxy_port, not args.no_record)
        try:
            wait_listening(upstream_port)
            wait_listening(proxy_port)
            _use_uvloop()
            results = asyncio.run(run_points(upstream_port, proxy_port, args.calls, args.rounds))
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
            upstream.terminate()
        ops = Path(folder) / "ops.jsonl"
        recorded = ops.read_bytes().count(b"\n") if ops.exists() else 0
    print(
        f"{args.calls} calls per point, {args.rounds} round(s), medians over rounds; "
        f"{recorded} ops recorded; cpus={os.cpu_count()}"
    )
    print(table(results))


if __name__ == "__main__":
    main()
