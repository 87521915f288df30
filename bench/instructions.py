"""Instructions per request on the ingest path, counted by valgrind: a figure the noise of a
shared machine does not move, for comparing two versions of the code.

    python bench/instructions.py [--rounds 200]      # needs valgrind (apt-get install valgrind)
    python bench/instructions.py --batch 100         # POST /events, 100 events each: per event

It runs the daemon's own pieces in one process, without sockets: the http source's
server parses ``POST /event`` (the benchmark's 311-byte event) on 64 connections at once,
the engine commits each round to a jsonl sink (fsync never) and the answers are
written to stub transports. Run under ``valgrind --tool=callgrind`` twice, with
``rounds`` and with none; the difference over ``64 * rounds`` is the cost of one request,
start-up left out. The syscalls a real run adds (recv, send, epoll, the write) are not
counted: this measures the Python side, which is what the code controls.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from events import batch_body, event_body

CONNECTIONS = 64
_COLLECTED = re.compile(r"Collected : (\d+)")


class _Transport:
    """Stands for a socket: counts the answers, sets ``done`` after a round's last."""

    def __init__(self, counter: dict[str, Any]) -> None:
        self._counter = counter

    def write(self, data: bytes) -> None:
        self._counter["answered"] += 1
        if self._counter["answered"] == CONNECTIONS:
            self._counter["done"].set()

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


async def _requests(rounds: int, batch: int) -> None:
    body, path = (batch_body(batch), b"/events") if batch else (event_body(), b"/event")
    request = b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" % path
    request += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    tables = '[sources.http]\nplugin = "http"\nport = 0\n'
    tables += '[sinks.ops]\nplugin = "jsonl"\npath = "ops.jsonl"\nfsync = "never"\n'
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as folder:
        # (the file is removed after: a --batch 100 run writes ~460 MB of it)
        await _serve(Path(folder), tables, request, rounds)


async def _serve(folder: Path, tables: str, request: bytes, rounds: int) -> None:
    from inproc import build_engine, component

    from observer_core import Source
    from observer_core.http._connection import Connection

    engine = build_engine(folder, tables)
    loop = asyncio.get_running_loop()
    counter: dict[str, Any] = {"answered": 0, "done": asyncio.Event()}
    async with engine.running() as inputs:
        source = component(engine, Source, "http")
        inputs.start_soon(source.run, engine.emitter)
        await asyncio.sleep(0.05)
        connections = []
        for _ in range(CONNECTIONS):
            connection = Connection(source._server._shared, loop)
            connection.connection_made(_Transport(counter))  # type: ignore[arg-type]
            connections.append(connection)
        for _ in range(rounds):
            counter["answered"] = 0
            counter["done"].clear()
            for connection in connections:
                connection.data_received(request)
            await counter["done"].wait()
        inputs.cancel_scope.cancel()


def _instructions(rounds: int, batch: int) -> int:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed: apt-get install -y valgrind")
    argv = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    argv += [sys.executable, __file__, "--inner", str(rounds), "--batch", str(batch)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    match = _COLLECTED.search(done.stderr)
    if match is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{done.stderr[-2000:]}")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="rounds of 64 requests")
    parser.add_argument(
        "--batch", type=int, default=0, help="POST /events with this many events (default: /event)"
    )
    parser.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner is not None:
        import uvloop

        uvloop.run(_requests(args.inner, args.batch))
        return 0
    rounds, batch = args.rounds, args.batch
    events = CONNECTIONS * rounds * max(batch, 1)
    per_event = (_instructions(rounds, batch) - _instructions(0, batch)) / events
    what = f"event in POST /events of {batch}" if batch else "POST /event"
    print(f"{per_event:,.0f} instructions per {what} (in process, {rounds} rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
