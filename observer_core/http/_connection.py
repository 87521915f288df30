"""One client connection: the parser's callbacks, the request being read, and the answers
written back in order (an asyncio Protocol over httptools)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final, cast

import httptools

from ..http_guard import BrowserGuard
from ._framing import (
    BAD_TARGET,
    BUSY,
    CONTINUE,
    CRLF,
    FIELD_EXTRA,
    HEADER_NAMES,
    LAST_CHUNK,
    LINE_EXTRA,
    METHODS,
    NO_BODY_STATUSES,
    SPECIAL_HEADERS,
    TARGET_CACHE_KEY_MAX,
    TARGET_CACHE_MAX,
    chunk_of,
    response_head,
)
from ._incoming import Incoming
from ._messages import (
    LATER,
    STREAM,
    Later,
    Request,
    RequestBody,
    RequestBodyError,
    Response,
    Stream,
    json_error,
)
from ._shared import Shared

# The names of other modules read per request, as this module's own ``Final`` ones: compiled,
# those are C statics, where an imported name is looked up in the module's dict each time.
_Request: Final = Request
_Response: Final = Response
_LATER: Final = LATER
_STREAM: Final = STREAM

_PIPELINE_LIMIT: Final = 16  # requests queued on one connection before it stops reading
_RESUME_AT: Final = _PIPELINE_LIMIT // 2  # ... and starts again
_STREAM_BUFFER: Final = 256 << 10  # a streamed body's bytes not yet taken before reading pauses
_LINGER_SECONDS: Final = 2.0  # after an error response, how long to drain unread input


# Where a connection is (``Connection._state``). In order: from DONE on no request is
# parsed, from LINGERING on no response is written. (Answering runs beside reading: requests
# pipelined behind one being answered are read and queued; see ``Connection._busy``.)
# Plain ``Final`` ints, not an enum: compiled, a test of the state is a C comparison rather
# than a lookup of the name and a comparison of objects (measured: bench/instructions.py).
IDLE: Final = 0
"""Between requests: the next one may begin (a new connection's first head is timed)."""
HEAD: Final = 1
"""A request's head is arriving (``header_timeout_secs``)."""
BODY: Final = 2
"""Its body, and a chunked body's trailers, are arriving (``body_timeout_secs``)."""
DONE: Final = 3
"""No further request is read: what is queued is answered, then the connection closes."""
LINGERING: Final = 4
"""Answered and half-closed after an error: unread input is drained a while, then close."""
CLOSED: Final = 5
"""Closed: what was written is flushing to the client."""
LOST: Final = 6
"""The transport is gone."""

FIRST_REQUEST_GRACE: Final = 1.0
"""Seconds a server that is stopping waits for a new connection's first request."""


def _nothing() -> None:
    pass


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


AnswerItem = Request | Response | Awaitable[Response]
"""What the task answers a queued request from (see `Incoming.answer`)."""


class _StopParsing(Exception):
    """Raised from a parser callback after the connection was told to stop reading."""


class Connection:
    """One client connection: parses requests and answers them in order."""

    _transport: asyncio.Transport

    def __init__(self, server: Shared, loop: asyncio.AbstractEventLoop) -> None:
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
        self._prefixes = server._prefixes  # the response prefixes' cache (see _send)
        self._lengths = server._lengths  # Content-Length values (on_header) ...
        self._length_lines = server._length_lines  # ... and lines (_deliver)
        # The calls made per request, bound once: compiled, a stored bound method is called
        # without looking the method up on its object's type each time (measured:
        # bench/instructions.py). (_replay binds a new parser's.)
        self._parser = parser = httptools.HttpRequestParser(self)
        self._feed_data: Callable[[bytes | memoryview], None] = parser.feed_data
        self._get_method: Callable[[], bytes] = parser.get_method
        self._keeps_alive: Callable[[], bool] = parser.should_keep_alive
        self._time: Callable[[], float] = loop.time
        self._precheck = self._handler.precheck
        self._handle = self._handler.handle
        self._queue: deque[Incoming] = deque()
        self._task: asyncio.Task[None] | None = None  # answers requests; lives with the connection
        self._busy = False  # the task is answering requests (else it waits for one)
        self._wakeup: asyncio.Future[None] | None = None
        self._later: Incoming | None = None  # the request whose handler returned LATER
        self._later_waiter: asyncio.Future[Response] | None = None  # the task awaits its reply
        self._state: int = IDLE
        self._incoming = Incoming()  # the request being read (or the last one read)
        self._big_read = False  # the read being parsed is big (see data_received)
        self._head_open = False  # an incomplete head was left in the parser by a read ...
        self._head_carried = 0  # ... and these bytes were read since (bounded as they come)
        self._held = 0  # request body bytes read and not yet answered (max_inflight_bytes)
        self._memory_paused = False  # reading paused for max_inflight_bytes
        self._body_stream: RequestBody | None = None  # the streamed body being read
        self._last_stream: RequestBody | None = None  # the latest one, until answered
        self._stream_full = False  # reading paused until the handler takes more of it
        self._upgrade_body: bytes | None = None  # an Upgrade offer's body is to come (_replay)
        self._replaying = False
        self._linger_on_close = False  # input may be left unread: drain it before closing
        self._eof = False  # the client closed its side
        self._shutdown = False  # the server is stopping: keep the connection no longer
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._streaming = False  # a streamed response is being sent
        self._on_left: set[Callable[[], None]] = set()  # Request.on_client_left callbacks
        # One timer serves the header, idle and linger timeouts: it is re-armed only
        # when it fires early or a nearer deadline comes, not once per request.
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._request_timer = False  # the deadline is for a request's head or body (408)

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._write: Callable[[bytes], None] = self._transport.write
        server = self._server
        if server._closing or len(server._connections) >= server._max_connections:
            self._state = CLOSED
            if not server._closing:
                self._transport.write(BUSY)
                server._rejected(503)
            transport.close()
            return
        server._connections.add(self)
        self._set_deadline(server._header_timeout, request=True)  # the first request's head

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = LOST
        self._queue.clear()
        self._client_left()
        if self._body_stream is not None:
            self._break_stream(
                json_error(400, "bad request: the client left before its body ended")
            )
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
        if self._state >= DONE:
            return  # lingering, or nothing more is read on this connection
        # A head (or request line) that begins and ends in this read is no longer than it:
        # only a big read, or a head that began in an earlier one, has its bytes counted
        # (on_url, on_headers_complete; _receive_checked). The usual read is parsed here,
        # inline (measured: a call, and the checks of every read, were 27 bytecodes).
        if self._head_open or len(data) > self._small_read:
            self._receive_checked(data)
            return
        try:
            self._feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._feed_failed(data, exc)
        if self._state == HEAD:
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
        if self._state == HEAD:
            self._head_left_open()
        else:
            self._head_open = False

    def _head_left_open(self) -> None:
        """A read ended inside a head: check its fields' count, and bound what is to come."""
        if len(self._incoming.headers) > self._max_headers:
            with contextlib.suppress(_StopParsing):
                self._check_head()
        elif not self._head_open:
            self._head_open = True
            self._head_carried = 0
            self._incoming.unusual = True  # its head is checked whole when it completes

    def _feed_bounded(self, data: bytes) -> bool:
        """Feed ``data`` to an incomplete head no further than ``max_header_bytes``: 431 if
        the head is not complete by then, else go on with the rest. Whether parsing goes on."""
        view = memoryview(data)
        room = self._max_head - self._head_carried
        self._feed(view[:room])
        if self._state >= DONE:
            return False
        if self._head_open:  # the head is still incomplete (on_headers_complete clears it)
            with contextlib.suppress(_StopParsing):
                self._head_too_large()
            return False
        self._head_open = False
        self._feed(view[room:])
        return self._state < DONE

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
            if self._state >= DONE:
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
        if self._state >= DONE:
            return  # our _StopParsing, or data after "Connection: close": ignored
        if isinstance(exc, httptools.HttpParserCallbackError):  # a bug in a callback
            self._server._log_exception("callback", "HTTP parser callback failed")
            self._fail(json_error(500, "internal error"))
        else:
            self._fail(json_error(400, f"bad request: {exc}"))

    def eof_received(self) -> bool | None:
        self._eof = True
        self._client_left()
        # A half-closed connection still gets the answers to what it sent, then is closed;
        # but a stream (server-sent events) is for a reader that has left: end it.
        return True if self._busy and not self._streaming and self._state != LINGERING else None

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
        if self._state != IDLE:
            self._more_url(url)
            return
        self._state = HEAD
        if self._busy or self._queue:  # the last request may be waiting: a new Incoming
            incoming = self._incoming = Incoming(url)
        else:  # everything is answered: the last one is recycled (measured: a new slot
            # object cost ~1,000 instructions more per POST /event, bench/instructions.py)
            incoming = self._incoming
            if incoming.unusual:
                incoming.usual()
            # incoming.begin(url), inline: measured, the call cost ~480 instructions per
            # POST /event (bench/instructions.py).
            incoming.url = url
            incoming.headers = []
            incoming.body = []
            incoming.content_length = 0
            incoming.host = None
        if self._big_read and len(url) > self._url_room:  # (a small read holds no long one)
            self._check_url(len(url))
        # The head's clock starts now, unless it runs already for this request (a new
        # connection's first head is timed from the opening: a trickled method gains nothing).
        if not self._request_timer or self._deadline is None:
            # _set_deadline(header_timeout, request=True), inline: measured, the call cost
            # 848 instructions per POST /event (bench/instructions.py).
            self._request_timer = True
            deadline = self._deadline = self._time() + self._server._header_timeout
            if self._timer is None or self._timer_at > deadline:
                self._arm(deadline)

    def _more_url(self, url: bytes) -> None:
        """A further piece of the target (it came in several reads): kept in a list."""
        if self._replaying:
            return
        if self._state != HEAD:  # no request is read any more: it is not begun
            raise _StopParsing
        incoming = self._incoming
        if incoming.url_parts is None:
            incoming.unusual = True
            incoming.url_parts = [incoming.url]
            incoming.url_len = len(incoming.url)
        incoming.url_parts.append(url)
        incoming.url_len += len(url)
        if incoming.url_len > self._url_room:
            self._check_url(incoming.url_len)

    def _check_url(self, size: int) -> None:
        """414 if the request line (with a target of ``size`` bytes) is past ``max_url_bytes``."""
        limit = self._server._limits.max_url_bytes
        if size + len(self._parser.get_method()) + LINE_EXTRA > limit:
            self._incoming.url_parts = None
            self._reject(414, f"request line longer than max_url_bytes ({limit} bytes)")

    def _check_head(self) -> None:
        """431 if the head is past ``max_headers`` or ``max_header_bytes``."""
        limits = self._server._limits
        if len(self._incoming.headers) > limits.max_headers:
            self._reject(431, f"more than max_headers ({limits.max_headers}) header fields")
        if self._head_bytes() > limits.max_header_bytes:
            self._head_too_large()

    def _head_bytes(self) -> int:
        """The size of the head parsed so far (see LINE_EXTRA)."""
        incoming = self._incoming
        parts = incoming.url_parts
        target = incoming.url_len if parts is not None else len(incoming.url)
        headers = incoming.headers
        fields = sum(len(name) + len(value) for name, value in headers)
        fields += FIELD_EXTRA * len(headers)
        return len(self._parser.get_method()) + LINE_EXTRA + 2 + target + fields + 2

    def _head_too_large(self) -> None:
        limit = self._server._limits.max_header_bytes
        self._reject(431, f"request head longer than max_header_bytes ({limit} bytes)")

    def _reject(self, status: int, message: str) -> None:
        """Answer ``status`` after what is queued, read no more, close: a limit was passed.
        (A streamed body's handler gets it as a RequestBodyError instead.)"""
        incoming = self._incoming
        incoming.headers = []
        incoming.body = []
        if self._body_stream is not None:
            self._server._rejected(status)
            self._break_stream(json_error(status, message))
        else:
            self._fail(json_error(status, message))
        raise _StopParsing

    def _stop(self) -> None:
        """Read no further request (the request being read is dropped): DONE, unless past it."""
        if self._state < DONE:
            self._state = DONE
        self._incoming.continue_pending = False

    def _break_stream(self, response: Response) -> None:
        """The streamed body cannot end well: its handler gets ``response`` as an error;
        nothing more is read, and the connection closes after the handler's answer."""
        stream = cast(RequestBody, self._body_stream)
        self._body_stream = None
        stream._end(RequestBodyError(response))
        self._stop()
        self._linger_on_close = True
        self._deadline = None
        if self._state != LOST:
            self._pause_reading()

    def on_header(self, name: bytes, value: bytes) -> None:
        incoming = self._incoming
        # A chunked trailer, or a replayed head (see _replay): their requests are unusual.
        if incoming.unusual and self._state == BODY:
            self._trailer(name, value)
            return
        lowered = HEADER_NAMES.get(name)
        name = lowered if lowered is not None else name.lower()
        incoming.headers.append((name, value))
        if name in SPECIAL_HEADERS:
            if name == b"content-length":
                length = self._lengths.get(value)
                incoming.content_length = (
                    length if length is not None else self._server._length_of(value)
                )
            elif name == b"host":
                if incoming.host is None:
                    incoming.host = value
                    # The guard is asked only if it might refuse (see BrowserGuard.quick_hosts;
                    # a request without Host, None, is among them).
                    if value not in self._quick_hosts and not self._any_host:
                        incoming.guard_asks = incoming.unusual = True
                else:
                    incoming.guard_asks = incoming.unusual = True  # it refuses a second one
            else:
                incoming.unusual = True
                if name == b"transfer-encoding":
                    # llhttp takes any list of codings ending in chunked: only chunked is served.
                    if incoming.chunked or value.rstrip(b" \t").lower() != b"chunked":
                        self._reject(400, "bad request: Transfer-Encoding other than chunked")
                    incoming.chunked = True
                elif name == b"expect":
                    incoming.expect = value.lower() == b"100-continue"
                elif name == b"connection":
                    incoming.connection_header = True
                else:  # one of BROWSER_HEADERS
                    incoming.guard_asks = True

    def _trailer(self, name: bytes, value: bytes) -> None:
        """A trailer field: it counts toward the head's limits and is never kept."""
        if self._replaying:
            return
        incoming = self._incoming
        if not incoming.trailers:
            incoming.head_size = self._head_bytes()
        incoming.trailers += 1
        incoming.head_size += len(name) + len(value) + FIELD_EXTRA
        limits = self._server._limits
        if incoming.trailers + len(incoming.headers) > limits.max_headers:
            self._reject(431, f"more than max_headers ({limits.max_headers}) header fields")
        if incoming.head_size > limits.max_header_bytes:
            self._head_too_large()

    def _other_method(self, method: bytes) -> str:
        """A method other than the usual ones: HEAD makes its request ``unusual`` (its answer
        has no body); CONNECT is 400 (this server is no tunnel)."""
        if method == b"HEAD":
            self._incoming.unusual = True
            return "HEAD"
        if method == b"CONNECT":
            self._reject(400, "bad request: CONNECT is not served (this is no tunnel)")
        return method.decode("ascii")

    def _replay_head(self) -> bytes:
        """A head that makes a fresh parser read the body that follows as this one's."""
        parser = self._parser
        version = parser.get_http_version().encode()
        if self._incoming.chunked:
            framing = b"Transfer-Encoding: chunked"
        else:
            framing = b"Content-Length: %d" % self._incoming.content_length
        connection = b"keep-alive" if parser.should_keep_alive() else b"close"
        return b"POST / HTTP/%s\r\n%s\r\nConnection: %s\r\n\r\n" % (version, framing, connection)

    def _replay(self, head: bytes) -> None:
        """Go on with a fresh parser, primed with ``head`` (its callbacks ignored)."""
        self._parser = parser = httptools.HttpRequestParser(self)
        self._feed_data = parser.feed_data
        self._get_method = parser.get_method
        self._keeps_alive = parser.should_keep_alive
        self._replaying = True
        try:
            parser.feed_data(head)
        finally:
            self._replaying = False

    def on_headers_complete(self) -> None:
        self._state = BODY  # (a replayed head's request is in its body already)
        incoming = self._incoming
        server = self._server
        # What the usual head lacks is tested only if it is ``unusual`` (see Incoming).
        unusual = incoming.unusual
        spanned = False  # the head began in an earlier read
        # (a big read's heads are checked whole, but are usual otherwise: a batch's reads)
        if unusual or self._big_read or len(incoming.headers) > self._max_headers:
            if self._replaying:  # (its request is unusual: Connection: upgrade)
                return
            # (a head that began in an earlier read is parsed with _big_read set)
            if self._big_read or len(incoming.headers) > self._max_headers:
                spanned = self._head_open
                self._head_open = False  # (for _feed_bounded: the head is complete)
                self._check_head()
            if incoming.url_parts is not None:
                incoming.url = b"".join(incoming.url_parts)
                incoming.url_parts = None
        parser = self._parser
        method = self._get_method()
        incoming.method = METHODS.get(method) or self._other_method(method)
        has_body = incoming.content_length > 0 or incoming.chunked
        target = server._targets.get(incoming.url)
        if target is None:
            target = self._split_target()
        incoming.path, incoming.query = target

        early: Response | Stream | None = None
        if unusual:
            # llhttp would take the body of an Upgrade offer as the new protocol: the offer
            # is ignored, and the body read by a fresh parser (see _feed). An upgrade needs
            # "Connection: upgrade": only then is llhttp asked (a call per request otherwise).
            if has_body and incoming.connection_header and parser.should_upgrade():
                self._upgrade_body = self._replay_head()
            # Contract §11.4: a browser's cross-site write, or rebinding. The guard is asked
            # only if it might refuse (on_header): the call ran 84 bytecodes of the ~1,100 of
            # a POST /event.
            if incoming.guard_asks:
                early = self._guard_refusal(incoming)
        if early is None:
            try:
                early = self._precheck(incoming.method, incoming.path, incoming.headers)
            except Exception:
                early = self._precheck_failed(incoming)
            if incoming.content_length > server._max_body and (early is None or early is _STREAM):
                server._rejected(413)
                early = json_error(413, self._body_too_large())
        if early is not None and isinstance(early, _Response):
            if has_body:  # answer without reading the body, then close
                self._fail(early, own=False)
                raise _StopParsing
            incoming.early = early  # sent in turn when the (empty) message completes
            incoming.unusual = True
            return
        if has_body:
            # The body's clock starts now: if the head came in this read, as good as when the
            # head's did (on_url), so no clock is read for the usual request.
            # When the two timeouts are equal (the default), that deadline stands as it is.
            deadline = self._deadline
            if spanned or deadline is None:
                self._set_deadline(server._body_timeout, request=True)
            elif server._body_extra:
                self._set_deadline(deadline + server._body_extra - self._loop.time(), request=True)
            if unusual and incoming.expect and not self._is_http10():
                if not self._busy:
                    self._transport.write(CONTINUE)
                else:  # earlier responses go first
                    incoming.continue_pending = True
            if early is _STREAM:
                self._start_stream(incoming)
            elif not incoming.chunked:
                # max_inflight_bytes: the body is counted once, now, rather than per piece.
                self._held += incoming.content_length
                server._inflight += incoming.content_length
                if server._inflight > server._max_inflight:
                    self._over_budget()

    def _guard_refusal(self, incoming: Incoming) -> Response | None:
        """The browser guard's answer to a request it refuses (contract §11.4), or None."""
        refused = self._guard.check(incoming.method, incoming.headers)
        if refused is None:
            return None
        self._server._rejected(refused[0])
        return json_error(*refused)

    def _precheck_failed(self, incoming: Incoming) -> Response:
        """Log the exception ``precheck`` raised; the 500 to answer."""
        server = self._server
        server._log_exception(
            "precheck", "precheck failed for %s %s", incoming.method, incoming.path
        )
        server._rejected(500)
        return json_error(500, "internal error")

    def _start_stream(self, incoming: Incoming) -> None:
        """Hand the request to its handler now, its body to come through ``body_stream``."""
        body = self._body_stream = self._last_stream = RequestBody(self)
        incoming.unusual = True  # (keep_alive, http10)
        keep_alive = incoming.keep_alive = self._parser.should_keep_alive()
        incoming.http10 = (not keep_alive or incoming.connection_header) and self._is_http10()
        incoming.answer = _Request(
            incoming.method,
            incoming.path,
            incoming.query,
            incoming.headers,
            b"",
            self,
            body_stream=body,
        )
        self._enqueue(incoming)

    def _body_taken(self, size: int, buffered: int) -> None:
        """The handler took ``size`` bytes of the streamed body; ``buffered`` are left."""
        self._server._release(self, size)
        if self._stream_full and buffered <= _STREAM_BUFFER // 2:
            self._stream_full = False
            if self._state < DONE:
                self._resume_reading()

    def _body_too_large(self) -> str:
        return f"request body too large: over max_body_bytes ({self._server._max_body} bytes)"

    def _split_target(self) -> tuple[str, str]:
        """(path, query) of an origin-form target (short ones are remembered); else 400."""
        url = self._incoming.url
        if url[:1] != b"/":
            self._reject(400, "bad request: the target must be a path (origin-form)")
        if BAD_TARGET.search(url) is not None:
            self._reject(400, "bad request: a '#' or a control character in the target")
        path, _, query = url.partition(b"?")
        target = path.decode("latin-1"), query.decode("latin-1")
        targets = self._server._targets
        if len(targets) < TARGET_CACHE_MAX and len(url) <= TARGET_CACHE_KEY_MAX:
            targets[url] = target
        return target

    def _is_http10(self) -> bool:
        """Whether the request is HTTP/1.0 (asked only when it matters: the call is slow)."""
        return self._parser.get_http_version() == "1.0"

    def on_body(self, body: bytes) -> None:
        incoming = self._incoming
        # (a streamed body's request is unusual, as is a chunked one)
        if incoming.unusual and (incoming.chunked or self._body_stream is not None):
            self._counted_body(incoming, body)
        else:  # counted at its head (max_inflight_bytes), and checked (413)
            incoming.body.append(body)

    def _counted_body(self, incoming: Incoming, body: bytes) -> None:
        """A piece of a body not counted at its head: counted now, and bounded."""
        size = len(body)
        if self._body_stream is None:
            incoming.body.append(body)
        else:
            size = self._stream_chunk(body)
        self._held += size
        server = self._server
        server._inflight += size
        if server._inflight > server._max_inflight:
            self._over_budget()
        if incoming.chunked:
            incoming.body_size += len(body)
            if incoming.body_size > server._max_body:
                self._reject(413, self._body_too_large())

    def _over_budget(self) -> None:
        """Past ``max_inflight_bytes``: stop reading until answers go out, unless this
        connection may finish its request first (one at a time, so none waits forever on
        the others; it holds at most ``max_body_bytes`` more)."""
        server = self._server
        if self is server._overdraft:
            return
        if self._body_stream is not None:  # paused until its handler takes what it has
            self._stream_full = True
            self._pause_reading()
            return
        if server._overdraft is None and not self._busy and not self._queue:
            server._overdraft = self
            return
        if not self._memory_paused:
            self._pause_reading()
            server._wait_for_memory(self)

    def _memory_freed(self) -> None:
        """The memory budget has room again: read on (unless done reading)."""
        if self._state < DONE:
            self._resume_reading()

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
        incoming = self._incoming
        if incoming.unusual or not self._keeps_alive():
            if self._completed_unusual(incoming):
                return
        else:  # _completed_unusual's usual case, inline: measured, the tests it runs cost
            # ~300 instructions per POST /event (bench/instructions.py)
            self._deadline = None
            self._state = IDLE
        body = incoming.body
        request = _Request(
            incoming.method,
            incoming.path,
            incoming.query,
            incoming.headers,
            body[0] if len(body) == 1 else b"".join(body),
            self,
        )
        incoming.answer = request
        if self._busy or self._queue or self._write_paused:
            self._enqueue(incoming)
            return
        # Idle: _enqueue and _answered_now, inline for the usual request: measured, their
        # calls cost 2,278 instructions per POST /event (bench/instructions.py).
        try:
            answer = self._handle(request)
        except Exception:
            answer = self._handler_failed(request)
        if answer is _LATER:
            self._busy = True
            self._later = incoming
        elif isinstance(answer, _Response) and answer.stream is None:
            self._deliver(answer, incoming)
        else:
            incoming.answer = cast(AnswerItem, answer)
            self._queue.append(incoming)
            self._start_task()

    def _completed_unusual(self, incoming: Incoming) -> bool:
        """:meth:`on_message_complete` for an ``unusual`` request, or one that ends the
        connection; whether it is answered already (or is not complete after all)."""
        if self._upgrade_body is not None:
            return True  # llhttp skipped the body of an Upgrade offer: it is still to come
        self._deadline = None
        if self._parser.should_keep_alive():
            self._state = IDLE
            # An HTTP/1.1 request keeps the connection unless it says otherwise; HTTP/1.0
            # only with a Connection header. So the version matters only then.
            if incoming.connection_header:
                incoming.http10 = self._is_http10()
        else:
            self._state = DONE
            incoming.unusual = True
            incoming.keep_alive = False
            incoming.http10 = self._is_http10()
            self._pause_reading()
        stream = self._body_stream
        if stream is not None:  # its request is with the handler already
            self._body_stream = None
            stream._end()
            return True
        if incoming.early is not None:
            incoming.answer = incoming.early
            self._enqueue(incoming)
            return True
        return False

    # -- the client leaving ----------------------------------------------------------------

    def _watch_left(self, callback: Callable[[], None]) -> Callable[[], None]:
        if self._state == LOST or self._eof:
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

    # On an idle connection, the usual request is answered without the task: at once when
    # the handler returns a Response, or by request.reply() when it returns LATER. An
    # awaitable, a streamed response, or a request arriving while another is being
    # answered goes to the task, which answers in order.

    def _enqueue(self, incoming: Incoming) -> None:
        """Answer ``incoming`` (its ``answer`` set) now if nothing is before it, else in turn."""
        if (
            not self._busy
            and not self._queue
            and not self._write_paused
            and self._answered_now(incoming)
        ):
            return
        self._queue.append(incoming)
        if not self._busy:
            self._start_task()
        elif len(self._queue) >= _PIPELINE_LIMIT:
            self._pause_reading()

    def _answered_now(self, incoming: Incoming) -> bool:
        """Answer ``incoming`` outside the task if it can be (else its ``answer`` becomes
        what the task awaits); whether it was."""
        answer: AnswerItem | Later | None = incoming.answer
        if isinstance(answer, Request):
            request = answer
            try:
                answer = self._handler.handle(request)
            except Exception:
                answer = self._handler_failed(request)
            if answer is _LATER:
                self._busy = True
                self._later = incoming
                return True
            incoming.answer = cast(AnswerItem, answer)
        if isinstance(answer, _Response) and answer.stream is None:
            self._deliver(answer, incoming)
            return True
        return False

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

    def _reply(self, request: Request, response: Response) -> None:
        later = self._later
        if later is None or later.answer is not request:
            raise RuntimeError("reply() for a request that is not waiting for one")
        self._later = None
        waiter = self._later_waiter
        if waiter is not None:  # the task is waiting for it
            self._later_waiter = None
            if not waiter.done():
                waiter.set_result(response)
            return
        self._busy = False
        if self._state >= LINGERING:
            return  # the client left, or the server is stopping: nobody to answer
        if response.stream is None:
            self._deliver(response, later)
        else:
            later.answer = response
            self._queue.appendleft(later)
            self._start_task()

    def _last_answer(self, keep_alive: bool) -> bool:
        """Whether the connection is kept after the answer about to be sent (``keep_alive``:
        what its request asked for)."""
        if self._shutdown or (self._state >= DONE and not self._queue):
            return False  # the last response on this connection
        if self._body_stream is not None and not self._queue:
            return self._answered_mid_body()
        return keep_alive

    def _deliver(self, response: Response, incoming: Incoming) -> None:
        """Send a (non-streamed) response outside the task, then go idle or on."""
        # The usual answer: to a usual request (keep-alive, HTTP/1.1, not HEAD: see
        # Incoming.unusual) on a connection between requests (so no body is streaming in).
        usual = self._state == IDLE and not incoming.unusual and not self._shutdown
        status = response.status  # (read once: compiled, each read of a Struct's is a lookup)
        if usual and not response.headers and status not in NO_BODY_STATUSES:
            # _send's usual case, inline: measured, its call cost ~1,600 instructions per POST
            # /event (bench/instructions.py). (_last_answer's is keep-alive.)
            keep_alive = True
            try:  # (a body that is not bytes raises here when compiled: _send answers 500)
                body = response.body
                prefix = self._prefixes[status, response.content_type]
                size = len(body)
                line = self._length_lines.get(size) or self._server._length_line(size)
                data = b"".join((prefix, line, body))
            except Exception:  # a prefix not cached yet, or a malformed response: _send
                self._send(response, True, False, False)
            else:
                self._write(data)
        else:
            keep_alive = self._last_answer(incoming.keep_alive)
            self._send(response, keep_alive, incoming.http10, incoming.method == "HEAD")
        held = self._held
        if held and not self._queue:
            server = self._server
            if (
                not usual
                or self._last_stream is not None
                or server._memory_waiting
                or server._overdraft is not None
            ):
                self._release_answered()
            else:  # _release_answered's usual case, inline: measured, its call cost 979
                # instructions per POST /event (bench/instructions.py)
                self._held = 0
                server._inflight -= held
        if not keep_alive:
            self._close()
        elif self._queue or self._write_paused:
            self._start_task()  # waits for the client to read, then answers what is queued
        elif not usual or self._eof or self._reading_paused:
            self._became_idle()
        else:  # _became_idle's usual case, inline: the idle timeout starts. Measured, the
            # calls (it, and _set_deadline) cost 1,372 instructions per POST /event.
            self._request_timer = False
            deadline = self._deadline = self._time() + self._server._idle_timeout
            if self._timer is None or self._timer_at > deadline:
                self._arm(deadline)

    def _answered_mid_body(self) -> bool:
        """The streamed request is answered before its body ended: read no more of it, and
        close after the answer. Returns the answer's keep-alive: False."""
        stream = cast(RequestBody, self._body_stream)
        self._body_stream = None
        stream._discard()
        self._stop()
        self._linger_on_close = True
        self._deadline = None
        self._pause_reading()
        return False

    def _release_answered(self) -> None:
        """Nothing is left to answer: the bodies of the requests answered are not held."""
        stream = self._body_stream
        state = self._state
        if stream is not None:  # the body still arriving: what its handler has not taken
            keep = stream._buffered
        elif state == BODY:  # the body being read: counted at its head, or as it came
            incoming = self._incoming
            keep = sum(map(len, incoming.body)) if incoming.chunked else incoming.content_length
        else:
            keep = 0
        last = self._last_stream
        if last is not None and last is not stream:
            last._discard()  # its handler is done: what it left is dropped
            self._last_stream = None
        size = self._held - keep
        if size > 0:
            server = self._server
            if server._memory_waiting or server._overdraft is not None:
                server._release(self, size)
            else:  # nobody waits for memory
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
        return json_error(500, "internal error")

    async def _answer(self, item: AnswerItem) -> Response:
        """The response to a queued item (the task's side of answering)."""
        if isinstance(item, _Response):
            return item
        request = item if isinstance(item, Request) else None
        answer = self._call_handler(item) if isinstance(item, Request) else item
        if isinstance(answer, _Response):
            return answer
        try:
            if answer is _LATER:
                self._later = Incoming(answer=item)
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
            while self._state < LINGERING:
                if self._write_paused:
                    await self._drain()
                    continue
                if not queue:
                    self._busy = False
                    self._became_idle()
                    if self._state < LINGERING:
                        self._wakeup = self._loop.create_future()
                        await self._wakeup  # by _enqueue, or connection_lost
                    continue
                incoming = queue.popleft()
                if self._reading_paused and self._state < DONE and len(queue) <= _RESUME_AT:
                    self._resume_reading()
                response = await self._answer(cast(AnswerItem, incoming.answer))
                if self._state >= LINGERING:
                    if response.stream is not None:
                        await self._aclose(response.stream)
                    break
                keep_alive = self._last_answer(incoming.keep_alive)
                http10, head = incoming.http10, incoming.method == "HEAD"
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
            if self._state == LOST:
                server._forget(self)

    async def _send_stream_checked(
        self, response: Response, keep_alive: bool, http10: bool, head: bool
    ) -> bool:
        try:
            return await self._send_stream(response, keep_alive, http10, head)
        except Exception:  # a malformed Response: nothing of it was written
            self._invalid_response(response)
            await self._aclose(cast(AsyncIterator[bytes], response.stream))
            self._send(json_error(500, "internal error"), keep_alive, http10, head)
            return keep_alive

    def _invalid_response(self, response: Response) -> None:
        self._server._log_exception("response", "invalid response (status %r)", response.status)
        self._server._rejected(500)

    def _head(
        self, response: Response, framing: bytes, keep_alive: bool, http10: bool
    ) -> list[bytes]:
        """The parts of ``response``'s head (see `response_head`)."""
        prefix = self._server._prefix(response.status, response.content_type)
        return response_head(prefix, response.headers, framing, keep_alive, http10)

    def _send(self, response: Response, keep_alive: bool, http10: bool, head: bool) -> None:
        """Write ``response``; if it is malformed (a bad status, CR or LF in a header), nothing
        of it is written: the error is logged and a 500 goes instead."""
        try:  # (compiled, a body that is not bytes raises at once)
            body = response.body
            if response.status in NO_BODY_STATUSES:
                framing = body = b""
            else:
                framing = b"Content-Length: %d\r\n" % len(body)
                if head:
                    body = b""
            if keep_alive and not http10 and not response.headers:  # the usual case
                # Shared._prefix on a cache hit, inline: measured, its call cost ~330
                # instructions per POST /event (bench/instructions.py).
                prefix = self._prefixes.get((response.status, response.content_type))
                if prefix is None:
                    prefix = self._server._prefix(response.status, response.content_type)
                data = b"".join((prefix, framing, CRLF, body))
            else:
                parts = self._head(response, framing, keep_alive, http10)
                parts.append(body)
                data = b"".join(parts)
        except Exception:
            self._invalid_response(response)
            self._send(json_error(500, "internal error"), keep_alive, http10, head)
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
                if self._state == LOST:
                    return False
                if not chunk:
                    continue  # an empty chunk would end a chunked body
                if chunked:
                    write(chunk_of(chunk))
                else:
                    sent += len(chunk)
                    if length is not None and sent > length:
                        self._server._logger.error("stream exceeds content-length %d", length)
                        return False
                    write(chunk)
                if self._write_paused:
                    await self._drain()
            if chunked:
                write(LAST_CHUNK)
            elif length is not None and sent != length:
                self._server._logger.error("stream shorter than content-length %d", length)
                return False
            return keep_alive
        except asyncio.CancelledError:
            if self._state != LOST:
                raise
            _uncancel()  # our own cancel from connection_lost: the client left
            return False
        except Exception:
            if self._state != LOST:
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
            if self._state != LOST:
                raise
            _uncancel()
        except Exception:
            self._server._logger.exception("closing the response stream failed")

    async def _drain(self) -> None:
        """Wait for the client to read what was written: at most ``send_timeout``."""
        if self._state == LOST or not self._write_paused:
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
        self._stop()
        self._linger_on_close = True
        self._deadline = None
        self._pause_reading()
        self._enqueue(Incoming(keep_alive=False, answer=response))

    def _became_idle(self) -> None:
        """Nothing is left to answer: close if that is due, else wait for the next request
        (or the rest of the one being read)."""
        state = self._state
        if self._eof or (self._shutdown and not HEAD <= state <= BODY):
            self._close()
            return
        incoming = self._incoming
        if incoming.continue_pending and state == BODY:
            incoming.continue_pending = False
            self._transport.write(CONTINUE)
        if self._reading_paused and state < DONE:
            self._resume_reading()
        if state in (IDLE, DONE):
            self._set_deadline(self._server._idle_timeout)

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and not (
            self._state == LOST or self._memory_paused or self._stream_full
        ):
            self._reading_paused = False
            self._transport.resume_reading()
            state = self._state
            if state in (HEAD, BODY):  # the pause was ours, not the client's
                server = self._server
                timeout = server._body_timeout if state == BODY else server._header_timeout
                self._set_deadline(timeout, request=True)

    def _close(self) -> None:
        """Close after the written data is flushed (lingering if input may be unread)."""
        if self._state >= LINGERING:
            return
        self._deadline = None
        transport = self._transport
        if self._linger_on_close and not self._eof and transport.can_write_eof():
            # Closing with unread input makes the kernel send a reset, which can destroy
            # the response before the client reads it: half-close, drain, then close.
            self._state = LINGERING
            transport.write_eof()
            self._resume_reading()
            self._set_deadline(_LINGER_SECONDS)
        else:
            self._state = CLOSED
            transport.close()
            self._set_deadline(self._server._send_timeout)  # for the client to read the rest

    def shutdown(self) -> None:
        """Stop keeping the connection alive: close it now if idle, else after its response.

        A new connection whose first request has not arrived yet is not idle but early:
        its client has connected to send one, which may be on its way (a reload hands the
        listening socket on while clients connect). It gets ``FIRST_REQUEST_GRACE``
        seconds for that request, which is answered and the connection closed."""
        self._shutdown = True
        state = self._state
        if self._busy or HEAD <= state <= BODY:
            return
        if state == IDLE and self._request_timer:  # no request yet (see _set_deadline)
            self._set_deadline(min(FIRST_REQUEST_GRACE, self._server._header_timeout))
            return
        self._close()

    def abort(self) -> asyncio.Task[None] | None:
        """Close at once; return the running task, if any."""
        state = self._state
        if state != LOST:
            if state < CLOSED:
                self._state = CLOSED
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
        if self._state == BODY:
            key, timeout = "body_timeout_secs", server._body_timeout
            what = "request body"
        else:
            key, timeout = "header_timeout_secs", server._header_timeout
            what = "request head"
        return json_error(408, f"{what} not received within {key} ({timeout:g}s)")

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
            elif (
                self._request_timer
                and not self._busy
                and not self._queue
                and self._state < LINGERING
            ):
                self._timed_out()
            else:
                self.abort()  # idle keep-alive, lingering done, or a client not reading
        else:
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)
