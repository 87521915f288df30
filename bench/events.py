"""The bodies the benchmark sends and the files it tails: ~300-byte events and ops."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

EVENT: dict[str, Any] = {
    "timestamp": "2026-11-26T10:15:30.123Z",
    "endpoint": "staffing.fill",
    "input_summary": "fill forklift operator x3 in Columbus, OH",
    "success": True,
    "duration_ms": 412,
    "output_summary": "filled 3 of 3",
    "source": "scenario",
    "sig_hash": "a3f9c2e1b7d04e55",
    "role": "forklift operator",
    "city": "Columbus",
    "state": "OH",
    "count": 3,
}
"""The one event every /event request carries (both servers get the same bytes)."""


def event_body() -> bytes:
    return json.dumps(EVENT, separators=(",", ":")).encode()


def batch_body(size: int) -> bytes:
    """``size`` events as NDJSON, each a little different (id and counts)."""
    lines = []
    for number in range(size):
        event = dict(EVENT, count=number % 7 + 1, duration_ms=100 + number, id=f"b-{number:05d}")
        lines.append(json.dumps(event, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode()


_ENDPOINTS = ("staffing.fill", "staffing.search", "hybrid.query", "sql.run", "kb.answer")
_ROLES = ("forklift operator", "picker", "welder", "driver", "nurse aide", "line cook")
_CITIES = (("Columbus", "OH"), ("Dayton", "OH"), ("Austin", "TX"), ("Reno", "NV"), ("Erie", "PA"))
_SOURCES = ("scenario", "scenario", "scenario", "langfuse", "mcp")
_ERRORS = (
    "timeout after 30s talking to ranker",
    "no candidates matched the filters",
    "upstream 502 from lakehouse",
    "schema mismatch in sql result",
)


def mixed_op(rng: random.Random, number: int) -> dict[str, Any]:
    """One op row (the ``op`` format: all required fields) of about 300 bytes."""
    success = rng.random() < 0.8
    city, state = rng.choice(_CITIES)
    role = rng.choice(_ROLES)
    count = rng.randint(1, 9)
    endpoint = rng.choice(_ENDPOINTS)
    op: dict[str, Any] = {
        "timestamp": f"2026-11-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
        f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z",
        "endpoint": endpoint,
        "input_summary": f"fill {role} x{count} in {city}, {state}",
        "success": success,
        "duration_ms": rng.randint(5, 4000),
        "output_summary": f"filled {count} of {count}" if success else "failed",
        "source": rng.choice(_SOURCES),
        "sig_hash": f"{rng.randint(0, 40):016x}",
        "role": role,
        "city": city,
        "count": count,
        "id": f"op-{number:08d}",
    }
    if not success:
        op["error"] = rng.choice(_ERRORS)
    return op


def mixed_lines(count: int, seed: int = 5) -> list[bytes]:
    rng = random.Random(seed)
    return [
        json.dumps(mixed_op(rng, number), separators=(",", ":")).encode() + b"\n"
        for number in range(count)
    ]


def tail_file(folder: Path, size: int) -> Path:
    """A file of about ``size`` bytes of mixed op lines, made once and reused."""
    path = folder / f"tail-{size}.jsonl"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    pool = mixed_lines(4096)
    block = b"".join(pool)
    partial = path.with_suffix(".part")
    written = 0
    with partial.open("wb") as out:
        while written + len(block) <= size:
            out.write(block)
            written += len(block)
        for line in pool:
            if written + len(line) > size:
                break
            out.write(line)
            written += len(line)
    partial.rename(path)
    return path
