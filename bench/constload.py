"""A constant-rate HTTP load generator (what wrk2 does; Debian ships only wrk).

    python bench/constload.py --port P --body FILE --rate 5000 --secs 600 [--conns 16]

Keep-alive connections each send POST /event on a fixed schedule (connection k sends at
t0 + k/rate + i*conns/rate); latency is measured from the scheduled time, so a stalled
server shows up in the latency instead of silently lowering the rate. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

_HEAD = (
    "POST /event HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    "Content-Length: {length}\r\n\r\n"
)


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.ok = 0
        self.non_2xx = 0
        self.errors = 0
        self.late = 0


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _connection(
    port: int, request: bytes, first: float, interval: float, end: float, tally: Tally
) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    scheduled = first
    try:
        while scheduled < end:
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -interval:
                tally.late += 1  # the previous answer came after this send was due
            writer.write(request)
            try:
                status = await asyncio.wait_for(_read_response(reader), 10)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                tally.errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                scheduled += interval
                continue
            tally.latencies.append(loop.time() - scheduled)
            if 200 <= status < 300:
                tally.ok += 1
            else:
                tally.non_2xx += 1
            scheduled += interval
    finally:
        writer.close()


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def generate(
    port: int, body: bytes, rate: float, seconds: float, conns: int
) -> dict[str, Any]:
    request = _HEAD.format(length=len(body)).encode() + body
    loop = asyncio.get_running_loop()
    tally = Tally()
    start = loop.time() + 0.2
    end = start + seconds
    interval = conns / rate
    await asyncio.gather(
        *(_connection(port, request, start + k / rate, interval, end, tally) for k in range(conns))
    )
    elapsed = loop.time() - start
    return {
        "target_rate": rate,
        "achieved_rate": tally.ok / elapsed,
        "acked": tally.ok,
        "non_2xx": tally.non_2xx,
        "errors": tally.errors,
        "late_sends": tally.late,
        "p50_ms": _percentile(tally.latencies, 0.5) * 1000,
        "p99_ms": _percentile(tally.latencies, 0.99) * 1000,
        "max_ms": max(tally.latencies, default=float("nan")) * 1000,
        "seconds": elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--secs", type=float, default=600)
    parser.add_argument("--conns", type=int, default=16)
    args = parser.parse_args(argv)
    work = generate(args.port, args.body.read_bytes(), args.rate, args.secs, args.conns)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(work)
    else:
        result = uvloop.run(work)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
