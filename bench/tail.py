"""jsonl_tail throughput: in-process (poll + counting emit) and in the daemon (to a jsonl sink)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    SERVER_CORE,
    count_lines,
    http_get,
    log,
    pinned,
    python,
    run_json,
    settled_lines,
    shareable,
)
from events import tail_file
from servers import CORE_OPS, start_core

MIN_RATE = 5e6
"""Bytes/s below which the daemon run is given up (a timeout, not a figure)."""


def prepared_file(folder: Path, size: int) -> tuple[Path, int]:
    """The tail input (made once, reused) and its line count (cached beside it)."""
    path = tail_file(folder, size)
    counted = path.with_suffix(".lines")
    if counted.exists():
        return path, int(counted.read_text())
    lines = count_lines(path)
    counted.write_text(str(lines))
    return path, lines


def in_process(workdir: Path, path: Path, lines: int) -> dict[str, Any]:
    argv = [python(), str(BENCH_DIR / "inproc.py"), "tail", str(workdir), str(path), str(lines)]
    return dict(run_json(pinned(SERVER_CORE, argv), timeout=60 + path.stat().st_size / MIN_RATE))


def _tail_lines(port: int) -> int:
    status, body = http_get(port, "/stats")
    if status != 200:
        return 0
    return int(json.loads(body)["instances"].get("sources.t", {}).get("lines", 0))


def in_daemon(workdir: Path, path: Path, lines: int) -> dict[str, Any]:
    """observer-core with a jsonl_tail source and a jsonl sink (fsync never), cycle 0.1 s:
    the time from ready until /stats says every line was handed on."""
    workdir.mkdir(parents=True)
    extra = f'\n[sources.t]\nplugin = "jsonl_tail"\npath = "{path}"\n'
    size = path.stat().st_size
    with start_core(workdir, "never", cycle_secs=0.1, extra=extra) as server:
        started = time.perf_counter()
        deadline = started + 60 + size / MIN_RATE
        handed = 0
        while handed < lines and time.perf_counter() < deadline:
            time.sleep(0.05)
            handed = _tail_lines(server.port)
        elapsed = time.perf_counter() - started
        written = settled_lines(workdir / CORE_OPS)
        peak_kb = server.memory_kb("VmHWM")
    if handed < lines:
        return {"skipped": f"the daemon handed on {handed} of {lines} lines in {elapsed:.0f}s"}
    (workdir / CORE_OPS).unlink(missing_ok=True)
    return {
        "bytes": size,
        "lines": lines,
        "seconds": elapsed,
        "mb_per_s": size / elapsed / 1e6,
        "ops_per_s": lines / elapsed,
        "written_lines": written,
        "peak_rss_mb": peak_kb / 1024,
    }


def run(workroot: Path, data_dir: Path, size: int) -> dict[str, Any]:
    log(f"tail: preparing a {size / 1e6:,.0f} MB file of mixed ops in {data_dir}")
    path, lines = prepared_file(data_dir, size)
    log(f"tail: in-process, {lines:,} lines")
    inside = in_process(workroot / "tail-inproc", path, lines)
    if "skipped" in inside:
        log(f"tail: skipped: {inside['skipped']}")
        return {"skipped": inside["skipped"], "file": shareable(path)}
    log(f"  {inside['mb_per_s']:.1f} MB/s; now in the daemon, to a jsonl sink")
    daemon = in_daemon(workroot / "tail-daemon", path, lines)
    log(f"  {daemon.get('mb_per_s', 0):.1f} MB/s")
    return {
        "file": shareable(path),
        "line_bytes_avg": path.stat().st_size / lines,
        "in_process": inside,
        "daemon": daemon,
    }
