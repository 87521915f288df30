"""The ``gateway_log`` sink: POST each log entry (diagnosis, playbook) to ``{url}/log``.

``write()`` only queues: every entry is first appended to a spool file under
``state_dir`` (``spool.jsonl``, written off the event loop), so a restart or a
``kill -9`` keeps it; a background task (``Sink.run``) delivers the queue in
order. While the gateway is unreachable, or answers 408, 429 or 5xx, the head
entry is retried with exponential backoff and jitter; any other 4xx is logged
with the entry and dropped. An entry whose delivery failed ``max_attempts``
times (an answer of 408/429/5xx, a timeout or a dropped connection; a refused
connection means the gateway is down and does not count against the entry)
goes to ``dead_letter.jsonl``. Past ``queue_max`` entries the oldest are
dropped and counted in ``observer_sink_dropped_total{instance}``; the queue
depth is ``observer_sink_queue_depth{instance}``. At shutdown (and at the end of
``--once``) ``flush()`` tries to deliver what is queued, for a few seconds.
"""

from __future__ import annotations

import os
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import anyio
import httpx
import msgspec

from observer_core import (
    Context,
    Finding,
    LogEntry,
    Record,
    RegisterSink,
    Sink,
    SinkConfig,
    StateStore,
    hookimpl,
    now_timestamp,
)
from observer_core.redact import redact_text

__all__ = ["GatewayLogConfig", "GatewayLogSink"]

SPOOL_FILE = "spool.jsonl"
DEAD_LETTER_FILE = "dead_letter.jsonl"
BACKOFF_BASE_SECS = 0.5
BACKOFF_MAX_SECS = 30.0
FLUSH_SECS = 5.0
"""How long ``flush()`` keeps delivering at shutdown; the rest stays spooled."""
SEND_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
COMPACT_SLACK = 1000
"""Journal lines beyond twice the queue that make the spool worth rewriting."""
_RETRIED_STATUSES = frozenset({408, 429})


class GatewayLogConfig(SinkConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[sinks.NAME]`` with ``plugin = "gateway_log"``."""

    url: str = "http://localhost:3700"
    queue_max: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 10000
    """Entries kept waiting; past it the oldest are dropped (and counted)."""
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    accepts: list[str] = msgspec.field(default_factory=lambda: ["diagnosis", "playbook"])


class _Line(msgspec.Struct, omit_defaults=True):
    """One spool journal line: an entry queued, its attempt count, or its end."""

    seq: int
    entry: LogEntry | None = None
    attempts: int | None = None
    done: bool = False


@dataclass(slots=True)
class _Queued:
    seq: int
    entry: LogEntry
    attempts: int = 0


class _Retry(Exception):
    """Delivery failed for now; ``counts`` when it counts against the entry's attempts."""

    def __init__(self, detail: str, *, counts: bool) -> None:
        super().__init__(detail)
        self.counts = counts


class _Rejected(Exception):
    """The gateway refused the entry for good (a 4xx other than 408/429)."""


_encode = msgspec.json.Encoder().encode
_decode_line = msgspec.json.Decoder(_Line).decode


class _Spool:
    """The append-only journal of the queue, a private file in the instance's state
    folder. Its methods block: call them in a thread."""

    def __init__(self, state: StateStore, logger: Any) -> None:
        self._state = state
        self.path = state.path(SPOOL_FILE)
        self._logger = logger
        self._fd = -1
        self.lines = 0

    def replay(self) -> list[_Queued]:
        """Open the journal (repairing a torn last line) and return the queue it holds."""
        self._fd = self._state.open(SPOOL_FILE, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        with open(self._fd, "rb", closefd=False) as handle:
            data = handle.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            self._logger.warning(
                "%s: removed a torn last line (%d bytes) left by a crash",
                self.path,
                len(data) - end,
            )
            os.ftruncate(self._fd, end)
        pending: dict[int, _Queued] = {}
        for number, raw in enumerate(data[:end].splitlines(), 1):
            try:
                line = _decode_line(raw)
            except msgspec.DecodeError as exc:
                self._logger.warning("%s line %d skipped: %s", self.path, number, exc)
                continue
            _apply(pending, line)
        self.lines = data.count(b"\n", 0, end)
        return list(pending.values())

    def append(self, lines: Sequence[_Line], *, sync: bool = False) -> None:
        data = b"".join(_encode(line) + b"\n" for line in lines)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        if sync:
            os.fdatasync(self._fd)
        self.lines += len(lines)

    def rewrite(self, queue: Sequence[_Queued]) -> None:
        """Replace the journal by one line per queued entry (atomically)."""
        lines = [_Line(item.seq, item.entry, item.attempts or None) for item in queue]
        self._state.write_bytes(SPOOL_FILE, b"".join(_encode(line) + b"\n" for line in lines))
        old, self._fd = self._fd, self._state.open(SPOOL_FILE, os.O_RDWR | os.O_APPEND)
        os.close(old)
        self.lines = len(lines)

    def clear(self) -> None:
        """Empty the journal: nothing is queued any more."""
        os.ftruncate(self._fd, 0)
        self.lines = 0

    def sync(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


def _apply(pending: dict[int, _Queued], line: _Line) -> None:
    if line.entry is not None:
        pending[line.seq] = _Queued(line.seq, line.entry, line.attempts or 0)
    elif line.done:
        pending.pop(line.seq, None)
    elif line.attempts is not None and line.seq in pending:
        pending[line.seq].attempts = line.attempts


def _append_dead_letter(state: StateStore, row: bytes) -> None:
    fd = state.open(DEAD_LETTER_FILE, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    with open(fd, "a+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":  # a row torn by a crash keeps a line of its own
                row = b"\n" + row
        handle.write(row)
        handle.flush()
        os.fsync(handle.fileno())


def _backoff(failures: int) -> float:
    """Exponential backoff with jitter: about 0.5 s, 1 s, 2 s, ... up to 30 s."""
    ceiling = min(BACKOFF_MAX_SECS, BACKOFF_BASE_SECS * 2.0 ** min(failures - 1, 16))
    return ceiling * random.uniform(0.5, 1.0)


class GatewayLogSink(Sink):
    """Delivers log entries to the gateway's ``/log``, in order, from a persistent queue."""

    name: ClassVar[str] = "gateway_log"
    Config = GatewayLogConfig
    config: GatewayLogConfig

    def __init__(self, config: GatewayLogConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._url = config.url.rstrip("/") + "/log"
        self._spool = _Spool(ctx.state, ctx.logger)
        self._dead_letter = ctx.state.path(DEAD_LETTER_FILE)
        self._queue: deque[_Queued] = deque()
        self._next_seq = 0
        self._journal = anyio.Lock()
        self._sending = anyio.Lock()
        self._wake = anyio.Event()
        self._failures = 0
        """Failed attempts in a row: the backoff exponent."""
        self._client: httpx.AsyncClient | None = None
        metrics = ctx.metrics
        self._dropped = metrics.counter(
            "observer_sink_dropped_total", "Records a sink dropped because its queue was full."
        )
        self._delivered = metrics.counter(
            "observer_gateway_log_delivered_total", "Log entries the gateway accepted."
        )
        self._rejected = metrics.counter(
            "observer_gateway_log_rejected_total", "Log entries the gateway refused with a 4xx."
        )
        self._dead = metrics.counter(
            "observer_gateway_log_dead_lettered_total",
            "Log entries moved to the dead-letter file after max_attempts failures.",
        )
        self._retries = metrics.counter(
            "observer_gateway_log_failed_attempts_total", "Deliveries that failed and wait a retry."
        )

    @classmethod
    def validate_config(cls, config: Any, registry: object) -> None:
        if not config.url.startswith(("http://", "https://")):
            raise ValueError(f"url: expected an http:// or https:// URL, got {config.url!r}")
        wrong = [kind for kind in config.accepts if kind in ("op", "escalation")]
        if wrong:
            raise ValueError(
                f"accepts: gateway_log posts log entries (diagnosis, playbook); "
                f"it cannot take {wrong[0]!r} records"
            )

    # -- lifecycle ----------------------------------------------------------

    async def open(self) -> None:
        queued = await anyio.to_thread.run_sync(self._spool.replay)
        self._next_seq = max((item.seq for item in queued), default=-1) + 1
        self._queue.extend(queued)
        await self._enforce_bound()
        if self._queue:
            self.ctx.logger.info("%d log entries left from the last run", len(self._queue))
            self._wake.set()
        self._client = httpx.AsyncClient(timeout=SEND_TIMEOUT)
        self.ctx.status["url"] = self._url
        self._report()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        async with self._journal:
            await anyio.to_thread.run_sync(self._spool.close)

    def queue_depth(self) -> int:
        return len(self._queue)

    # -- queueing -----------------------------------------------------------

    async def write(self, records: Sequence[Record]) -> None:
        """Spool the entries (durably), then queue them for delivery."""
        entries = [entry for entry in map(self._entry, records) if entry is not None]
        if not entries:
            return
        async with self._journal:
            first, self._next_seq = self._next_seq, self._next_seq + len(entries)
            items = [_Queued(seq, entry) for seq, entry in enumerate(entries, first)]
            lines = [_Line(item.seq, item.entry) for item in items]
            await anyio.to_thread.run_sync(lambda: self._spool.append(lines, sync=True))
        self._queue.extend(items)
        await self._enforce_bound()
        self._wake.set()
        self._report()

    def _entry(self, record: Record) -> LogEntry | None:
        data = record.data if isinstance(record, Finding) else record
        if isinstance(data, LogEntry):
            return data
        try:
            return msgspec.convert(data, LogEntry)
        except msgspec.ValidationError as exc:
            self.ctx.error("not a log entry, skipped (%s): %r", exc, data)
            return None

    async def _enforce_bound(self) -> None:
        excess = len(self._queue) - self.config.queue_max
        if excess <= 0:
            return
        dropped = [self._queue.popleft() for _ in range(excess)]
        self._dropped.inc(excess, instance=self.ctx.instance)
        self.ctx.logger.warning(
            "queue full (%d entries): dropped the %d oldest", self.config.queue_max, excess
        )
        await self._journal_lines([_Line(item.seq, done=True) for item in dropped])

    async def _journal_lines(self, lines: list[_Line]) -> None:
        async with self._journal:
            await anyio.to_thread.run_sync(self._spool.append, lines)
            if not self._queue:
                await anyio.to_thread.run_sync(self._spool.clear)
            elif self._spool.lines > 2 * len(self._queue) + COMPACT_SLACK:
                await anyio.to_thread.run_sync(self._spool.rewrite, list(self._queue))

    # -- delivery -----------------------------------------------------------

    async def run(self) -> None:
        """Deliver the queue in order until cancelled, backing off after failures."""
        while True:
            while not self._queue:
                await self._wake.wait()
                self._wake = anyio.Event()
            if not await self._attempt_head():
                await anyio.sleep(_backoff(self._failures))

    async def flush(self) -> None:
        """Deliver what is queued until done, a failure, or ``FLUSH_SECS``; sync the spool."""
        with anyio.move_on_after(FLUSH_SECS):
            while self._queue and await self._attempt_head():
                pass
        async with self._journal:
            await anyio.to_thread.run_sync(self._spool.sync)

    async def _attempt_head(self) -> bool:
        """Try the oldest entry once; False when it must be retried later."""
        async with self._sending:
            if not self._queue:
                return True
            item = self._queue[0]
            try:
                await self._send(item.entry)
            except _Retry as exc:
                await self._retry_later(item, exc)
                return False
            except _Rejected as exc:
                self._rejected.inc(instance=self.ctx.instance)
                self.ctx.error("gateway refused a log entry (%s), dropped: %s", exc, _show(item))
            else:
                self._delivered.inc(instance=self.ctx.instance)
                self._healthy(True, "")
            self._failures = 0
            await self._finish(item)
            return True

    async def _send(self, entry: LogEntry) -> None:
        assert self._client is not None, "open() was not called"
        try:
            response = await self._client.post(
                self._url, content=_encode(entry), headers={"Content-Type": "application/json"}
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Retry(f"gateway unreachable: {exc}", counts=False) from None
        except httpx.HTTPError as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}", counts=True) from None
        status = response.status_code
        if response.is_success:
            return
        detail = f"HTTP {status}: {response.text[:200]!r}"
        if status in _RETRIED_STATUSES or status >= 500:
            raise _Retry(detail, counts=True)
        raise _Rejected(detail)

    async def _retry_later(self, item: _Queued, exc: _Retry) -> None:
        self._failures += 1
        self._retries.inc(instance=self.ctx.instance)
        self._healthy(False, str(exc))
        if not exc.counts:
            self.ctx.logger.warning("%s; %d entries wait", exc, len(self._queue))
            return
        item.attempts += 1
        if item.attempts < self.config.max_attempts:
            self.ctx.logger.warning(
                "delivery failed (%s); attempt %d of %d",
                exc,
                item.attempts,
                self.config.max_attempts,
            )
            await self._journal_lines([_Line(item.seq, attempts=item.attempts)])
            return
        row = {"ts": now_timestamp(), "attempts": item.attempts, "error": redact_text(str(exc))}
        data = _encode({**row, "entry": item.entry}) + b"\n"
        await anyio.to_thread.run_sync(_append_dead_letter, self.ctx.state, data)
        self._dead.inc(instance=self.ctx.instance)
        self.ctx.error(
            "log entry failed %d times (%s); moved to %s: %s",
            item.attempts,
            exc,
            self._dead_letter,
            _show(item),
        )
        await self._finish(item)

    async def _finish(self, item: _Queued) -> None:
        """Take ``item`` off the queue (unless the bound already dropped it)."""
        if self._queue and self._queue[0] is item:
            self._queue.popleft()
            await self._journal_lines([_Line(item.seq, done=True)])
        self._report()

    # -- reporting ------------------------------------------------------------

    def _healthy(self, healthy: bool, error: str) -> None:
        checks = self.ctx.status.get("checks", {})
        if checks.get(self.ctx.instance, {}).get("healthy") != healthy:
            self.ctx.set_check(self.ctx.instance, healthy, now_timestamp())
        if error:
            self.ctx.status["last_error"] = f"{now_timestamp()} {error}"

    def _report(self) -> None:
        self.ctx.status["queued"] = len(self._queue)


def _show(item: _Queued) -> str:
    return _encode(item.entry).decode()


@hookimpl
def observer_register_sinks(register: RegisterSink) -> None:
    register(GatewayLogSink)
