"""``observer-core replay``: run analyzers over recorded ops on virtual cycles (ANALYSIS §14.1).

Ops are read from JSONL files (what the ``jsonl`` sink writes; ``.gz`` too) in the
order given, into a fresh ring, and the analyzers run on virtual cycles
(:mod:`observer_core.offline`). Findings are written as JSONL lines
``{"cycle", "at", "kind", "record"}``; by default nothing is called: each outbound
call is written as ``{"cycle", "at", "kind": "would_call", "instance", "request"}``
and answered with :data:`~observer_core.offline.DRY_RUN_REPLY`. Nothing reaches the
configured sinks or ``state_dir``, so a replay may run beside the live daemon.
"""

from __future__ import annotations

import gzip
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import httpx
import msgspec

from .config import ObserverConfig
from .ingest import EventDecoder, InvalidEvent
from .offline import (
    DRY_RUN_REPLY,
    OfflineEngine,
    ScriptedTransport,
    VirtualClock,
    VirtualCycles,
    analyzers_only,
    epoch_of,
)
from .records import Finding, Op

__all__ = ["ReplayOptions", "ReplaySummary", "read_ops", "replay"]

log = logging.getLogger("observer_core.replay")

CHUNK_BYTES = 1 << 20
"""How much of a file is read and decoded at once."""
PROGRESS_EVERY_SECS = 0.2
MAX_LOGGED_INVALID = 10
"""Invalid lines logged one by one (with file and line); the rest are only counted."""


@dataclass
class ReplayOptions:
    """What the command line asked for."""

    files: Sequence[Path]
    analyzers: Sequence[str] | None = None
    since: str | None = None
    """``--from``: ops before this timestamp (record format) are skipped."""
    until: str | None = None
    """``--to``: ops after this timestamp are skipped."""
    call_services: bool = False


@dataclass
class ReplaySummary:
    """What a replay did: the summary line's numbers."""

    ops: int = 0
    cycles: int = 0
    invalid: int = 0
    outside: int = 0
    errors: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    def line(self, bounded: bool) -> str:
        """``replay: 1000 ops read, 34 cycles, findings: escalation=2 (none: none), ...``."""
        kinds = ", ".join(f"{kind}={count}" for kind, count in sorted(self.kinds.items()))
        parts = [
            f"{self.ops} ops read",
            f"{self.cycles} cycles",
            f"findings: {kinds or 'none'}",
            f"{self.invalid} lines skipped as invalid",
        ]
        if bounded:
            parts.append(f"{self.outside} ops outside --from/--to")
        if self.errors:
            parts.append(f"{self.errors} instance errors (see the log)")
        return "replay: " + "; ".join(parts)


class _Progress:
    """A one-line progress bar on a terminal (bytes read of all the files); silent otherwise."""

    def __init__(self, total: int, stream: IO[str]) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.enabled = stream.isatty()
        self._last = 0.0

    def show(self, done: int, ops: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < PROGRESS_EVERY_SECS):
            return
        self._last = now
        share = min(done / self.total, 1.0)
        bar = "#" * int(share * 30)
        self.stream.write(f"\r[{bar:<30}] {share:4.0%} {ops} ops")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _open(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """``(lines, raw)``: the file to read lines from, and the one whose position says how
    far along it is (the compressed file, for gzip: known by its magic bytes)."""
    raw = path.open("rb")
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")), raw
    raw.seek(0)
    return raw, raw


def read_ops(
    paths: Sequence[Path],
    decoder: EventDecoder,
    summary: ReplaySummary,
    progress: _Progress | None = None,
) -> Iterator[list[Op]]:
    """The files' ops, in order, a chunk at a time; an invalid line is counted, logged
    (the first few, with file and line) and skipped."""
    done_before = 0
    for path in paths:
        lines_file, raw = _open(path)
        number = 0
        with raw, lines_file:
            while True:
                try:
                    lines = lines_file.readlines(CHUNK_BYTES)
                except (EOFError, gzip.BadGzipFile) as exc:
                    raise OSError(f"{path}: cannot read: {exc or 'truncated gzip file'}") from None
                if not lines:
                    break
                ops = decoder.decode_complete(lines)
                if ops is None:
                    ops = _decode_each(lines, decoder, path, number, summary)
                number += len(lines)
                summary.ops += len(ops)
                if progress is not None:
                    progress.show(done_before + raw.tell(), summary.ops)
                yield ops
        done_before += path.stat().st_size


def _decode_each(
    lines: list[bytes], decoder: EventDecoder, path: Path, first: int, summary: ReplaySummary
) -> list[Op]:
    ops = []
    for number, line in enumerate(lines, first + 1):
        if not line.strip():
            continue
        try:
            ops.append(decoder.decode(line))
        except InvalidEvent as exc:
            summary.invalid += 1
            if summary.invalid <= MAX_LOGGED_INVALID:
                log.warning("%s:%d: skipped: %s", path, number, exc)
    return ops


class _Writer:
    """Writes the output lines and counts them by kind."""

    def __init__(
        self, out: IO[bytes], summary: ReplaySummary, clock: VirtualClock, engine_cycle: Any
    ) -> None:
        self.out = out
        self.summary = summary
        self.clock = clock
        self.cycle = engine_cycle
        self.encode = msgspec.json.Encoder().encode

    def line(self, document: dict[str, Any]) -> None:
        self.summary.kinds[document["kind"]] += 1
        self.out.write(self.encode(document) + b"\n")

    def finding(self, finding: Finding) -> None:
        self.line(
            {
                "cycle": self.cycle(),
                "at": self.clock.timestamp(),
                "kind": finding.kind,
                "record": finding.data,
            }
        )

    def would_call(self, instance: str, request: dict[str, Any]) -> httpx.Response:
        self.line(
            {
                "cycle": self.cycle(),
                "at": self.clock.timestamp(),
                "kind": "would_call",
                "instance": instance,
                "request": request,
            }
        )
        return httpx.Response(200, json=DRY_RUN_REPLY)


async def replay(
    config: ObserverConfig,
    options: ReplayOptions,
    out: IO[bytes],
    progress_stream: IO[str] | None = None,
) -> ReplaySummary:
    """Replay ``options.files`` through ``config``'s analyzers, writing JSONL to ``out``."""
    summary = ReplaySummary()
    offline = analyzers_only(config, options.analyzers)
    clock = VirtualClock()
    engine: OfflineEngine | None = None
    writer = _Writer(out, summary, clock, lambda: engine.cycle if engine else 0)

    def transport(instance: str) -> httpx.AsyncBaseTransport | None:
        return None if options.call_services else ScriptedTransport(instance, writer.would_call)

    engine = OfflineEngine(offline, clock, transport, writer.finding)
    cycles = VirtualCycles(engine, clock, float(config.settings.cycle_secs))
    decoder = EventDecoder(max_field_bytes=config.settings.max_field_bytes, require_all=True)
    total = sum(path.stat().st_size for path in options.files)
    progress = _Progress(total, progress_stream or sys.stderr)
    batches = _bounded(read_ops(options.files, decoder, summary, progress), options, summary)
    try:
        first = next(batches, [])
        if first:  # components start at the first op's time (e.g. a rule's window)
            clock.set(epoch_of(first[0].timestamp))
        async with engine:
            await cycles.feed(first)
            for ops in batches:
                await cycles.feed(ops)
            await cycles.finish(at_least=0)
    finally:
        progress.close()
    summary.cycles = engine.cycle
    summary.errors = engine.errors()
    return summary


def _bounded(
    batches: Iterator[list[Op]], options: ReplayOptions, summary: ReplaySummary
) -> Iterator[list[Op]]:
    """The non-empty batches, without the ops outside ``--from``/``--to`` (counted)."""
    since, until = options.since, options.until
    for ops in batches:
        if since is not None or until is not None:
            kept = [op for op in ops if _within(op, since, until)]
            summary.outside += len(ops) - len(kept)
            ops = kept
        if ops:
            yield ops


def _within(op: Op, since: str | None, until: str | None) -> bool:
    stamp = op.timestamp
    return (since is None or stamp >= since) and (until is None or stamp <= until)
