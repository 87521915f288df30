"""What a handler sees and returns: `Request`, `Response`, `Handler`, a streamed
`RequestBody`, and the markers `LATER` and `STREAM`."""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, Protocol, cast

import msgspec


class Exchange(Protocol):
    """What a `Request` and its `RequestBody` ask of the connection they came on."""

    _loop: asyncio.AbstractEventLoop
    _transport: asyncio.Transport

    def _body_taken(self, size: int, buffered: int) -> None:
        """The handler took ``size`` bytes of the streamed body; ``buffered`` are left."""

    def _watch_left(self, callback: Callable[[], None]) -> Callable[[], None]:
        """See `Request.on_client_left`."""

    def _reply(self, request: Request, response: Response) -> None:
        """See `Request.reply`."""


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

    def __init__(self, connection: Exchange) -> None:
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
        return cast(Exchange, connection)._watch_left(callback)

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
