"""Run the observer-core benchmark: python bench/run.py [--quick] [--only ingest,batch,...].

Parts: ingest (POST /event, peer vs observer-core), batch (POST /events, 100 per request),
path (the ingest path in-process, no HTTP), tail (jsonl_tail), cycle (the three analyzers
over a full ring), soak (RSS at a steady rate), profile (py-spy under load).
Prints a markdown report and writes bench/results/<timestamp>.json (and .md). See
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import common
import hotspots
import ingest
import report
import soak
import tail
from common import (
    BENCH_DIR,
    REPO,
    SERVER_CORE,
    cpu_times,
    log,
    others_busy_pct,
    pinned,
    python,
    run_json,
)
from common import steal_percent as steal
from servers import SERVERS, bun_version, gateway
from wrk import require_wrk

PARTS = ("ingest", "batch", "path", "tail", "cycle", "soak", "profile")
QUICK = {
    "seconds": 2,
    "warmup": 1,
    "rounds": 1,
    "tail_size": 64_000_000,
    "soak_secs": 10,
    "profile_secs": 3,
    "cycles": 10,
}


def _size(text: str) -> int:
    """``1G``, ``64M``, ``500k`` or a plain number of bytes."""
    units = {"k": 10**3, "m": 10**6, "g": 10**9}
    suffix = text[-1:].lower()
    return int(float(text[:-1]) * units[suffix]) if suffix in units else int(text)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: {', '.join(f'{k}={v}' for k, v in QUICK.items())}",
    )
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"comma-separated parts to run (default: all of {','.join(PARTS)})",
    )
    parser.add_argument("--seconds", type=float, default=10, help="wrk seconds per point")
    parser.add_argument("--warmup", type=float, default=2, help="wrk warm-up seconds per point")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per point (median)")
    parser.add_argument(
        "--connections",
        type=_ints,
        default=[1, 16, 64],
        help="wrk connections for POST /event (default 1,16,64)",
    )
    parser.add_argument(
        "--batch-connections",
        type=_ints,
        default=[16],
        help="wrk connections for POST /events (default 16)",
    )
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="contestants for POST /event (default: peer,core-never,core-batch; also "
        "core-thread: core-never writing on its writer thread)",
    )
    parser.add_argument(
        "--tail-size", type=_size, default=10**9, help="bytes of the tailed file (default 1G)"
    )
    parser.add_argument("--cycles", type=int, default=50, help="analyzer cycles to time")
    parser.add_argument("--soak-secs", type=float, default=600, help="soak duration")
    parser.add_argument("--soak-rate", type=float, default=5000, help="soak events/s")
    parser.add_argument("--profile-secs", type=float, default=10)
    parser.add_argument("--profile-connections", type=int, default=64)
    parser.add_argument(
        "--profile-native", action="store_true", help="py-spy --native (C frames too)"
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run servers and load under `nice -n N` (e.g. -10 on a shared "
        "machine; below 0 needs root)",
    )
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=0,
        help="before each wrk point, wait until other processes use less than this %% of "
        "the machine (0: never wait)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=120, help="longest such wait, seconds (default 120)"
    )
    parser.add_argument(
        "--keep-awake",
        action="store_true",
        help="run a SCHED_IDLE busy loop on the server's core during each wrk point, so "
        "the core does not halt between requests (measures the programs, not the VM's "
        "wake-up latency; CPU pressure is then not reported)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "observer-bench",
        help="where the tail input is made once and kept",
    )
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    args.only = [part for part in args.only.split(",") if part]
    unknown = set(args.only) - set(PARTS)
    if unknown:
        parser.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}")
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    return args


def _git_commit() -> str:
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--", ".") else ""
    return git("rev-parse", "--short", "HEAD") + dirty


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def meta(argv: Sequence[str]) -> dict[str, Any]:
    wrk = subprocess.run([require_wrk(), "-v"], capture_output=True, text=True)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": "python bench/run.py " + shlex.join(common.shareable_command(argv)),
        "commit": _git_commit(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "wrk": (wrk.stdout + wrk.stderr).split("Copyright")[0].strip(),
        "nice": common.NICE,
        "keep_awake": common.KEEP_AWAKE,
        "loadavg_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def _inproc(command: str, workdir: Path, *extra: str, timeout: float = 600) -> dict[str, Any]:
    argv = [python(), str(BENCH_DIR / "inproc.py"), command, str(workdir), *extra]
    return dict(run_json(pinned(SERVER_CORE, argv), timeout=timeout))


def run_parts(args: argparse.Namespace, workroot: Path, stem: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}

    def plan(connections: list[int]) -> ingest.Plan:
        return ingest.Plan(connections, args.seconds, args.warmup, args.rounds)

    with gateway() as gateway_url:
        parts: dict[str, Callable[[], dict[str, Any]]] = {
            "ingest": lambda: ingest.single_events(
                workroot / "ingest", gateway_url, plan(args.connections), args.servers.split(",")
            ),
            "batch": lambda: ingest.batches(
                workroot / "batch", gateway_url, plan(args.batch_connections)
            ),
            "path": lambda: _inproc("path", workroot / "path", "--secs", str(args.seconds / 5)),
            "tail": lambda: tail.run(workroot, args.data_dir, args.tail_size),
            "cycle": lambda: _inproc("cycle", workroot / "cycle", "--cycles", str(args.cycles)),
            "soak": lambda: soak.run(workroot, rate=args.soak_rate, seconds=args.soak_secs),
            "profile": lambda: hotspots.run(
                workroot,
                stem,
                connections=args.profile_connections,
                seconds=args.profile_secs,
                native=args.profile_native,
            ),
        }
        for name in PARTS:
            if name in args.only:
                log(f"== {name}")
                busy_before = others_busy_pct()
                results[name] = parts[name]()
                results[name]["machine_busy_before_pct"] = round(busy_before, 1)
                if "skipped" in results[name]:
                    log(f"{name} skipped: {results[name]['skipped']}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    common.NICE = args.nice
    common.QUIET_BELOW, common.QUIET_WAIT = args.quiet_below, args.quiet_wait
    common.KEEP_AWAKE = args.keep_awake
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / time.strftime("%Y%m%d-%H%M%S")
    results: dict[str, Any] = {"meta": meta(argv)}
    if "ingest" in args.only:
        results["meta"]["bun"] = bun_version()
    workroot = Path(tempfile.mkdtemp(prefix="observer-bench-run-"))
    before = cpu_times()
    started = time.monotonic()
    try:
        results.update(run_parts(args, workroot, stem))
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    after = cpu_times()
    results["meta"].update(
        loadavg_end=" ".join(Path("/proc/loadavg").read_text().split()[:3]),
        steal_pct=steal(before, after),
        seconds=time.monotonic() - started,
        other_cpu_pct=_other_cpu(results),
    )
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    markdown = report.render(results)
    stem.with_suffix(".md").write_text(markdown + "\n")
    print(markdown)
    log(f"results: {stem.with_suffix('.json')}")
    return 0


def _other_cpu(results: dict[str, Any]) -> float | None:
    """Median share of the machine other processes used during the wrk points."""
    shares = [
        point["other_cpu_pct"]
        for part in ("ingest", "batch")
        for point in results.get(part, {}).get("points", [])
    ]
    return sorted(shares)[len(shares) // 2] if shares else None


if __name__ == "__main__":
    sys.exit(main())
