"""RSS over a long run at a steady rate (observer-core with the shipped fsync = "batch")."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from common import BENCH_DIR, LOAD_CORE, log, pinned, python, settled_lines
from events import event_body
from servers import CORE_OPS, start_core

SAMPLE_SECS = 1.0
WARMUP_FRACTION = 0.05
"""The "start" RSS is taken this far into the run (the ring fills within a second)."""
CYCLE_SECS = 5


def run(workroot: Path, *, rate: float, seconds: float, conns: int = 16) -> dict[str, Any]:
    workdir = workroot / "soak"
    workdir.mkdir(parents=True)
    body = workdir / "event.body"
    body.write_bytes(event_body())
    log(f"soak: {rate:,.0f} events/s for {seconds:g}s (cycle every {CYCLE_SECS}s, fsync batch)")
    samples: list[tuple[float, int]] = []
    with start_core(workdir, "batch", cycle_secs=CYCLE_SECS) as server:
        argv = [
            python(),
            str(BENCH_DIR / "constload.py"),
            "--port",
            str(server.port),
            "--body",
            str(body),
            "--rate",
            str(rate),
            "--secs",
            str(seconds),
            "--conns",
            str(conns),
        ]
        started = time.monotonic()
        load = subprocess.Popen(pinned(LOAD_CORE, argv), stdout=subprocess.PIPE, text=True)
        while load.poll() is None:
            samples.append((time.monotonic() - started, server.memory_kb("VmRSS")))
            time.sleep(SAMPLE_SECS)
        output = load.stdout.read() if load.stdout else ""
        written = settled_lines(workdir / CORE_OPS)
        peak_kb = server.memory_kb("VmHWM")
    if load.returncode != 0:
        raise RuntimeError(f"constload failed ({load.returncode})")
    result = json.loads(output.strip().splitlines()[-1])
    (workdir / CORE_OPS).unlink(missing_ok=True)
    start_kb = next(kb for at, kb in samples if at >= seconds * WARMUP_FRACTION)
    end_kb = samples[-1][1]
    summary = {
        **result,
        "written_lines": written,
        "missing": max(0, result["acked"] - written),
        "rss_start_mb": start_kb / 1024,
        "rss_end_mb": end_kb / 1024,
        "rss_max_mb": max(kb for _, kb in samples) / 1024,
        "rss_growth_pct": 100 * (end_kb - start_kb) / start_kb,
        "peak_rss_mb": peak_kb / 1024,
        "rss_samples_mb": [(round(at, 1), round(kb / 1024, 2)) for at, kb in samples],
    }
    log(
        f"  {summary['achieved_rate']:,.0f} events/s; RSS {summary['rss_start_mb']:.1f} ->"
        f" {summary['rss_end_mb']:.1f} MB ({summary['rss_growth_pct']:+.1f}%)"
    )
    return summary
