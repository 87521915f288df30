"""What the connections of one listener share: the handler, the limits as plain
attributes (read per request), the memory budget across connections, caches of response
prefixes and request targets, and where errors are counted and logged."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from ..http_guard import BrowserGuard
from ._framing import (
    LENGTH_CACHE_MAX,
    LENGTH_KEY_MAX,
    LINE_EXTRA,
    MIN_METHOD,
    STATUS_LINES,
    header_line,
)
from ._limits import HttpLimits
from ._messages import Handler


class Holder(Protocol):
    """A connection, as the memory budget sees it."""

    _held: int  # request body bytes it holds (max_inflight_bytes)
    _memory_paused: bool  # its reading waits for the budget

    def _memory_freed(self) -> None:
        """The budget lets it read again."""


class LogGate:
    """At most one log line a second per kind; counts the lines left out."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, kind: str) -> int | None:
        """None to leave this line out, else how many were left out since the last one."""
        now = time.monotonic()
        if now - self._last.get(kind, -2.0) < 1.0:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return None
        self._last[kind] = now
        return self._suppressed.pop(kind, 0)


class Shared:
    """One listener's state, shared by its connections (built by `HttpServer`)."""

    def __init__(
        self,
        handler: Handler,
        limits: HttpLimits,
        *,
        on_reject: Callable[[int], None] | None,
        logger: logging.Logger,
        server_name: str,
    ) -> None:
        self._handler = handler
        self._limits = limits
        self._guard: BrowserGuard | None = None  # set by HttpServer.start, before any connection
        # The limits as plain attributes (read per request), and the sizes below which a
        # head needs no exact check (that asks the parser for the method: a call).
        self._max_body = limits.max_body_bytes
        self._max_connections = limits.max_connections
        self._header_timeout = limits.header_timeout_secs
        self._body_timeout = limits.body_timeout_secs
        self._body_extra = limits.body_timeout_secs - limits.header_timeout_secs
        self._idle_timeout = limits.idle_timeout_secs
        self._send_timeout = limits.send_timeout_secs or limits.idle_timeout_secs
        self._max_head = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._url_room = limits.max_url_bytes - LINE_EXTRA - MIN_METHOD
        self._max_inflight = limits.max_inflight_bytes
        self._inflight = 0  # request body bytes held, all connections together
        self._overdraft: Holder | None = None  # may read on past max_inflight_bytes
        self._memory_waiting: dict[Holder, None] = {}  # paused for it, in order
        self._log_gate = LogGate()
        self._on_reject = on_reject
        self._logger = logger
        self._server_header = header_line("Server", server_name) if server_name else b""
        self._prefixes: dict[tuple[int, str | None], bytes] = {}
        self._targets: dict[bytes, tuple[str, str]] = {}
        self._lengths: dict[bytes, int] = {}  # Content-Length values parsed (_length_of)
        self._length_lines: dict[int, bytes] = {}  # answers' Content-Length lines (_length_line)
        self._connections: set[object] = set()
        self._closing = False
        self._all_closed: asyncio.Event | None = None

    def _prefix(self, status: int, content_type: str | None) -> bytes:
        """The status line, Server and Content-Type headers, cached per (status, type)."""
        key = (status, content_type)
        prefix = self._prefixes.get(key)
        if prefix is None:
            if not 100 <= status <= 999:
                raise ValueError(f"invalid status {status}")
            prefix = STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status
            prefix += self._server_header
            if content_type is not None:
                prefix += header_line("Content-Type", content_type)
            if len(self._prefixes) < 256:
                self._prefixes[key] = prefix
        return prefix

    def _length_of(self, value: bytes) -> int:
        """A request's Content-Length (llhttp has validated its digits), remembered: the usual
        client sends a few sizes over and over, and a lookup costs a tenth of ``int()``."""
        length = int(value)
        if len(value) <= LENGTH_KEY_MAX and len(self._lengths) < LENGTH_CACHE_MAX:
            self._lengths[value] = length
        return length

    def _length_line(self, size: int) -> bytes:
        """``Content-Length: <size>`` and the blank line that ends a head, remembered by size
        (formatting bytes costs ten times the lookup)."""
        line = b"Content-Length: %d\r\n\r\n" % size
        if len(self._length_lines) < LENGTH_CACHE_MAX:
            self._length_lines[size] = line
        return line

    def _log_exception(self, kind: str, message: str, *args: object) -> None:
        """Log the exception being handled, at most once a second per ``kind`` (a client
        can cause it), with the count of those left out since."""
        suppressed = self._log_gate.allow(kind)
        if suppressed is None:
            return
        if suppressed:
            message += f" ({suppressed} more like it since the last one, not logged)"
        self._logger.exception(message, *args)

    def _wait_for_memory(self, conn: Holder) -> None:
        """``conn`` stops reading until the budget has room (in the order they came)."""
        if not conn._memory_paused:
            conn._memory_paused = True
            self._memory_waiting[conn] = None

    def _release(self, conn: Holder, size: int) -> None:
        """``conn`` no longer holds ``size`` bytes: let paused connections read again."""
        conn._held -= size
        self._inflight -= size
        if conn is self._overdraft and not conn._held:
            self._overdraft = None
        waiting = self._memory_waiting
        while waiting and (self._inflight <= self._max_inflight or self._overdraft is None):
            other = next(iter(waiting))
            del waiting[other]
            other._memory_paused = False
            if self._inflight > self._max_inflight:
                self._overdraft = other
            other._memory_freed()

    def _forget_memory(self, conn: Holder) -> None:
        """``conn`` is gone: what it held is free."""
        self._memory_waiting.pop(conn, None)
        conn._memory_paused = False
        if conn._held or conn is self._overdraft:
            self._release(conn, conn._held)

    def _rejected(self, status: int) -> None:
        if self._on_reject is not None:
            self._on_reject(status)

    def _forget(self, conn: object) -> None:
        self._connections.discard(conn)
        if not self._connections and self._all_closed is not None:
            self._all_closed.set()
