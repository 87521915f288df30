"""A lean HTTP/1.1 server: the ``httptools`` (llhttp) parser under an asyncio ``Protocol``.

It has one job: turn bytes into `Request` objects, hand them to a `Handler`, and write
the `Response` back. It does what a real server must: keep-alive, pipelining (the
requests of one connection are handled one after another, in order), Content-Length
and chunked request bodies (whole, or streamed to the handler: :data:`STREAM`),
``Expect: 100-continue``, streamed responses and a graceful stop; and it holds a
hostile client to `HttpLimits` (contract §11.2): the request line, head, header count
and body, head and body timeouts, connections, and the bytes held across connections;
and it refuses what browsers must not send (contract §11.4, `BrowserGuard`): cross-site
writes (403) and, on a loopback listener, a foreign ``Host`` (400).
Why not uvicorn and ASGI: their layers cost more than the work (HTTP-SERVERS.md).

Head limits are counted as the head arrives: the target's pieces and each header line
in the parser's callbacks (ints, no copies), and, while a head stays incomplete across
reads, the bytes read since (llhttp's wrapper keeps a partial header line to itself).
Upgrade offers are ignored; CONNECT, targets other than a path, ``#`` and control
characters are 400; chunked trailers are counted and dropped. The browser checks come
next, before the handler's ``precheck`` (404, 405, 401...) and the body limit (413).

Framing headers (Content-Length, Transfer-Encoding, Connection) belong to the server;
a handler sets only a ``content-length`` header, and only on a streamed response.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import re
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from http import HTTPStatus
from types import TracebackType
from typing import Annotated, Any, Final, Protocol, cast

import httptools
import msgspec

from .http_guard import BROWSER_HEADERS, BrowserGuard, normalize_allowed_hosts

__all__ = [
    "LATER",
    "STREAM",
    "Connections",
    "Handler",
    "HeaderBytes",
    "HeaderCount",
    "HttpLimits",
    "HttpServer",
    "Later",
    "Request",
    "RequestBody",
    "RequestBodyError",
    "Response",
    "Seconds",
    "Size",
    "Stream",
    "UrlBytes",
    "json_error",
]

_PIPELINE_LIMIT = 16  # requests queued on one connection before it stops reading
_RESUME_AT = _PIPELINE_LIMIT // 2  # ... and starts again
_STREAM_BUFFER = 256 << 10  # a streamed body's bytes not yet taken before reading pauses
_LINGER_SECONDS = 2.0  # after an error response, how long to drain unread input
_STOP_CANCEL_WAIT = 1.0  # at the end of stop(), how long cancelled handlers get

_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
_SPECIAL_HEADERS = frozenset(
    (b"content-length", b"host", b"transfer-encoding", b"expect", b"connection", *BROWSER_HEADERS)
)
_TARGET_CACHE_MAX = 256  # request targets whose (path, query) split is remembered ...
_TARGET_CACHE_KEY_MAX = 512  # ... if no longer than this: the cache holds at most 128 KiB
# The request line is method SP target SP HTTP/x.y (10 bytes besides method and target; the
# shortest method has 3); a header line is name ":" value CRLF (whitespace around the value
# is not counted: it is not kept); the head ends with CRLF.
_LINE_EXTRA = 10
_FIELD_EXTRA = 3
_MIN_METHOD = 3
_BAD_TARGET = re.compile(rb"[\x00-\x1f#\x7f]")  # a fragment, or a control character
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_NO_BODY_STATUSES = frozenset((*range(100, 200), 204, 304))
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CRLF = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


UrlBytes = Annotated[int, msgspec.Meta(ge=64, le=1 << 20)]
HeaderBytes = Annotated[int, msgspec.Meta(ge=256, le=1 << 24)]
HeaderCount = Annotated[int, msgspec.Meta(ge=1, le=10000)]
Size = Annotated[int, msgspec.Meta(ge=1, le=1 << 40)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=86400)]
Connections = Annotated[int, msgspec.Meta(ge=1, le=100_000)]


class HttpLimits(msgspec.Struct, kw_only=True, frozen=True):
    """What one listener holds and waits for (contract §11.2). Each field is also the
    listener's config key of that name; past a limit the client gets an error naming it."""

    max_url_bytes: UrlBytes = 8192
    """Request line (method, target, version): 414 past it."""
    max_header_bytes: HeaderBytes = 32768
    """Request head (request line and header lines), chunked trailers included: 431."""
    max_headers: HeaderCount = 100
    """Header fields in one request (trailers included): 431."""
    max_body_bytes: Size = 1 << 20
    """Request body: 413."""
    header_timeout_secs: Seconds = 10.0
    """Time to receive a whole head (a new connection's first one too): 408."""
    body_timeout_secs: Seconds = 10.0
    """Time to receive a whole body, from the end of its head: 408."""
    idle_timeout_secs: Seconds = 60.0
    """How long a keep-alive connection may idle between requests: then it is closed."""
    send_timeout_secs: Seconds | None = None
    """How long a response write may stall, the client not reading it: then the connection
    is closed (nginx's ``send_timeout``). None: ``idle_timeout_secs``."""
    max_connections: Connections = 1024
    """Open connections: 503 past it."""
    max_inflight_bytes: Size = 64 << 20
    """Request body bytes held by the listener, all connections together: reading pauses."""

    @classmethod
    def of(cls, config: object, **overrides: Any) -> HttpLimits:
        """The limits set by ``config``'s attributes of the same names (others: defaults),
        then ``overrides``; checked against the bounds (ValueError naming the field)."""
        values = {
            name: getattr(config, name) for name in cls.__struct_fields__ if hasattr(config, name)
        }
        values.update(overrides)
        try:
            return msgspec.convert(values, cls)
        except msgspec.ValidationError as exc:
            raise ValueError(f"HTTP limits: {exc}") from None


class Later(enum.Enum):
    """The type of :data:`LATER`."""

    LATER = "later"


LATER: Final = Later.LATER
"""What ``Handler.handle`` returns to answer later, with :meth:`Request.reply`: no
coroutine or future per request, for handlers whose answer comes from a callback."""


class Stream(enum.Enum):
    """The type of :data:`STREAM`."""

    STREAM = "stream"


STREAM: Final = Stream.STREAM
"""What ``Handler.precheck`` returns to take the request's body as it arrives: the handler
is called once the head is in, with ``body`` empty and ``body_stream`` set (a request
without a body is handled as usual)."""


class RequestBodyError(Exception):
    """The client's body broke off: too large, too slow, or the client left. ``response``
    is what the client gets (a handler that lets this propagate answers with it)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.body.decode("utf-8", "replace"))
        self.response = response


class RequestBody:
    """A request body as it arrives (see :data:`STREAM`): iterate it for its chunks. What
    is not yet taken counts toward ``max_inflight_bytes``; past 256 KiB the connection
    stops reading until the handler takes more. A body that breaks off raises
    :class:`RequestBodyError`."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: RequestBodyError | None = None
        self._discarded = False  # answered already: what still comes is dropped
        self._waiter: asyncio.Future[None] | None = None

    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                raise StopAsyncIteration
            waiter = self._waiter = self._connection._loop.create_future()
            await waiter
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        self._connection._body_taken(len(chunk), self._buffered)
        return chunk

    def _put(self, chunk: bytes) -> int:
        """Keep ``chunk`` for the handler; the bytes now buffered (0: dropped)."""
        if self._discarded:
            return 0
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._wake()
        return self._buffered

    def _end(self, error: RequestBodyError | None = None) -> None:
        if self._done or self._error is not None:
            return
        if error is None:
            self._done = True
        else:
            self._error = error
        self._wake()

    def _discard(self) -> int:
        """Drop what was not taken, and what is still to come; the bytes dropped."""
        self._discarded = self._done = True
        dropped, self._buffered = self._buffered, 0
        self._chunks.clear()
        return dropped

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Request(msgspec.Struct):
    """A complete request. ``path`` and ``query`` are as sent: not percent-decoded, the bytes
    read as latin-1. Header names are lower-cased. (A msgspec Struct rather than a
    dataclass: its ``__init__`` is C, a third of the cost, and one is made per request.)
    ``body_stream``: the body as it arrives, when ``precheck`` returned :data:`STREAM`."""

    method: str
    path: str
    query: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    _connection: Any = None
    body_stream: RequestBody | None = None

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (give it lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def client_address(self) -> str | None:
        """The client's IP address (None when the transport does not tell)."""
        if self._connection is None:
            return None
        peer = self._connection._transport.get_extra_info("peername")
        return str(peer[0]) if isinstance(peer, tuple) and peer else None

    def on_client_left(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Have ``callback`` called, once, if the client leaves while this request is being
        answered: its connection is lost, or it closes its side (EOF) of a connection it
        meant to keep, as nginx takes it ("client prematurely closed"; a pooled client that
        gives up closes so). A client that said its request was its last (``Connection:
        close``, HTTP/1.0) may half-close and still gets its answer: nothing is read after
        such a request, so its EOF is not seen. Called soon if it has left already. Returns
        what stops watching: call it when the answer is ready."""
        connection = self._connection
        if connection is None:
            raise RuntimeError("on_client_left() for a request the server did not receive")
        return cast(_Connection, connection)._watch_left(callback)

    def reply(self, response: Response) -> None:
        """Answer this request, after its handler returned :data:`LATER`: exactly once, on
        the event loop, and not from inside ``handle``. A client that left is not answered."""
        if self._connection is None:
            raise RuntimeError("reply() for a request the server did not receive")
        self._connection._reply(self, response)


class Response(msgspec.Struct):
    """A response. With ``stream`` set, ``body`` is ignored and chunks are sent as they come:
    raw if ``headers`` has a content-length, else with ``Transfer-Encoding: chunked``."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = []
    content_type: str | None = "application/json"
    stream: AsyncIterator[bytes] | None = None


class Handler(Protocol):
    """What the server calls for each request."""

    def precheck(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> Response | Stream | None:
        """Called when the headers are complete, before the body is read. Return a Response
        to answer early (404, 405, 401...), None to go on, :data:`STREAM` to be handed the
        body as it arrives."""
        ...

    def handle(self, request: Request) -> Response | Awaitable[Response] | Later:
        """Answer a complete request: a Response, an awaitable of one, or :data:`LATER` and
        then ``request.reply(response)``. Requests on one connection are answered in order."""
        ...


def json_error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """A JSON error response: ``{"error": message}`` with ``status`` (and ``headers``)."""
    return Response(status, msgspec.json.encode({"error": message}), headers or [])


_error = json_error


def _header_line(name: str, value: str) -> bytes:
    line = f"{name}: {value}"
    if "\r" in line or "\n" in line:
        raise ValueError(f"CR or LF in response header {name!r}")
    return line.encode("latin-1") + _CRLF


_BUSY_BODY = _error(503, "too many connections").body
_BUSY = b"".join(
    (
        _STATUS_LINES[503],
        b"Content-Type: application/json\r\nConnection: close\r\n",
        b"Content-Length: %d\r\n\r\n" % len(_BUSY_BODY),
        _BUSY_BODY,
    )
)

# One queued unit of work: a Request for the handler, a ready Response (sent in turn), or
# the handler's awaitable answer, with the request's keep-alive, "HTTP/1.0" and "HEAD" flags.
_Item = tuple["Request | Response | Awaitable[Response]", bool, bool, bool]


def _nothing() -> None:
    pass


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


class _LogGate:
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


class _StopParsing(Exception):
    """Raised from a parser callback after the connection was told to stop reading."""


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them in order."""

    _transport: asyncio.Transport

    def __init__(self, server: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._loop = loop
        self._handler = server._handler
        self._guard = guard = cast(BrowserGuard, server._guard)  # built at start, before any
        # connection; the requests it would pass are told apart without calling it (see
        # on_headers_complete).
        self._quick_hosts = guard.quick_hosts or frozenset()
        self._any_host = guard.quick_hosts is None
        # Limits read per request, kept here: one attribute lookup rather than two.
        self._url_room = server._url_room
        self._max_head = server._max_head
        self._small_read = min(server._url_room, server._max_head)
        self._max_headers = server._max_headers
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[_Item] = deque()
        self._task: asyncio.Task[None] | None = None  # answers requests; lives with the connection
        self._busy = False  # the task is answering requests (else it waits for one)
        self._wakeup: asyncio.Future[None] | None = None
        self._later: _Item | None = None  # the request whose handler returned LATER
        self._later_waiter: asyncio.Future[Response] | None = None  # the task awaits its reply
        # The request being parsed.
        self._url = b""
        self._url_parts: list[bytes] | None = None  # a target that came in several reads
        self._url_len = 0  # bytes of a target that came in several reads
        self._head_size = 0  # bytes of the head and trailers, counted once trailers come
        self._big_read = False  # the read being parsed is big (see data_received)
        self._head_done = False  # its headers are complete: what follows are trailers
        self._head_open = False  # an incomplete head was left in the parser by a read ...
        self._head_carried = 0  # ... and these bytes were read since (bounded as they come)
        self._trailers = 0  # chunked trailer fields (counted, not kept)
        self._held = 0  # request body bytes read and not yet answered (max_inflight_bytes)
        self._memory_paused = False  # reading paused for max_inflight_bytes
        self._body_stream: RequestBody | None = None  # the streamed body being read
        self._last_stream: RequestBody | None = None  # the latest one, until answered
        self._stream_full = False  # reading paused until the handler takes more of it
        self._upgrade_body: bytes | None = None  # an Upgrade offer's body is to come (_replay)
        self._replaying = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0  # of a chunked body
        self._content_length = 0
        self._chunked = False
        self._expect = False
        self._connection_header = False  # HTTP/1.0 keeps a connection only with one
        self._host: bytes | None = None  # the first Host header's value
        self._guard_asks = False  # a second Host, or a header of BROWSER_HEADERS, came
        self._method = ""
        self._path = ""
        self._query = ""
        self._http10 = False
        self._early: Response | None = None
        self._in_message = False
        # The connection.
        self._stopped = False  # no further request will be parsed
        self._linger_on_close = False  # input may be left unread: drain it before closing
        self._lingering = False
        self._closed = False  # no further response will be written
        self._lost = False
        self._eof = False
        self._shutdown = False
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._continue_pending = False
        self._streaming = False
        self._on_left: set[Callable[[], None]] = set()  # Request.on_client_left callbacks
        self._head_done = False  # the request being parsed is past its head: no more headers
        # One timer serves the header, idle and linger timeouts: it is re-armed only
        # when it fires early or a nearer deadline comes, not once per request.
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._request_timer = False  # the deadline is for a request's head or body (408)

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        server = self._server
        if server._closing or len(server._connections) >= server._max_connections:
            self._stopped = self._closed = True
            if not server._closing:
                self._transport.write(_BUSY)
                server._rejected(503)
            transport.close()
            return
        server._connections.add(self)
        self._set_deadline(server._header_timeout, request=True)  # the first request's head

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = self._closed = self._stopped = True
        self._queue.clear()
        self._client_left()
        if self._body_stream is not None:
            self._break_stream(_error(400, "bad request: the client left before its body ended"))
        self._server._forget_memory(self)
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._task is None:
            self._server._forget(self)
        elif not self._busy:
            self._wake()  # the task sees the connection is gone, ends, and forgets it
        elif self._streaming:
            self._task.cancel()  # stop waiting for the next chunk; _send_stream swallows it

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return  # lingering, or nothing more is read on this connection
        # A head (or request line) that begins and ends in this read is no longer than it:
        # only a big read, or a head that began in an earlier one, has its bytes counted
        # (on_url, on_headers_complete; _receive_checked). The usual read is parsed here,
        # inline (measured: a call, and the checks of every read, were 27 bytecodes).
        if self._head_open or len(data) > self._small_read:
            self._receive_checked(data)
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._feed_failed(data, exc)
        if self._in_message and not self._head_done:
            self._head_left_open()

    def _receive_checked(self, data: bytes) -> None:
        """:meth:`data_received` for a big read, or one that goes on with a head begun in an
        earlier read: the heads are checked exactly; across reads, the bytes read since
        bound what the parser holds."""
        self._big_read = True
        try:
            if self._head_open:  # a head is incomplete: bound what the parser accumulates
                carried = self._head_carried + len(data)
                if carried > self._max_head:
                    if not self._feed_bounded(data):
                        return
                else:
                    self._head_carried = carried
                    self._feed(data)
            else:
                self._feed(data)
        finally:
            self._big_read = False
        if self._in_message and not self._head_done:
            self._head_left_open()
        else:
            self._head_open = False

    def _head_left_open(self) -> None:
        """A read ended inside a head: check its fields' count, and bound what is to come."""
        if len(self._headers) > self._max_headers:
            with contextlib.suppress(_StopParsing):
                self._check_head()
        elif not self._head_open:
            self._head_open = True
            self._head_carried = 0

    def _feed_bounded(self, data: bytes) -> bool:
        """Feed ``data`` to an incomplete head no further than ``max_header_bytes``: 431 if
        the head is not complete by then, else go on with the rest. Whether parsing goes on."""
        view = memoryview(data)
        room = self._max_head - self._head_carried
        self._feed(view[:room])
        if self._stopped:
            return False
        if self._head_open:  # the head is still incomplete (on_headers_complete clears it)
            with contextlib.suppress(_StopParsing):
                self._head_too_large()
            return False
        self._head_open = False
        self._feed(view[room:])
        return not self._stopped

    def _feed(self, data: bytes | memoryview) -> None:
        """Parse ``data``; an Upgrade offer is ignored (parsing goes on after the request,
        in a loop: any number of pipelined offers)."""
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._feed_failed(data, exc)

    def _feed_failed(self, data: bytes | memoryview, exc: Exception) -> None:
        """The parser raised ``exc`` while parsing ``data``: after an Upgrade offer, go on with
        the rest of ``data`` (in a loop: any number of pipelined offers); else answer it."""
        while isinstance(exc, httptools.HttpParserUpgrade):
            if self._stopped:
                return
            data = memoryview(data)[exc.args[0] :]
            head = self._upgrade_body
            if head is not None:  # the offer had a body: it comes next
                self._upgrade_body = None
                self._replay(head)
            try:
                self._parser.feed_data(data)
                return
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as again:
                exc = again
        if self._stopped:
            return  # our _StopParsing, or data after "Connection: close": ignored
        if isinstance(exc, httptools.HttpParserCallbackError):  # a bug in a callback
            self._server._log_exception("callback", "HTTP parser callback failed")
            self._fail(_error(500, "internal error"))
        else:
            self._fail(_error(400, f"bad request: {exc}"))

    def eof_received(self) -> bool | None:
        self._eof = True
        self._client_left()
        # A half-closed connection still gets the answers to what it sent, then is closed;
        # but a stream (server-sent events) is for a reader that has left: end it.
        return True if self._busy and not self._streaming and not self._lingering else None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        self._drain_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks -------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        # The first piece of a request's URL begins the message: one callback fewer per
        # request than on_message_begin (the request line's method is all that came before).
        if self._in_message:
            self._more_url(url)
            return
        self._in_message = True
        self._url = url  # (_url_parts is None: on_headers_complete or a rejection reset it)
        self._headers = []
        self._body = []
        self._body_size = self._content_length = self._trailers = 0
        self._chunked = self._expect = self._connection_header = self._head_done = False
        self._guard_asks = False
        self._early = self._host = None
        if self._big_read and len(url) > self._url_room:  # (a small read holds no long one)
            self._check_url(len(url))
        # The head's clock starts now, unless it runs already for this request (a new
        # connection's first head is timed from the opening: a trickled method gains nothing).
        if self._deadline is None or not self._request_timer:
            # _set_deadline(header_timeout, request=True), inline: this runs for every request.
            self._request_timer = True
            deadline = self._deadline = self._loop.time() + self._server._header_timeout
            if self._timer is None or self._timer_at > deadline:
                self._arm(deadline)

    def _more_url(self, url: bytes) -> None:
        """A further piece of the target (it came in several reads): kept in a list."""
        if self._replaying:
            return
        if self._url_parts is None:
            self._url_parts = [self._url]
            self._url_len = len(self._url)
        self._url_parts.append(url)
        self._url_len += len(url)
        if self._url_len > self._url_room:
            self._check_url(self._url_len)

    def _check_url(self, size: int) -> None:
        """414 if the request line (with a target of ``size`` bytes) is past ``max_url_bytes``."""
        limit = self._server._limits.max_url_bytes
        if size + len(self._parser.get_method()) + _LINE_EXTRA > limit:
            self._url_parts = None
            self._reject(414, f"request line longer than max_url_bytes ({limit} bytes)")

    def _check_head(self) -> None:
        """431 if the head is past ``max_headers`` or ``max_header_bytes``."""
        limits = self._server._limits
        if len(self._headers) > limits.max_headers:
            self._reject(431, f"more than max_headers ({limits.max_headers}) header fields")
        if self._head_bytes() > limits.max_header_bytes:
            self._head_too_large()

    def _head_bytes(self) -> int:
        """The size of the head parsed so far (see _LINE_EXTRA)."""
        parts = self._url_parts
        target = self._url_len if parts is not None else len(self._url)
        fields = sum(len(name) + len(value) for name, value in self._headers)
        fields += _FIELD_EXTRA * len(self._headers)
        return len(self._parser.get_method()) + _LINE_EXTRA + 2 + target + fields + 2

    def _head_too_large(self) -> None:
        limit = self._server._limits.max_header_bytes
        self._reject(431, f"request head longer than max_header_bytes ({limit} bytes)")

    def _reject(self, status: int, message: str) -> None:
        """Answer ``status`` after what is queued, read no more, close: a limit was passed.
        (A streamed body's handler gets it as a RequestBodyError instead.)"""
        self._headers = []
        self._body = []
        if self._body_stream is not None:
            self._server._rejected(status)
            self._break_stream(_error(status, message))
        else:
            self._fail(_error(status, message))
        raise _StopParsing

    def _break_stream(self, response: Response) -> None:
        """The streamed body cannot end well: its handler gets ``response`` as an error;
        nothing more is read, and the connection closes after the handler's answer."""
        stream = cast(RequestBody, self._body_stream)
        self._body_stream = None
        stream._end(RequestBodyError(response))
        self._stopped = self._linger_on_close = True
        self._in_message = self._continue_pending = False
        self._deadline = None
        if not self._lost:
            self._pause_reading()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:  # a chunked trailer: counted, then dropped
            self._trailer(name, value)
            return
        name = name.lower()
        self._headers.append((name, value))
        if name in _SPECIAL_HEADERS:
            if name == b"content-length":
                self._content_length = int(value)  # llhttp has validated it
            elif name == b"host":
                if self._host is None:
                    self._host = value
                else:
                    self._guard_asks = True  # the guard refuses a second one
            elif name == b"transfer-encoding":
                # llhttp takes any list of codings ending in chunked: only chunked is served.
                if self._chunked or value.rstrip(b" \t").lower() != b"chunked":
                    self._reject(400, "bad request: Transfer-Encoding other than chunked")
                self._chunked = True
            elif name == b"expect":
                self._expect = value.lower() == b"100-continue"
            elif name == b"connection":
                self._connection_header = True
            else:  # one of BROWSER_HEADERS
                self._guard_asks = True

    def _trailer(self, name: bytes, value: bytes) -> None:
        """A trailer field: it counts toward the head's limits and is never kept."""
        if self._replaying:
            return
        if not self._trailers:
            self._head_size = self._head_bytes()
        self._trailers += 1
        self._head_size += len(name) + len(value) + _FIELD_EXTRA
        limits = self._server._limits
        if self._trailers + len(self._headers) > limits.max_headers:
            self._reject(431, f"more than max_headers ({limits.max_headers}) header fields")
        if self._head_size > limits.max_header_bytes:
            self._head_too_large()

    def _other_method(self, method: bytes) -> str:
        """A method other than the usual ones; CONNECT is 400 (this server is no tunnel)."""
        if method == b"CONNECT":
            self._reject(400, "bad request: CONNECT is not served (this is no tunnel)")
        return method.decode("ascii")

    def _replay_head(self) -> bytes:
        """A head that makes a fresh parser read the body that follows as this one's."""
        parser = self._parser
        version = parser.get_http_version().encode()
        if self._chunked:
            framing = b"Transfer-Encoding: chunked"
        else:
            framing = b"Content-Length: %d" % self._content_length
        connection = b"keep-alive" if parser.should_keep_alive() else b"close"
        return b"POST / HTTP/%s\r\n%s\r\nConnection: %s\r\n\r\n" % (version, framing, connection)

    def _replay(self, head: bytes) -> None:
        """Go on with a fresh parser, primed with ``head`` (its callbacks ignored)."""
        self._parser = parser = httptools.HttpRequestParser(self)
        self._replaying = True
        try:
            parser.feed_data(head)
        finally:
            self._replaying = False

    def on_headers_complete(self) -> None:
        if self._replaying:
            return
        parser = self._parser
        server = self._server
        self._head_done = True
        if self._big_read or len(self._headers) > self._max_headers:
            spanned = self._head_open  # the head began in an earlier read
            self._head_open = False  # (for _feed_bounded: the head is complete)
            self._check_head()
        else:  # (a head that began in an earlier read is parsed with _big_read set)
            spanned = False
        if self._url_parts is not None:
            self._url = b"".join(self._url_parts)
            self._url_parts = None
        method = parser.get_method()
        self._method = _METHODS.get(method) or self._other_method(method)
        has_body = self._chunked or self._content_length > 0
        target = server._targets.get(self._url)
        if target is None:
            target = self._split_target()
        self._path, self._query = target

        # llhttp would take the body of an Upgrade offer as the new protocol: the offer is
        # ignored, and the body read by a fresh parser (see _feed). An upgrade needs
        # "Connection: upgrade": only then is llhttp asked (a call per request otherwise).
        if has_body and self._connection_header and parser.should_upgrade():
            self._upgrade_body = self._replay_head()
        # Contract §11.4: a browser's cross-site write, or rebinding. The guard is asked only
        # if it might refuse (see BrowserGuard.quick_hosts): the call ran 84 bytecodes of the
        # ~1,100 of a POST /event; this test runs 9.
        if self._guard_asks or (self._host not in self._quick_hosts and not self._any_host):
            refused = self._guard.check(self._method, self._headers)
        else:
            refused = None
        early: Response | Stream | None
        if refused is not None:
            server._rejected(refused[0])
            early = _error(*refused)
        else:
            try:
                early = self._handler.precheck(self._method, self._path, self._headers)
            except Exception:
                server._log_exception(
                    "precheck", "precheck failed for %s %s", self._method, self._path
                )
                server._rejected(500)
                early = _error(500, "internal error")
        stream = early is STREAM
        if stream or early is None:
            if self._content_length > server._max_body:
                server._rejected(413)
                early = _error(413, self._body_too_large())
            elif stream:
                early = None
        if early is not None:
            early = cast(Response, early)
            if has_body:  # answer without reading the body, then close
                self._fail(early, own=False)
                raise _StopParsing
            self._early = early  # sent in turn when the (empty) message completes
            return
        if has_body:
            # The body's clock starts now: if the head came in this read, as good as when the
            # head's did (on_url), so no clock is read for the usual request.
            # When the two timeouts are equal (the default), that deadline stands as it is.
            deadline = self._deadline
            if spanned or deadline is None:
                self._set_deadline(server._body_timeout, request=True)
            elif server._body_extra:
                deadline = self._deadline = deadline + server._body_extra
                if self._timer is None or self._timer_at > deadline:
                    self._arm(deadline)
            if self._expect and not self._is_http10():
                if not self._busy:
                    self._transport.write(_CONTINUE)
                else:  # earlier responses go first
                    self._continue_pending = True
            if stream:
                self._start_stream()

    def _start_stream(self) -> None:
        """Hand the request to its handler now, its body to come through ``body_stream``."""
        body = self._body_stream = self._last_stream = RequestBody(self)
        keep_alive = self._parser.should_keep_alive()
        http10 = (not keep_alive or self._connection_header) and self._is_http10()
        request = Request(
            self._method, self._path, self._query, self._headers, b"", self, body_stream=body
        )
        self._enqueue((request, keep_alive, http10, self._method == "HEAD"))

    def _body_taken(self, size: int, buffered: int) -> None:
        """The handler took ``size`` bytes of the streamed body; ``buffered`` are left."""
        self._server._release(self, size)
        if self._stream_full and buffered <= _STREAM_BUFFER // 2:
            self._stream_full = False
            if not self._stopped:
                self._resume_reading()

    def _body_too_large(self) -> str:
        return f"request body too large: over max_body_bytes ({self._server._max_body} bytes)"

    def _split_target(self) -> tuple[str, str]:
        """(path, query) of an origin-form target (short ones are remembered); else 400."""
        url = self._url
        if url[:1] != b"/":
            self._reject(400, "bad request: the target must be a path (origin-form)")
        if _BAD_TARGET.search(url) is not None:
            self._reject(400, "bad request: a '#' or a control character in the target")
        path, _, query = url.partition(b"?")
        target = path.decode("latin-1"), query.decode("latin-1")
        targets = self._server._targets
        if len(targets) < _TARGET_CACHE_MAX and len(url) <= _TARGET_CACHE_KEY_MAX:
            targets[url] = target
        return target

    def _is_http10(self) -> bool:
        """Whether the request is HTTP/1.0 (asked only when it matters: the call is slow)."""
        return self._parser.get_http_version() == "1.0"

    def on_body(self, body: bytes) -> None:
        # (Lean: it runs for every body. A Content-Length body was checked against the limit
        # already, so only a chunked one is counted: that took 5 of its 53 bytecodes.)
        size = len(body)
        if self._body_stream is None:
            self._body.append(body)
        else:
            size = self._stream_chunk(body)
        self._held += size
        server = self._server
        server._inflight += size
        if server._inflight > server._max_inflight:
            server._over_budget(self)
        if self._chunked:
            self._body_size += len(body)
            if self._body_size > server._max_body:
                self._reject(413, self._body_too_large())

    def _stream_chunk(self, body: bytes) -> int:
        """Hand a piece of a streamed body on; the bytes now held for it (0: dropped, the
        request was answered)."""
        buffered = cast(RequestBody, self._body_stream)._put(body)
        if not buffered:
            return 0
        if buffered > _STREAM_BUFFER:
            self._stream_full = True
            self._pause_reading()
        return len(body)

    def on_message_complete(self) -> None:
        if self._upgrade_body is not None:
            return  # llhttp skipped the body of an Upgrade offer: it is still to come
        self._in_message = self._continue_pending = False
        self._deadline = None
        keep_alive = self._parser.should_keep_alive()
        # An HTTP/1.1 request keeps the connection unless it says otherwise; HTTP/1.0 only
        # with a Connection header. So the version matters only in those two cases.
        http10 = self._http10 = (not keep_alive or self._connection_header) and self._is_http10()
        if not keep_alive:
            self._stopped = True
            self._pause_reading()
        stream = self._body_stream
        if stream is not None:  # its request is with the handler already
            self._body_stream = None
            stream._end()
            return
        head = self._method == "HEAD"
        if self._early is not None:
            self._enqueue((self._early, keep_alive, http10, head))
            return
        body = self._body
        request = Request(
            self._method,
            self._path,
            self._query,
            self._headers,
            body[0] if len(body) == 1 else b"".join(body),
            self,
        )
        if self._busy or self._queue or self._write_paused:
            self._enqueue((request, keep_alive, http10, head))
            return
        # Idle: _enqueue and _answer_now, inline for the usual request.
        try:
            answer = self._handler.handle(request)
        except Exception:
            answer = self._handler_failed(request)
        if answer is LATER:
            self._busy = True
            self._later = (request, keep_alive, http10, head)
        elif isinstance(answer, Response) and answer.stream is None:
            self._deliver(answer, keep_alive, http10, head)
        else:
            self._queue.append((answer, keep_alive, http10, head))
            self._start_task()

    # -- the client leaving ----------------------------------------------------------------

    def _watch_left(self, callback: Callable[[], None]) -> Callable[[], None]:
        if self._lost or self._eof:
            self._loop.call_soon(callback)
            return _nothing
        self._on_left.add(callback)
        return lambda: self._on_left.discard(callback)

    def _client_left(self) -> None:
        if not self._on_left:
            return
        callbacks, self._on_left = self._on_left, set()
        for callback in callbacks:
            callback()

    # -- answering -------------------------------------------------------------------------

    def _enqueue(self, item: _Item) -> None:
        if not self._busy and not self._queue and not self._write_paused:
            next_item = self._answer_now(item)
            if next_item is None:
                return
            item = next_item
        self._queue.append(item)
        if not self._busy:
            self._start_task()
        elif len(self._queue) >= _PIPELINE_LIMIT:
            self._pause_reading()

    def _start_task(self) -> None:
        """Have the connection's task answer what is queued (starting it if need be)."""
        self._busy = True
        if self._wakeup is not None:
            self._wake()
        elif self._task is None:
            self._task = self._loop.create_task(self._run())

    def _wake(self) -> None:
        wakeup = self._wakeup
        self._wakeup = None
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    # On an idle connection, the usual request is answered without the task: at once when
    # the handler returns a Response, or by request.reply() when it returns LATER. An
    # awaitable, a streamed response, or a request arriving while another is being
    # answered goes to the task, which answers in order.

    def _answer_now(self, item: _Item) -> _Item | None:
        """Answer ``item`` outside the task if it can be; else the item for the task."""
        request, keep_alive, http10, head = item
        if isinstance(request, Request):
            answer = self._call_handler(request)
            if answer is LATER:
                self._busy = True
                self._later = item
                return None
        else:
            answer = request
        if isinstance(answer, Response) and answer.stream is None:
            self._deliver(answer, keep_alive, http10, head)
            return None
        return (answer, keep_alive, http10, head)

    def _reply(self, request: Request, response: Response) -> None:
        later = self._later
        if later is None or later[0] is not request:
            raise RuntimeError("reply() for a request that is not waiting for one")
        self._later = None
        waiter = self._later_waiter
        if waiter is not None:  # the task is waiting for it
            self._later_waiter = None
            if not waiter.done():
                waiter.set_result(response)
            return
        self._busy = False
        if self._closed:
            return  # the client left, or the server is stopping: nobody to answer
        _, keep_alive, http10, head = later
        if response.stream is None:
            self._deliver(response, keep_alive, http10, head)
        else:
            self._queue.appendleft((response, keep_alive, http10, head))
            self._start_task()

    def _deliver(self, response: Response, keep_alive: bool, http10: bool, head: bool) -> None:
        """Send a (non-streamed) response outside the task, then go idle or on."""
        if self._shutdown or (self._stopped and not self._queue):
            keep_alive = False  # the last response on this connection
        elif self._body_stream is not None and not self._queue:
            keep_alive = self._answered_mid_body()
        self._send(response, keep_alive, http10, head)
        held = self._held
        if held and not self._queue:
            server = self._server
            if (
                self._in_message
                or self._last_stream is not None
                or server._memory_waiting
                or server._overdraft is not None
            ):
                self._release_answered()
            else:  # _release_answered's usual case, inline (measured: its call was 45 bytecodes)
                self._held = 0
                server._inflight -= held
        if not keep_alive:
            self._close()
        elif self._queue or self._write_paused:
            self._start_task()  # waits for the client to read, then answers what is queued
        elif self._eof or self._shutdown or self._continue_pending or self._reading_paused:
            self._became_idle()
        elif not self._in_message:
            # _became_idle's usual case, inline: the idle timeout starts.
            self._request_timer = False
            deadline = self._deadline = self._loop.time() + self._server._idle_timeout
            if self._timer is None or self._timer_at > deadline:
                self._arm(deadline)

    def _answered_mid_body(self) -> bool:
        """The streamed request is answered before its body ended: read no more of it, and
        close after the answer. Returns the answer's keep-alive: False."""
        stream = cast(RequestBody, self._body_stream)
        self._body_stream = None
        stream._discard()
        self._stopped = self._linger_on_close = True
        self._in_message = self._continue_pending = False
        self._deadline = None
        self._pause_reading()
        return False

    def _release_answered(self) -> None:
        """Nothing is left to answer: the bodies of the requests answered are not held."""
        stream = self._body_stream
        if stream is not None:  # the body still arriving: what its handler has not taken
            keep = stream._buffered
        else:
            # The body being read (its size counted here: on_body counts a chunked one only).
            keep = sum(map(len, self._body)) if self._in_message else 0
        last = self._last_stream
        if last is not None and last is not stream:
            last._discard()  # its handler is done: what it left is dropped
            self._last_stream = None
        size = self._held - keep
        if size > 0:  # _release, inline for the usual case: nobody waits for memory
            server = self._server
            if server._memory_waiting or server._overdraft is not None:
                server._release(self, size)
            else:
                self._held = keep
                server._inflight -= size

    def _call_handler(self, request: Request) -> Response | Awaitable[Response] | Later:
        try:
            return self._handler.handle(request)
        except Exception:
            return self._handler_failed(request)

    def _handler_failed(self, request: Request | None) -> Response:
        """Log the exception being handled; a 500 to send instead (or, if the client's
        streamed body broke off, the answer that says why)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, RequestBodyError):
            return exc.response
        where = f" for {request.method} {request.path}" if request is not None else ""
        self._server._log_exception("handler", "handler failed%s", where)
        self._server._rejected(500)
        return _error(500, "internal error")

    async def _answer(self, item: Request | Response | Awaitable[Response]) -> Response:
        """The response to a queued item (the task's side of answering)."""
        if isinstance(item, Response):
            return item
        request = item if isinstance(item, Request) else None
        answer = self._call_handler(item) if isinstance(item, Request) else item
        if isinstance(answer, Response):
            return answer
        try:
            if answer is LATER:
                self._later = (item, False, False, False)
                waiter: asyncio.Future[Response] = self._loop.create_future()
                self._later_waiter = waiter
                return await waiter
            return await answer
        except Exception:
            return self._handler_failed(request)

    async def _run(self) -> None:
        """Answer the queued requests in order, then wait for more, until the connection ends.
        One task per connection rather than per request: waking it costs less."""
        queue = self._queue
        server = self._server
        try:
            while not self._closed:
                if self._write_paused:
                    await self._drain()
                    continue
                if not queue:
                    self._busy = False
                    self._became_idle()
                    if not self._closed:
                        self._wakeup = self._loop.create_future()
                        await self._wakeup  # by _enqueue, or connection_lost
                    continue
                item, keep_alive, http10, head = queue.popleft()
                if self._reading_paused and not self._stopped and len(queue) <= _RESUME_AT:
                    self._resume_reading()
                response = await self._answer(item)
                if self._closed:
                    if response.stream is not None:
                        await self._aclose(response.stream)
                    break
                if self._shutdown or (self._stopped and not queue):
                    keep_alive = False  # the last response on this connection
                elif self._body_stream is not None and not queue:
                    keep_alive = self._answered_mid_body()
                if response.stream is None:
                    self._send(response, keep_alive, http10, head)
                else:
                    keep_alive = await self._send_stream_checked(response, keep_alive, http10, head)
                if self._held and not queue:
                    self._release_answered()
                if not keep_alive:
                    self._close()
                    break
        except Exception:  # a bug: do not leave the client waiting
            server._logger.exception("failed to answer a request")
            self.abort()
        finally:
            self._busy = False
            self._task = None
            if self._lost:
                server._forget(self)

    async def _send_stream_checked(
        self, response: Response, keep_alive: bool, http10: bool, head: bool
    ) -> bool:
        try:
            return await self._send_stream(response, keep_alive, http10, head)
        except Exception:  # a malformed Response: nothing of it was written
            self._invalid_response(response)
            await self._aclose(cast(AsyncIterator[bytes], response.stream))
            self._send(_error(500, "internal error"), keep_alive, http10, head)
            return keep_alive

    def _invalid_response(self, response: Response) -> None:
        self._server._log_exception("response", "invalid response (status %r)", response.status)
        self._server._rejected(500)

    def _head(
        self, response: Response, framing: bytes, keep_alive: bool, http10: bool
    ) -> list[bytes]:
        parts = [self._server._prefix(response.status, response.content_type)]
        for name, value in response.headers:
            parts.append(_header_line(name, value))
        parts.append(framing)
        if not keep_alive:
            parts.append(b"Connection: close\r\n\r\n")
        elif http10:
            parts.append(b"Connection: keep-alive\r\n\r\n")
        else:
            parts.append(_CRLF)
        return parts

    def _send(self, response: Response, keep_alive: bool, http10: bool, head: bool) -> None:
        """Write ``response``; if it is malformed (a bad status, CR or LF in a header), nothing
        of it is written: the error is logged and a 500 goes instead."""
        body = response.body
        if response.status in _NO_BODY_STATUSES:
            framing = body = b""
        else:
            framing = b"Content-Length: %d\r\n" % len(body)
            if head:
                body = b""
        try:
            if keep_alive and not http10 and not response.headers:  # the usual case
                server = self._server
                prefix = server._prefixes.get((response.status, response.content_type))
                if prefix is None:
                    prefix = server._prefix(response.status, response.content_type)
                data = b"".join((prefix, framing, _CRLF, body))
            else:
                parts = self._head(response, framing, keep_alive, http10)
                parts.append(body)
                data = b"".join(parts)
        except Exception:
            self._invalid_response(response)
            self._send(_error(500, "internal error"), keep_alive, http10, head)
            return
        self._transport.write(data)

    async def _send_stream(
        self, response: Response, keep_alive: bool, http10: bool, head: bool
    ) -> bool:
        """Send a streamed response; return whether the connection may be kept."""
        stream = cast(AsyncIterator[bytes], response.stream)
        length: int | None = None
        for name, value in response.headers:
            if name.lower() == "content-length":
                length = int(value)
        chunked = length is None and not http10
        if length is None and http10:
            keep_alive = False  # HTTP/1.0 has no chunked framing: the close ends the body
        framing = b"Transfer-Encoding: chunked\r\n" if chunked and not head else b""
        write = self._transport.write
        write(b"".join(self._head(response, framing, keep_alive, http10)))
        sent = 0
        self._streaming = True
        try:
            if head:
                return keep_alive
            async for chunk in stream:
                if self._lost:
                    return False
                if not chunk:
                    continue  # an empty chunk would end a chunked body
                if chunked:
                    write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                else:
                    sent += len(chunk)
                    if length is not None and sent > length:
                        self._server._logger.error("stream exceeds content-length %d", length)
                        return False
                    write(chunk)
                if self._write_paused:
                    await self._drain()
            if chunked:
                write(_LAST_CHUNK)
            elif length is not None and sent != length:
                self._server._logger.error("stream shorter than content-length %d", length)
                return False
            return keep_alive
        except asyncio.CancelledError:
            if not self._lost:
                raise
            _uncancel()  # our own cancel from connection_lost: the client left
            return False
        except Exception:
            if not self._lost:
                self._server._log_exception("stream", "response stream failed")
            return False  # the body is cut short: closing tells the client
        finally:
            self._streaming = False
            await self._aclose(stream)

    async def _aclose(self, stream: AsyncIterator[bytes]) -> None:
        aclose = getattr(stream, "aclose", None)
        if aclose is None:
            return
        try:
            await aclose()
        except asyncio.CancelledError:
            if not self._lost:
                raise
            _uncancel()
        except Exception:
            self._server._logger.exception("closing the response stream failed")

    async def _drain(self) -> None:
        """Wait for the client to read what was written: at most ``send_timeout``."""
        if self._lost or not self._write_paused:
            return
        if self._drain_waiter is None:
            self._drain_waiter = self._loop.create_future()
        timed = self._deadline is None
        if timed:
            self._set_deadline(self._server._send_timeout)
        await self._drain_waiter
        if timed:
            self._deadline = None

    # -- connection state ------------------------------------------------------------------

    def _fail(self, response: Response, *, own: bool = True) -> None:
        """Read no more requests; send ``response`` after those queued, then close.
        ``own``: the server's error, not the handler's answer (counted by on_reject)."""
        if own:
            self._server._rejected(response.status)
        self._stopped = self._linger_on_close = True
        self._in_message = self._continue_pending = False
        self._deadline = None
        self._pause_reading()
        self._enqueue((response, False, False, False))

    def _became_idle(self) -> None:
        if self._eof or (self._shutdown and not self._in_message):
            self._close()
            return
        if self._continue_pending:
            self._continue_pending = False
            self._transport.write(_CONTINUE)
        if self._reading_paused and not self._stopped:
            self._resume_reading()
        if not self._in_message:
            self._set_deadline(self._server._idle_timeout)

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and not (self._lost or self._memory_paused or self._stream_full):
            self._reading_paused = False
            self._transport.resume_reading()
            if self._in_message:  # the pause was ours, not the client's
                server = self._server
                timeout = server._body_timeout if self._head_done else server._header_timeout
                self._set_deadline(timeout, request=True)

    def _close(self) -> None:
        """Close after the written data is flushed (lingering if input may be unread)."""
        if self._closed:
            return
        self._closed = self._stopped = True
        self._deadline = None
        transport = self._transport
        if self._linger_on_close and not self._eof and transport.can_write_eof():
            # Closing with unread input makes the kernel send a reset, which can destroy
            # the response before the client reads it: half-close, drain, then close.
            self._lingering = True
            transport.write_eof()
            self._resume_reading()
            self._set_deadline(_LINGER_SECONDS)
        else:
            transport.close()
            self._set_deadline(self._server._send_timeout)  # for the client to read the rest

    def shutdown(self) -> None:
        """Stop keeping the connection alive: close it now if idle, else after its response."""
        self._shutdown = True
        if not self._busy and not self._in_message:
            self._close()

    def abort(self) -> asyncio.Task[None] | None:
        """Close at once; return the running task, if any."""
        self._closed = self._stopped = True
        if not self._lost:
            self._transport.abort()
        return self._task

    def _set_deadline(self, timeout: float, *, request: bool = False) -> None:
        """Act in ``timeout`` seconds: for a ``request`` (its head or body) with a 408 if
        nothing is being answered, else by closing."""
        self._request_timer = request
        deadline = self._deadline = self._loop.time() + timeout
        if self._timer is None or self._timer_at > deadline:
            self._arm(deadline)

    def _timed_out(self) -> None:
        """A request's head or body did not arrive in time: 408, then close."""
        self._fail(self._timeout_error())

    def _timeout_error(self) -> Response:
        server = self._server
        if self._head_done and self._in_message:
            key, timeout = "body_timeout_secs", server._body_timeout
            what = "request body"
        else:
            key, timeout = "header_timeout_secs", server._header_timeout
            what = "request head"
        return _error(408, f"{what} not received within {key} ({timeout:g}s)")

    def _arm(self, deadline: float) -> None:
        """Have the timer fire at ``deadline`` (nearer than where it is set, or unset)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        if self._loop.time() + 1e-3 >= deadline:
            if self._request_timer and self._body_stream is not None:
                self._server._rejected(408)
                self._break_stream(self._timeout_error())
            elif self._request_timer and not self._busy and not self._queue and not self._closed:
                self._timed_out()
            else:
                self.abort()  # idle keep-alive, lingering done, or a client not reading
        else:
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)


class HttpServer:
    """An HTTP/1.1 server calling one `Handler`, within ``limits`` (see `HttpLimits`).

    ``max_body_bytes``, ``max_connections``, ``header_timeout`` and ``idle_timeout``, when
    given, override those fields of ``limits``. ``allowed_hosts``: further names clients may
    call the listener by, for its `BrowserGuard` (ValueError naming a bad one). ``on_reject
    (status)`` is called for each error the server itself answers: 400, 403, 408, 413, 414,
    431, 500 (a failing handler), 503.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        host: str,
        port: int,
        limits: HttpLimits | None = None,
        max_body_bytes: int | None = None,
        max_connections: int | None = None,
        header_timeout: float | None = None,
        idle_timeout: float | None = None,
        allowed_hosts: Sequence[str] = (),
        on_reject: Callable[[int], None] | None = None,
        logger: logging.Logger | None = None,
        server_name: str = "observer-core",
    ) -> None:
        overrides = {
            key: value
            for key, value in (
                ("max_body_bytes", max_body_bytes),
                ("max_connections", max_connections),
                ("header_timeout_secs", header_timeout),
                ("idle_timeout_secs", idle_timeout),
            )
            if value is not None
        }
        self._limits = limits = HttpLimits.of(limits, **overrides)
        self._handler = handler
        self._host = host
        self._port = port
        self._allowed_hosts = normalize_allowed_hosts(allowed_hosts)
        self._guard: BrowserGuard | None = None  # built by start(), once the port is known
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
        self._url_room = limits.max_url_bytes - _LINE_EXTRA - _MIN_METHOD
        self._max_inflight = limits.max_inflight_bytes
        self._inflight = 0  # request body bytes held, all connections together
        self._overdraft: _Connection | None = None  # may read on past max_inflight_bytes
        self._memory_waiting: dict[_Connection, None] = {}  # paused for it, in order
        self._log_gate = _LogGate()
        self._on_reject = on_reject
        self._logger = logger or logging.getLogger(__name__)
        self._server_header = _header_line("Server", server_name) if server_name else b""
        self._prefixes: dict[tuple[int, str | None], bytes] = {}
        self._targets: dict[bytes, tuple[str, str]] = {}
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._closing = False
        self._all_closed: asyncio.Event | None = None

    async def start(self, sock: socket.socket | None = None) -> None:
        """Bind and listen; raises OSError if the address is taken. With ``sock`` (a bound
        listening socket, from :meth:`listening_socket` of a server it succeeds), serve on
        it instead: the port never closes, and connections waiting in its backlog are
        served by this server."""
        if self._server is not None:
            raise RuntimeError("server already started")
        loop = asyncio.get_running_loop()
        backlog = min(max(self._max_connections, 128), 4096)
        self._server = await (
            loop.create_server(
                lambda: _Connection(self, loop),
                self._host,
                self._port,
                reuse_address=True,
                backlog=backlog,
                start_serving=False,  # not before the guard, which needs the bound port
            )
            if sock is None
            else loop.create_server(
                lambda: _Connection(self, loop), sock=sock, backlog=backlog, start_serving=False
            )
        )
        self._guard = BrowserGuard(self._host, self.port, self._allowed_hosts)
        await self._server.start_serving()

    @property
    def port(self) -> int:
        """The bound port (of the first socket, if the host resolved to several)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server not started")
        return int(self._server.sockets[0].getsockname()[1])

    def listening_socket(self) -> socket.socket | None:
        """A duplicate of the bound listening socket, for a successor's :meth:`start`: it
        stays open after this server stops. None unless exactly one socket is bound."""
        if self._server is None or len(self._server.sockets) != 1:
            return None
        return socket.socket(fileno=os.dup(self._server.sockets[0].fileno()))

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, close idle connections now, give in-flight requests up to
        ``grace`` seconds to finish, then close what is left."""
        server = self._server
        if server is None or self._closing:
            return
        self._closing = True
        server.close()
        for conn in list(self._connections):
            conn.shutdown()
        if self._connections:
            self._all_closed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), grace)
        tasks = [task for conn in list(self._connections) if (task := conn.abort()) is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_STOP_CANCEL_WAIT)
            if pending:
                self._logger.warning("%d request handlers ignored cancellation", len(pending))
        await server.wait_closed()

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- for _Connection ---------------------------------------------------------------------

    def _prefix(self, status: int, content_type: str | None) -> bytes:
        """The status line, Server and Content-Type headers, cached per (status, type)."""
        key = (status, content_type)
        prefix = self._prefixes.get(key)
        if prefix is None:
            if not 100 <= status <= 999:
                raise ValueError(f"invalid status {status}")
            prefix = _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status
            prefix += self._server_header
            if content_type is not None:
                prefix += _header_line("Content-Type", content_type)
            if len(self._prefixes) < 256:
                self._prefixes[key] = prefix
        return prefix

    @property
    def limits(self) -> HttpLimits:
        """The limits this server applies."""
        return self._limits

    def _log_exception(self, kind: str, message: str, *args: object) -> None:
        """Log the exception being handled, at most once a second per ``kind`` (a client
        can cause it), with the count of those left out since."""
        suppressed = self._log_gate.allow(kind)
        if suppressed is None:
            return
        if suppressed:
            message += f" ({suppressed} more like it since the last one, not logged)"
        self._logger.exception(message, *args)

    def _over_budget(self, conn: _Connection) -> None:
        """Past ``max_inflight_bytes``: ``conn`` stops reading until answers go out, unless
        it may finish its request first (one connection at a time, so none waits forever
        on the others; it holds at most ``max_body_bytes`` more)."""
        if conn is self._overdraft:
            return
        if conn._body_stream is not None:  # paused until its handler takes what it has
            conn._stream_full = True
            conn._pause_reading()
            return
        if self._overdraft is None and not conn._busy and not conn._queue:
            self._overdraft = conn
            return
        if not conn._memory_paused:
            conn._pause_reading()
            conn._memory_paused = True
            self._memory_waiting[conn] = None

    def _release(self, conn: _Connection, size: int) -> None:
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
            if not other._stopped:
                other._resume_reading()

    def _forget_memory(self, conn: _Connection) -> None:
        """``conn`` is gone: what it held is free."""
        self._memory_waiting.pop(conn, None)
        conn._memory_paused = False
        if conn._held or conn is self._overdraft:
            self._release(conn, conn._held)

    def _rejected(self, status: int) -> None:
        if self._on_reject is not None:
            self._on_reject(status)

    def _forget(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        if not self._connections and self._all_closed is not None:
            self._all_closed.set()
