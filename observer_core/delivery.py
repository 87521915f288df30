"""A durable delivery queue: what a sink that POSTs records somewhere builds on.

:class:`DurableQueue` keeps JSON entries (already encoded: what will be sent)
in a journal under the instance's ``state_dir`` folder, ``spool.jsonl``,
written off the event loop and fdatasync'ed before :meth:`DurableQueue.put`
returns, so a restart or a ``kill -9`` keeps them. :meth:`DurableQueue.run`
delivers them in order through the sink's ``send`` function:

- ``send`` raises :class:`RetryLater` (an outage, 408, 429, 5xx): the head entry
  is retried with exponential backoff and jitter (about 0.5 s, 1 s, 2 s, ... up
  to 30 s). When the failure ``counts`` (an answer, a timeout, a dropped
  connection; not a refused connection, which says nothing about the entry) it
  counts against the entry; after ``max_attempts`` the entry goes to
  ``dead_letter.jsonl`` as ``{"ts", "attempts", "error", "entry"}``.
- ``send`` raises :class:`Rejected` (another 4xx): logged with the entry, dropped.
- Past ``queue_max`` entries the oldest are dropped and counted in
  ``observer_sink_dropped_total{instance}``.

A torn last line left by a crash is cut off at start; the journal is emptied
whenever the queue is, and compacted when it grows. Each outcome is reported to
the sink's ``on_outcome(outcome, count)`` (``delivered``, ``rejected``,
``failed_attempt``, ``dead_lettered``, ``dropped``) for its own metrics.
:func:`post_json` is a ``send`` for an HTTP endpoint that takes a JSON body.
"""

from __future__ import annotations

import os
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
import httpx
import msgspec

from .components import Context
from .records import now_timestamp
from .redact import redact_text
from .state import StateStore

__all__ = [
    "DurableQueue",
    "MaxAttempts",
    "QueueMax",
    "Rejected",
    "RetryLater",
    "post_json",
]

SPOOL_FILE = "spool.jsonl"
DEAD_LETTER_FILE = "dead_letter.jsonl"
BACKOFF_BASE_SECS = 0.5
BACKOFF_MAX_SECS = 30.0
FLUSH_SECS = 5.0
"""How long ``flush()`` keeps delivering at shutdown; the rest stays spooled."""
COMPACT_SLACK = 1000
"""Journal lines beyond twice the queue that make the spool worth rewriting."""
_RETRIED_STATUSES = frozenset({408, 429})

QueueMax = Annotated[int, msgspec.Meta(ge=1, le=10_000_000)]
"""The type of a sink's ``queue_max``: entries kept waiting before the oldest are dropped."""
MaxAttempts = Annotated[int, msgspec.Meta(ge=1, le=1000)]
"""The type of a sink's ``max_attempts``: failed deliveries before an entry is dead-lettered."""


class RetryLater(Exception):
    """Delivery failed for now; ``counts`` when it counts against the entry's attempts."""

    def __init__(self, detail: str, *, counts: bool) -> None:
        super().__init__(detail)
        self.counts = counts


class Rejected(Exception):
    """The receiver refused the entry for good (e.g. a 4xx other than 408/429)."""


Send = Callable[[bytes], Awaitable[None]]
"""Deliver one encoded entry; raise :class:`RetryLater` or :class:`Rejected` when it fails."""
OnOutcome = Callable[[str, int], None]


async def post_json(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    *,
    headers: Mapping[str, str] | None = None,
    peer: str = "receiver",
    shown_url: str | None = None,
) -> None:
    """POST ``body`` as JSON to ``url``; a 2xx is delivered, the rest raises as the
    queue expects. Error texts say ``peer`` and never the URL unless ``shown_url``
    (the URL as it may be shown) is given."""
    try:
        response = await client.post(
            url, content=body, headers={"Content-Type": "application/json", **(headers or {})}
        )
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        detail = f"{peer} unreachable: {_hide(exc, url, shown_url)}"
        raise RetryLater(detail, counts=False) from None
    except httpx.HTTPError as exc:
        detail = f"{type(exc).__name__}: {_hide(exc, url, shown_url)}"
        raise RetryLater(detail, counts=True) from None
    status = response.status_code
    if response.is_success:
        return
    detail = f"HTTP {status}: {response.text[:200]!r}"
    if status in _RETRIED_STATUSES or status >= 500:
        raise RetryLater(detail, counts=True)
    raise Rejected(detail)


def _hide(exc: Exception, url: str, shown_url: str | None) -> str:
    return str(exc).replace(url, shown_url or "the URL")


class _Line(msgspec.Struct, omit_defaults=True):
    """One spool journal line: an entry queued, its attempt count, or its end."""

    seq: int
    entry: msgspec.Raw = msgspec.Raw()
    attempts: int | None = None
    done: bool = False


@dataclass(slots=True)
class _Queued:
    seq: int
    entry: bytes
    attempts: int = 0


_encode = msgspec.json.Encoder().encode
_decode_line = msgspec.json.Decoder(_Line).decode
_NO_ENTRY = msgspec.Raw()


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
        lines = [_queued_line(item) for item in queue]
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


def _queued_line(item: _Queued) -> _Line:
    return _Line(item.seq, msgspec.Raw(item.entry), item.attempts or None)


def _apply(pending: dict[int, _Queued], line: _Line) -> None:
    if line.entry != _NO_ENTRY:
        pending[line.seq] = _Queued(line.seq, bytes(line.entry), line.attempts or 0)
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


def _ignore(outcome: str, count: int) -> None:
    """The default ``on_outcome``: the queue's own metrics are enough."""


class DurableQueue:
    """Encoded entries delivered in order through ``send``, kept on disk until done.

    A sink creates one in ``__init__``, calls :meth:`open` from its ``open()``,
    :meth:`put` from ``write()``, :meth:`run` from ``run()``, :meth:`flush` from
    ``flush()`` and :meth:`aclose` from ``aclose()``; ``len(queue)`` is its
    ``queue_depth()``. ``noun`` names an entry in log lines (``"log entry"``),
    ``peer`` the receiver (``"gateway"``).
    """

    def __init__(
        self,
        ctx: Context,
        send: Send,
        *,
        queue_max: int,
        max_attempts: int,
        noun: str = "entry",
        peer: str = "receiver",
        on_outcome: OnOutcome = _ignore,
    ) -> None:
        self._ctx = ctx
        self._send = send
        self._queue_max = queue_max
        self._max_attempts = max_attempts
        self._noun = noun
        self._peer = peer
        self._on_outcome = on_outcome
        self._spool = _Spool(ctx.state, ctx.logger)
        self._dead_letter = ctx.state.path(DEAD_LETTER_FILE)
        self._queue: deque[_Queued] = deque()
        self._next_seq = 0
        self._journal = anyio.Lock()
        self._sending = anyio.Lock()
        self._wake = anyio.Event()
        self._failures = 0
        """Failed attempts in a row: the backoff exponent."""
        self._dropped = ctx.metrics.sink_dropped

    def __len__(self) -> int:
        return len(self._queue)

    # -- lifecycle ----------------------------------------------------------

    async def open(self) -> None:
        """Replay the journal: what an earlier run left is queued again, in order."""
        queued = await anyio.to_thread.run_sync(self._spool.replay)
        self._next_seq = max((item.seq for item in queued), default=-1) + 1
        self._queue.extend(queued)
        await self._enforce_bound()
        if self._queue:
            self._ctx.logger.info("%d %s(s) left from the last run", len(self._queue), self._noun)
            self._wake.set()
        self._report()

    async def aclose(self) -> None:
        async with self._journal:
            await anyio.to_thread.run_sync(self._spool.close)

    # -- queueing -----------------------------------------------------------

    async def put(self, entries: Sequence[bytes]) -> None:
        """Spool the encoded entries (durably), then queue them for delivery."""
        if not entries:
            return
        async with self._journal:
            first, self._next_seq = self._next_seq, self._next_seq + len(entries)
            items = [_Queued(seq, entry) for seq, entry in enumerate(entries, first)]
            lines = [_queued_line(item) for item in items]
            await anyio.to_thread.run_sync(lambda: self._spool.append(lines, sync=True))
        self._queue.extend(items)
        await self._enforce_bound()
        self._wake.set()
        self._report()

    async def _enforce_bound(self) -> None:
        excess = len(self._queue) - self._queue_max
        if excess <= 0:
            return
        dropped = [self._queue.popleft() for _ in range(excess)]
        self._dropped.inc(excess, instance=self._ctx.instance)
        self._on_outcome("dropped", excess)
        self._ctx.logger.warning(
            "queue full (%d entries): dropped the %d oldest", self._queue_max, excess
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
            except RetryLater as exc:
                await self._retry_later(item, exc)
                return False
            except Rejected as exc:
                self._on_outcome("rejected", 1)
                self._ctx.error(
                    "%s refused a %s (%s), dropped: %s",
                    self._peer,
                    self._noun,
                    exc,
                    item.entry.decode(errors="replace"),
                )
            else:
                self._on_outcome("delivered", 1)
                self._healthy(True, "")
            self._failures = 0
            await self._finish(item)
            return True

    async def _retry_later(self, item: _Queued, exc: RetryLater) -> None:
        self._failures += 1
        self._on_outcome("failed_attempt", 1)
        self._healthy(False, str(exc))
        if not exc.counts:
            self._ctx.logger.warning("%s; %d %s(s) wait", exc, len(self._queue), self._noun)
            return
        item.attempts += 1
        if item.attempts < self._max_attempts:
            self._ctx.logger.warning(
                "delivery failed (%s); attempt %d of %d", exc, item.attempts, self._max_attempts
            )
            await self._journal_lines([_Line(item.seq, attempts=item.attempts)])
            return
        row = {"ts": now_timestamp(), "attempts": item.attempts, "error": redact_text(str(exc))}
        data = _encode({**row, "entry": msgspec.Raw(item.entry)}) + b"\n"
        await anyio.to_thread.run_sync(_append_dead_letter, self._ctx.state, data)
        self._on_outcome("dead_lettered", 1)
        self._ctx.error(
            "%s failed %d times (%s); moved to %s: %s",
            self._noun,
            item.attempts,
            exc,
            self._dead_letter,
            item.entry.decode(errors="replace"),
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
        ctx = self._ctx
        ctx.report_check(ctx.instance, healthy)
        if error:
            ctx.status["last_error"] = f"{now_timestamp()} {error}"

    def _report(self) -> None:
        self._ctx.status["queued"] = len(self._queue)
