"""POST /event (peer vs observer-core) and POST /events batches, driven by wrk."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import CpuWatch, keep_awake, log, median, settled_lines, spread, wait_for_quiet
from events import batch_body, event_body
from servers import SERVERS, start
from wrk import run_wrk, write_script

BATCH_SIZE = 100
CLEAN_EXIT = (0, -signal.SIGTERM)
"""observer-core exits 0 on SIGTERM; Bun has no handler and dies of the signal."""


@dataclass
class Load:
    """What to send: an endpoint, a wrk script for its body, events per request."""

    path: str
    script: Path
    events_per_request: int


def measure_point(
    name: str,
    load: Load,
    connections: int,
    seconds: float,
    warmup: float,
    workdir: Path,
    gateway_url: str,
) -> dict[str, Any]:
    """Start ``name`` fresh, warm it up, run wrk once, check the file, stop it."""
    workdir.mkdir(parents=True)
    quiet = wait_for_quiet()
    with keep_awake() as spinner:
        server, ops_file = start(name, workdir, gateway_url)
        try:
            url = f"http://127.0.0.1:{server.port}{load.path}"
            if warmup > 0:
                run_wrk(url, load.script, connections, warmup)
            before = settled_lines(ops_file)
            watch = CpuWatch(server.pid, ours=spinner)
            result = run_wrk(url, load.script, connections, seconds)
            cpu = watch.stop()
            written = settled_lines(ops_file) - before
            peak_kb = server.memory_kb("VmHWM")
        finally:
            exit_code = server.stop()
    acked = result.acked * load.events_per_request
    point = {
        "server": name,
        "connections": connections,
        "events_per_s": acked / result.duration_s,
        "acked_events": acked,
        "written_lines": written,
        "missing": max(0, acked - written),
        "peak_rss_mb": peak_kb / 1024,
        "cpu_us_per_event": 1e6 * (cpu["server_cpu_s"] or 0.0) / acked if acked else None,
        **cpu,
        **quiet,
        "exit_code": exit_code,
        "wrk": result.as_dict(),
    }
    if exit_code in CLEAN_EXIT:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        log(f"{name} exited with {exit_code}: see {workdir}/server.log")
    return point


def summarize(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over rounds for each (server, connections)."""
    keys = sorted({(p["server"], p["connections"]) for p in points}, key=lambda k: (k[1], k[0]))
    rows = []
    for server, connections in keys:
        mine = [p for p in points if p["server"] == server and p["connections"] == connections]
        rates = [p["events_per_s"] for p in mine]
        rows.append(
            {
                "server": server,
                "connections": connections,
                "rounds": len(mine),
                "events_per_s": median(rates),
                "spread": spread(rates),
                "p50_ms": median([p["wrk"]["p50_ms"] for p in mine]),
                "p99_ms": median([p["wrk"]["p99_ms"] for p in mine]),
                "peak_rss_mb": median([p["peak_rss_mb"] for p in mine]),
                "cpu_us_per_event": median([p["cpu_us_per_event"] or 0.0 for p in mine]),
                "other_cpu_pct": median([p["other_cpu_pct"] for p in mine]),
                "cpu_pressure_pct": median([p["cpu_pressure_pct"] or 0.0 for p in mine]),
                "non_2xx": sum(p["wrk"]["non_2xx"] for p in mine),
                "socket_errors": sum(p["wrk"]["socket_errors"] for p in mine),
                "acked_events": sum(p["acked_events"] for p in mine),
                "missing": sum(p["missing"] for p in mine),
            }
        )
    return rows


def add_ratios(rows: list[dict[str, Any]], peer: str = "peer") -> None:
    """Each row's events/s and p99 over the peer's at the same concurrency, same run."""
    reference = {row["connections"]: row for row in rows if row["server"] == peer}
    for row in rows:
        base = reference.get(row["connections"])
        if base is not None and base["events_per_s"]:
            row["ratio"] = row["events_per_s"] / base["events_per_s"]
            row["p99_ratio"] = row["p99_ms"] / base["p99_ms"] if base["p99_ms"] else None


@dataclass
class Plan:
    """How each contestant is driven: wrk connections, seconds per point, warm-up, rounds."""

    connections: Sequence[int]
    seconds: float
    warmup: float
    rounds: int


def sweep(
    servers: Sequence[str], load: Load, plan: Plan, workroot: Path, gateway_url: str
) -> list[dict[str, Any]]:
    """Every (round, connections, server), interleaved so drift hits all servers alike."""
    points = []
    for number in range(1, plan.rounds + 1):
        for count in plan.connections:
            for name in servers:
                log(f"{load.path} round {number}/{plan.rounds}: {name} c={count}")
                workdir = workroot / f"{name}-c{count}-r{number}"
                point = measure_point(
                    name, load, count, plan.seconds, plan.warmup, workdir, gateway_url
                )
                point["round"] = number
                points.append(point)
                log(
                    f"  {point['events_per_s']:,.0f} events/s, p99 {point['wrk']['p99_ms']:.2f} ms,"
                    f" missing {point['missing']}"
                )
    return points


def compare(
    workroot: Path,
    gateway_url: str,
    plan: Plan,
    servers: Sequence[str],
    load: tuple[str, bytes, str, int],
) -> dict[str, Any]:
    """Drive ``servers`` with ``load`` = (path, body, content type, events per request)."""
    path, body, content_type, per_request = load
    workroot.mkdir(parents=True, exist_ok=True)
    script = write_script(workroot, path.strip("/"), body, content_type)
    points = sweep(servers, Load(path, script, per_request), plan, workroot, gateway_url)
    rows = summarize(points)
    add_ratios(rows)
    return {"body_bytes": len(body), "summary": rows, "points": points}


def single_events(
    workroot: Path, gateway_url: str, plan: Plan, servers: Sequence[str] = SERVERS
) -> dict[str, Any]:
    """POST /event, one event per request: the peer against observer-core."""
    load = ("/event", event_body(), "application/json", 1)
    return compare(workroot, gateway_url, plan, servers, load)


def batches(
    workroot: Path,
    gateway_url: str,
    plan: Plan,
    servers: Sequence[str] = ("core-never", "core-batch"),
) -> dict[str, Any]:
    """POST /events with BATCH_SIZE NDJSON events per request (observer-core only)."""
    load = ("/events", batch_body(BATCH_SIZE), "application/x-ndjson", BATCH_SIZE)
    return {"batch_size": BATCH_SIZE, **compare(workroot, gateway_url, plan, servers, load)}
