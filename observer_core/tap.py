"""Tap: watch records flow (contract §12.3).

The engine owns one :class:`TapHub`. With no subscriber, feeding it costs the caller one
truth test of :attr:`TapHub.subscribers`. Each subscriber (a ``GET /tap`` client) has a
bounded queue of its own: when its reader falls behind, records are dropped for it alone,
the oldest first, counted, and announced with a ``{"dropped": N}`` line when it reads
again. Nothing a tap does can make ingest wait.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

import msgspec

from .records import Finding, Op

__all__ = ["KEEPALIVE_SECS", "TapError", "TapFilter", "TapHub", "TapSubscriber"]

KEEPALIVE_SECS: Final = 15.0
"""A quiet tap gets a ``{}`` line this often, so idle timeouts and proxies keep it open."""

_encode = msgspec.json.Encoder().encode
_FILTERS: Final = ("kind", "source", "endpoint", "staffer_id", "sig_hash", "success")
_KIND_NAME: Final = re.compile(r"[a-z][a-z0-9_-]*")


class TapError(ValueError):
    """A bad tap query: the message names the parameter (answered ``400``)."""


@dataclass(frozen=True, slots=True)
class TapFilter:
    """What a subscriber wants; every field is optional and they combine with AND.

    ``source``, ``staffer_id`` and ``sig_hash`` match exactly, ``endpoint`` is a glob
    (``fnmatch``), ``success`` matches ops only. A finding matches a field by the same key
    of its ``data``; a record without the field does not match a filter on it.
    """

    kinds: frozenset[str] | None = None
    source: str | None = None
    endpoint: str | None = None
    staffer_id: str | None = None
    sig_hash: str | None = None
    success: bool | None = None

    @classmethod
    def parse(cls, query: str, known_kinds: Iterable[str] = ()) -> TapFilter:
        """Read a query string (``kind=op,diagnosis&endpoint=/v1/*``); raise :class:`TapError`
        naming an unknown parameter, a repeated one or a bad value."""
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            raise TapError(f"malformed query string: {query[:100]!r}") from None
        values: dict[str, str] = {}
        for name, value in pairs:
            if name not in _FILTERS:
                raise TapError(
                    f"unknown tap parameter {name[:50]!r} (known: {', '.join(_FILTERS)})"
                )
            if name in values:
                raise TapError(f"tap parameter {name!r} given twice")
            if not value:
                raise TapError(f"tap parameter {name!r} is empty")
            values[name] = value
        kinds = None
        if "kind" in values:
            kinds = frozenset(part.strip() for part in values["kind"].split(","))
            known = frozenset(known_kinds)
            for kind in sorted(kinds):
                if not _KIND_NAME.fullmatch(kind) or (known and kind not in known):
                    listed = f" (known: {', '.join(sorted(known))})" if known else ""
                    raise TapError(f"bad tap parameter 'kind': {kind[:50]!r}{listed}")
        success = None
        if "success" in values:
            if values["success"] not in ("true", "false"):
                raise TapError(
                    f"bad tap parameter 'success': {values['success'][:50]!r} (true or false)"
                )
            success = values["success"] == "true"
        return cls(
            kinds=kinds,
            source=values.get("source"),
            endpoint=values.get("endpoint"),
            staffer_id=values.get("staffer_id"),
            sig_hash=values.get("sig_hash"),
            success=success,
        )

    def wants_op(self, op: Op) -> bool:
        """Whether ``op`` passes this filter."""
        if self.kinds is not None and "op" not in self.kinds:
            return False
        if self.source is not None and op.source != self.source:
            return False
        if self.endpoint is not None and not fnmatch.fnmatchcase(op.endpoint, self.endpoint):
            return False
        if self.staffer_id is not None and op.staffer_id != self.staffer_id:
            return False
        if self.sig_hash is not None and op.sig_hash != self.sig_hash:
            return False
        return self.success is None or op.success is self.success

    def wants_finding(self, finding: Finding) -> bool:
        """Whether ``finding`` passes this filter (its fields are keys of its ``data``)."""
        if self.kinds is not None and finding.kind not in self.kinds:
            return False
        if self.success is not None:
            return False
        data = finding.data if isinstance(finding.data, dict) else {}
        for key in ("source", "staffer_id", "sig_hash"):
            wanted = getattr(self, key)
            if wanted is not None and data.get(key) != wanted:
                return False
        if self.endpoint is not None:
            endpoint = data.get("endpoint")
            return isinstance(endpoint, str) and fnmatch.fnmatchcase(endpoint, self.endpoint)
        return True


class TapSubscriber:
    """One tap client's bounded queue of encoded lines, and what it has missed."""

    def __init__(self, hub: TapHub, wanted: TapFilter, queue_max: int) -> None:
        self._hub = hub
        self.filter = wanted
        self._queue: deque[bytes] = deque()
        self._queue_max = queue_max
        self.dropped = 0
        """Records dropped since the reader last heard about it."""
        self._wake: asyncio.Future[None] | None = None
        self._ended = False

    def end(self) -> None:
        """Stop after what is queued: :meth:`lines` returns once it has given it out."""
        self._ended = True
        self.close()
        self._poke()

    def _poke(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def offer(self, line: bytes) -> None:
        """Queue one line; when the queue is full the oldest is dropped and counted (a tap
        shows what happens now). Never waits."""
        if len(self._queue) >= self._queue_max:
            self._queue.popleft()
            self.dropped += 1
            self._hub.count_dropped(1)
        self._queue.append(line)
        self._poke()

    async def lines(self, keepalive: float | None = None) -> AsyncGenerator[bytes, None]:
        """Lines for the reader, as they come: ``{"dropped": N}`` first when records were
        dropped, and ``{}`` after ``keepalive`` seconds of quiet (default
        :data:`KEEPALIVE_SECS`). Ends when closed."""
        loop = asyncio.get_running_loop()
        keepalive = KEEPALIVE_SECS if keepalive is None else keepalive
        while True:
            if self.dropped:
                dropped, self.dropped = self.dropped, 0
                yield b'{"dropped":%d}\n' % dropped
            if self._queue:
                chunk = b"".join(self._queue)
                self._queue.clear()
                yield chunk
                continue
            if self._ended:
                return
            self._wake = loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._wake), keepalive)
            except TimeoutError:
                yield b"{}\n"
            finally:
                self._wake = None

    def close(self) -> None:
        """Stop receiving records."""
        self._hub.unsubscribe(self)


class TapHub:
    """The subscribers of every tap, fed by the engine as ops enter the ring and findings
    are published."""

    def __init__(self, on_dropped: Callable[[int], None] | None = None) -> None:
        self.subscribers: list[TapSubscriber] = []
        """Empty when nobody taps: the only thing the ingest path looks at."""
        self._on_dropped = on_dropped or (lambda count: None)

    def subscribe(self, wanted: TapFilter, queue_max: int) -> TapSubscriber:
        subscriber = TapSubscriber(self, wanted, queue_max)
        self.subscribers = [*self.subscribers, subscriber]
        return subscriber

    def unsubscribe(self, subscriber: TapSubscriber) -> None:
        self.subscribers = [item for item in self.subscribers if item is not subscriber]

    def count_dropped(self, count: int) -> None:
        self._on_dropped(count)

    def ops(self, ops: Sequence[Op]) -> None:
        """Offer ops that just entered the ring to every subscriber that wants them."""
        lines: list[bytes | None] = [None] * len(ops)  # each op encoded once, if wanted
        for subscriber in self.subscribers:
            wanted = subscriber.filter
            for index, op in enumerate(ops):
                if wanted.wants_op(op):
                    line = lines[index]
                    if line is None:
                        line = lines[index] = _line("op", op)
                    subscriber.offer(line)

    def findings(self, findings: Sequence[Finding]) -> None:
        """Offer published findings to every subscriber that wants them."""
        for subscriber in self.subscribers:
            wanted = subscriber.filter
            for finding in findings:
                if wanted.wants_finding(finding):
                    subscriber.offer(_line(finding.kind, finding.data))


def _line(kind: str, record: Any) -> bytes:
    return b'{"kind":%s,"record":%s}\n' % (_encode(kind), _encode(record))
