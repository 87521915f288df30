"""Driving ``wrk`` (Debian's package) with a Lua script that POSTs one fixed body."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import LOAD_CORE, pinned

_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "{content_type}"
local f = assert(io.open([==[{body_path}]==], "rb"))
wrk.body = f:read("*a")
f:close()

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass
class WrkResult:
    """One wrk run. ``acked`` = responses that were 2xx (wrk counts status >= 400 apart)."""

    requests: int
    duration_s: float
    socket_errors: int
    non_2xx: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def acked(self) -> int:
        return self.requests - self.non_2xx

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "acked": self.acked}


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    return path


def write_script(folder: Path, name: str, body: bytes, content_type: str) -> Path:
    """Write ``body`` and a wrk script POSTing it; return the script's path."""
    body_path = folder / f"{name}.body"
    body_path.write_bytes(body)
    script = folder / f"{name}.lua"
    script.write_text(_SCRIPT.format(content_type=content_type, body_path=body_path))
    return script


def run_wrk(url: str, script: Path, connections: int, seconds: float) -> WrkResult:
    """One wrk run on LOAD_CORE, one thread; raises when wrk fails."""
    argv = [
        require_wrk(),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(
        pinned(LOAD_CORE, argv), capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("WRK_JSON ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr}")
    raw = json.loads(lines[-1].removeprefix("WRK_JSON "))
    return WrkResult(
        requests=raw["requests"],
        duration_s=raw["duration_us"] / 1e6,
        socket_errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
        non_2xx=raw["status"],
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
    )
