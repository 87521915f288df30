"""In-process benchmarks, run by run.py in a subprocess pinned to the server's core.

    python bench/inproc.py tail  WORKDIR FILE LINES   # jsonl_tail polls with a counting emit
    python bench/inproc.py cycle WORKDIR [--cycles N]  # the three analyzers over a full ring
    python bench/inproc.py path  WORKDIR [--secs S]    # decode -> engine -> jsonl sink, no HTTP

Each prints one JSON object on its last line ({"skipped": "..."} when a plugin is not ready).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
from events import batch_body, event_body, mixed_lines

from observer_core import Analyzer, EventDecoder, Op, Source
from observer_core.config import load_config
from observer_core.engine import Engine
from observer_core.plugins import load_registry

RING = 2000
ANALYZERS = ("diagnosis", "escalation", "playbook")


class NotReady(Exception):
    """A plugin the benchmark needs is missing or unfinished."""


def build_engine(workdir: Path, tables: str, *, ring: int = RING) -> Engine:
    """An Engine from a config holding ``tables`` (raises NotReady if a plugin is missing)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "observer.toml"
    path.write_text(
        f'[observer]\ncycle_secs = 86400\nring_size = {ring}\nstate_dir = "state"\n\n{tables}'
    )
    registry = load_registry()
    try:
        return Engine(load_config(path, registry))
    except Exception as exc:
        errors = "; ".join(str(error) for error in registry.errors)
        raise NotReady(f"{exc}{' (' + errors + ')' if errors else ''}") from exc


def component(engine: Engine, kind: type[Any], name: str) -> Any:
    for item in engine.instances:
        if isinstance(item.component, kind) and item.spec.name == name:
            return item.component
    raise NotReady(f"no {name} instance")


# -- tail ----------------------------------------------------------------------------------


async def tail(workdir: Path, file: Path, lines: int) -> dict[str, Any]:
    """Poll a jsonl_tail source over ``file`` until it handed on ``lines`` ops."""
    engine = build_engine(workdir, f'[sources.t]\nplugin = "jsonl_tail"\npath = "{file}"\n')
    await engine.open()
    source = component(engine, Source, "t")
    handed = 0

    async def emit(ops: Sequence[Op]) -> None:
        nonlocal handed
        handed += len(ops)

    polls = 0
    started = time.perf_counter()
    try:
        while handed < lines:
            before = handed
            await source.poll(emit)
            polls += 1
            if handed == before:
                break
        elapsed = time.perf_counter() - started
    finally:
        for item in engine.instances:
            await item.component.aclose()
    size = file.stat().st_size
    status = dict(source.ctx.status)
    if handed < lines:
        raise NotReady(f"handed on {handed} of {lines} lines; status {status}")
    return {
        "bytes": size,
        "lines": handed,
        "seconds": elapsed,
        "mb_per_s": size / elapsed / 1e6,
        "ops_per_s": handed / elapsed,
        "polls": polls,
        "skipped_lines": status.get("skipped"),
    }


# -- cycle -----------------------------------------------------------------------------------


_ANALYZER_TABLES = """\
[sinks.findings]
plugin = "jsonl"
path = "findings.jsonl"
fsync = "never"
accepts = ["diagnosis", "escalation", "playbook"]

[analyzers.diagnosis]
url = "http://127.0.0.1:9"

[analyzers.escalation]
url = "http://127.0.0.1:9"

[analyzers.playbook]
every = 1
"""


def _ops(count: int, seed: int) -> list[Op]:
    decoder = EventDecoder(require_all=True)
    return [decoder.decode(line) for line in mixed_lines(count, seed)]


def _timed(owner: Any, method: str, times: list[float]) -> None:
    """Wrap ``owner.method`` (a coroutine or plain method) to record each call's duration."""
    original = getattr(owner, method)

    def timed(*args: Any) -> Any:
        started = time.perf_counter()
        result = original(*args)
        if not inspect.isawaitable(result):
            times.append(time.perf_counter() - started)
            return result

        async def finish() -> Any:
            try:
                return await result
            finally:
                times.append(time.perf_counter() - started)

        return finish()

    setattr(owner, method, timed)


def _median_ms(values: Sequence[float]) -> float:
    return sorted(values)[len(values) // 2] * 1000 if values else 0.0


def _no_model_calls(engine: Engine, spawned: dict[str, int]) -> None:
    """Replace each analyzer's ``ctx.spawn`` with a counter: the model and code-review calls
    (and playbook's state save) run there, beside the cycle, and are left out."""
    for item in engine.instances:
        if isinstance(item.component, Analyzer):

            def spawn(
                fn: Callable[..., Awaitable[Any]],
                *args: Any,
                _name: str = item.spec.name,
                **kwargs: Any,
            ) -> None:
                spawned[_name] += 1

            item.ctx.spawn = spawn


async def cycle(workdir: Path, cycles: int, fresh_per_cycle: int) -> dict[str, Any]:
    """Time Engine.run_cycle over a full ring, the model calls replaced by a counter."""
    engine = build_engine(workdir, _ANALYZER_TABLES)
    times: dict[str, list[float]] = defaultdict(list)
    spawned: dict[str, int] = defaultdict(int)
    for name in ANALYZERS:
        _timed(component(engine, Analyzer, name), "analyze", times[name])
    _timed(engine, "publish", times["publish"])
    _timed(engine, "stats", times["stats"])
    _no_model_calls(engine, spawned)
    incoming = _ops(RING + cycles * fresh_per_cycle, seed=11)
    engine.ring.extend(incoming[:RING])
    durations = []
    async with engine.running():
        for number in range(cycles + 1):
            if number:
                start = RING + (number - 1) * fresh_per_cycle
                engine.ring.extend(incoming[start : start + fresh_per_cycle])
            started = time.perf_counter()
            await engine.run_cycle()
            durations.append(time.perf_counter() - started)
        errors = sum(engine.metrics.instance_errors.values.values())
    if errors or any(len(times[name]) != cycles + 1 for name in ANALYZERS):
        raise NotReady(f"{errors} analyzer error(s) during the cycles: see the log above")
    steady = sorted(durations[1:])
    return {
        "ring": len(engine.ring),
        "cycles": cycles,
        "fresh_ops_per_cycle": fresh_per_cycle,
        "first_ms": durations[0] * 1000,
        "median_ms": steady[len(steady) // 2] * 1000,
        "p90_ms": steady[int(len(steady) * 0.9)] * 1000,
        "max_ms": steady[-1] * 1000,
        "per_analyzer_first_ms": {name: times[name][0] * 1000 for name in ANALYZERS},
        "per_analyzer_median_ms": {name: _median_ms(times[name][1:]) for name in ANALYZERS},
        "publish_median_ms": _median_ms(times["publish"]),
        "publishes": len(times["publish"]),
        "stats_median_ms": _median_ms(times["stats"]),
        "spawns_skipped": dict(spawned),
    }


# -- the ingest path without HTTP ------------------------------------------------------------


def _rate(work: Callable[[], int], seconds: float) -> float:
    """Events per second of ``work`` (which returns the events it handled) over ``seconds``."""
    done = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        done += work()
    return done / elapsed


async def path(workdir: Path, seconds: float) -> dict[str, Any]:
    """Decode, encode, and the engine's emit into a jsonl sink: events/s on one core."""
    decoder = EventDecoder()
    single, batch = event_body(), batch_body(100)
    encoder = msgspec.json.Encoder()
    ops = decoder.decode_lines(batch)
    figures = {
        "decode_single_per_s": _rate(lambda: len([decoder.decode(single)]), seconds),
        "decode_ndjson_per_s": _rate(lambda: len(decoder.decode_lines(batch)), seconds),
        "encode_lines_per_s": _rate(lambda: len(encoder.encode_lines(ops)) and len(ops), seconds),
    }
    engine = build_engine(
        workdir, '[sinks.ops]\nplugin = "jsonl"\npath = "ops.jsonl"\nfsync = "never"\n'
    )
    async with engine.running():
        for writers, batch_size in ((1, 100), (16, 100), (16, 1)):
            key = f"emit_{writers}x{batch_size}_per_s"
            figures[key] = await _emit_rate(engine, decoder, batch, writers, batch_size, seconds)
    return figures


async def _emit_rate(
    engine: Engine, decoder: EventDecoder, batch: bytes, writers: int, size: int, seconds: float
) -> float:
    """``writers`` tasks each decoding and emitting ``size``-event bodies, as the listener does."""
    lines = batch.splitlines()[:size]
    body = b"\n".join(lines)
    done = 0
    deadline = time.perf_counter() + seconds

    async def writer() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            ops = decoder.decode_lines(body) if size > 1 else [decoder.decode(body)]
            await engine.emit(ops)
            done += len(ops)

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(writers):
            group.start_soon(writer)
    return done / (time.perf_counter() - started)


# -- command line ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("tail", "cycle", "path"):
        command = commands.add_parser(name)
        command.add_argument("workdir", type=Path)
        if name == "tail":
            command.add_argument("file", type=Path)
            command.add_argument("lines", type=int)
    commands.choices["cycle"].add_argument("--cycles", type=int, default=50)
    commands.choices["cycle"].add_argument("--fresh", type=int, default=100)
    commands.choices["path"].add_argument("--secs", type=float, default=2.0)
    args = parser.parse_args(argv)
    work: Callable[[], Awaitable[dict[str, Any]]]
    if args.command == "tail":
        work = lambda: tail(args.workdir, args.file, args.lines)  # noqa: E731
    elif args.command == "cycle":
        work = lambda: cycle(args.workdir, args.cycles, args.fresh)  # noqa: E731
    else:
        work = lambda: path(args.workdir, args.secs)  # noqa: E731
    try:
        result = anyio.run(work, backend="asyncio", backend_options={"use_uvloop": True})
    except NotReady as exc:
        result = {"skipped": str(exc)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
