"""How fast ``observer-core replay --dry-run`` runs the three built-in analyzers.

Writes a file of ``--ops`` ops (default 1,000,000; 100 ops per second of recorded time,
so 334 cycles of 30 s): one op in ten a failure, spread over ``--signatures`` sig_hashes,
the rest successes over 20 endpoints. Then replays it once through ``diagnosis``,
``escalation`` and ``playbook`` (their defaults) with ``--dry-run``, output to a file,
and prints the ops per second, wall clock, of the whole command (start-up included)::

    .venv/bin/python bench/replay.py            # goal: >= 200,000 ops/s
    .venv/bin/python bench/replay.py --gzip     # the same file, gzip-compressed
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import SERVER_CORE, pinned

START = datetime(2026, 3, 1, tzinfo=UTC)
OPS_PER_SECOND = 100
FAILURE_EVERY = 10
ENDPOINTS = 20
GOAL = 200_000

CONFIG = """\
[observer]
cycle_secs = 30
state_dir = "state"

[analyzers.diagnosis]
[analyzers.escalation]
[analyzers.playbook]
"""


def write_ops(path: Path, count: int, signatures: int, compress: bool) -> None:
    """``count`` ops in the jsonl sink's format; every FAILURE_EVERY-th one fails."""
    opener = gzip.open if compress else open
    with opener(path, "wt", encoding="utf-8") as out:  # type: ignore[operator]
        for index in range(count):
            moment = START + timedelta(milliseconds=index * 1000 // OPS_PER_SECOND)
            stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
            op: dict[str, object] = {
                "timestamp": stamp,
                "endpoint": f"/api/{index % ENDPOINTS}",
                "input_summary": f"request {index}",
                "success": True,
                "duration_ms": index % 500,
                "output_summary": "ok",
                "source": "mcp",
            }
            if index % FAILURE_EVERY == 0:
                op.update(
                    success=False,
                    output_summary="failed",
                    error="upstream timeout",
                    sig_hash=f"sig-{(index // FAILURE_EVERY) % signatures}",
                )
            out.write(json.dumps(op, separators=(",", ":")) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1_000_000)
    parser.add_argument("--signatures", type=int, default=50)
    parser.add_argument("--gzip", action="store_true", help="replay a .gz file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as folder:
        directory = Path(folder)
        (directory / "observer.toml").write_text(CONFIG)
        ops = directory / ("ops.jsonl.gz" if args.gzip else "ops.jsonl")
        write_ops(ops, args.ops, args.signatures, args.gzip)
        command = [sys.executable, "-m", "observer_core", "replay", str(ops), "--dry-run"]
        command += ["--config", "observer.toml", "--output", "findings.jsonl"]
        started = time.perf_counter()
        result = subprocess.run(
            pinned(SERVER_CORE, command), cwd=directory, capture_output=True, text=True
        )
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            return 1
        rate = args.ops / elapsed
        print(result.stderr.strip().splitlines()[-1])
        size = ops.stat().st_size / 1e6
        print(f"{size:.0f} MB, {elapsed:.2f} s: {rate:,.0f} ops/s (goal {GOAL:,})")
        return 0 if rate >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
