"""py-spy on observer-core under wrk load: where the server's time goes.

Writes the raw collapsed stacks (open them in https://speedscope.app or flamegraph.pl)
and returns the top functions by self and by inclusive share of the samples.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from common import LOAD_CORE, log, pinned, shareable
from events import event_body
from servers import start_core
from wrk import WrkResult, run_wrk, write_script

_LINE = re.compile(r" \(([^:()]+):\d+\)$")
_IDLE_FRAMES = ("Condition.wait (threading.py", "WriterThread._wait_for_work (")
"""anyio's worker threads, and the jsonl sink's writer thread, waiting for work:
counted apart, not as server time."""


def _function(frame: str, keep_line: bool) -> str:
    """``name (file:line)`` -> ``name (file)`` unless ``keep_line``."""
    return frame if keep_line else _LINE.sub(r" (\1)", frame)


def summarize(raw: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive shares per function (and self per line) from py-spy's raw output."""
    self_fn: Counter[str] = Counter()
    self_line: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for entry in raw.read_text().splitlines():
        stack, _, count = entry.rpartition(" ")
        frames = stack.split(";")
        samples = int(count)
        if frames[-1].startswith(_IDLE_FRAMES):
            idle += samples
            continue
        total += samples
        self_fn[_function(frames[-1], False)] += samples
        self_line[frames[-1]] += samples
        for name in {_function(frame, False) for frame in frames}:
            inclusive[name] += samples

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

    return {
        "samples": total,
        "idle_worker_thread_samples": idle,
        "self_by_function": shares(self_fn),
        "self_by_line": shares(self_line),
        "inclusive_by_function": shares(inclusive),
    }


def run(
    workroot: Path,
    results: Path,
    *,
    connections: int,
    seconds: float,
    native: bool = False,
    rate: int = 200,
) -> dict[str, Any]:
    """Profile observer-core (fsync never) for ``seconds`` while wrk holds ``connections``."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    pyspy = shutil.which("py-spy", path=search)  # the venv's bin first, then PATH
    if pyspy is None:
        return {"skipped": "py-spy is not installed (pip install py-spy into the venv)"}
    workdir = workroot / "profile"
    workdir.mkdir(parents=True)
    script = write_script(workdir, "event", event_body(), "application/json")
    raw = results.with_suffix(".profile.txt")
    outcome: dict[str, WrkResult] = {}
    with start_core(workdir, "never") as server:
        url = f"http://127.0.0.1:{server.port}/event"
        load = threading.Thread(
            target=lambda: outcome.setdefault("wrk", run_wrk(url, script, connections, seconds + 3))
        )
        load.start()
        argv = [
            pyspy,
            "record",
            "--pid",
            str(server.pid),
            "--duration",
            str(round(seconds)),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(raw),
        ]
        if native:
            argv.append("--native")
        log(f"profile: py-spy on observer-core at c={connections} for {seconds:g}s")
        threading.Event().wait(1.5)
        subprocess.run(pinned(LOAD_CORE, argv), check=True, capture_output=True)
        load.join()
    summary = summarize(raw)
    summary.update(
        raw_file=shareable(raw),
        connections=connections,
        native=native,
        events_per_s_while_profiled=outcome["wrk"].acked / outcome["wrk"].duration_s,
    )
    return summary
