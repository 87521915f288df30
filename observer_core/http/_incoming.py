"""What belongs to one request, from its first byte to its answer: `Incoming`."""

from __future__ import annotations

from collections.abc import Awaitable

from ._messages import Request, Response


class Incoming:
    """One request as it is read, then queued until answered. A connection that has
    answered everything recycles its last one for the next request (`begin`).

    Not a msgspec Struct: a Struct's attribute store takes its own ``__setattr__``
    (measured under callgrind: ~280 instructions, against ~50 for a slot), and a request
    stores half a dozen while it is read; a slot class is dearer to make, so it is reused
    (see bench/instructions.py)."""

    __slots__ = (
        "answer",
        "body",
        "body_size",
        "chunked",
        "connection_header",
        "content_length",
        "continue_pending",
        "early",
        "expect",
        "guard_asks",
        "head_size",
        "headers",
        "host",
        "http10",
        "keep_alive",
        "method",
        "path",
        "query",
        "trailers",
        "unusual",
        "url",
        "url_len",
        "url_parts",
    )

    url: bytes
    """The target, once whole (a target that came in several reads: ``url_parts``)."""
    url_parts: list[bytes] | None
    url_len: int  # bytes of a target that came in several reads
    method: str
    path: str
    query: str
    headers: list[tuple[bytes, bytes]]
    body: list[bytes]  # a body read whole, as it came
    body_size: int  # of a chunked body (a Content-Length one is checked at its head)
    content_length: int
    chunked: bool
    expect: bool  # "Expect: 100-continue"
    continue_pending: bool  # ... whose "100 Continue" waits for earlier answers
    connection_header: bool  # HTTP/1.0 keeps a connection only with one
    host: bytes | None  # the first Host header's value
    guard_asks: bool  # a second Host, or a header of BROWSER_HEADERS, came
    trailers: int  # chunked trailer fields (counted, not kept)
    head_size: int  # bytes of the head and trailers, counted once trailers come
    early: Response | None  # answered at its head (precheck): sent when it completes
    # How it is answered: the connection's keep-alive, "HTTP/1.0" (and "HEAD": ``method``) ...
    keep_alive: bool
    http10: bool
    # ... and what answers it, once complete: the Request for its handler, a ready
    # Response (sent in turn), or the handler's awaitable answer.
    answer: Request | Response | Awaitable[Response] | None
    unusual: bool
    """Set by whatever sets a field `begin` does not (``method``, ``path``, ``query`` and
    ``answer`` aside: they are set before they are read) to other than `usual` does, by a
    HEAD request, by a head spanning reads (checked whole) and by one the browser guard is
    asked about. The usual request skips their tests, and the reset of those fields
    (measured: ~2,700 instructions per POST /event, bench/instructions.py)."""

    def __init__(
        self,
        url: bytes = b"",
        answer: Request | Response | Awaitable[Response] | None = None,
        keep_alive: bool = True,
    ) -> None:
        self.begin(url)
        self.method = self.path = self.query = ""
        self.answer = answer
        self.usual()
        if not keep_alive:
            self.keep_alive = False
            self.unusual = True

    def begin(self, url: bytes) -> None:
        """Begin a new request, whose target begins with ``url``, on one that is ``usual``.
        (``method``, ``path``, ``query`` and ``answer`` are set before they are read.)
        Inline in ``Connection.on_url``: keep the two alike."""
        self.url = url
        self.headers = []
        self.body = []
        self.content_length = 0
        self.host = None

    def usual(self) -> None:
        """Set the fields `begin` leaves as they are as new: then not ``unusual``."""
        self.url_parts = self.early = None
        self.url_len = self.body_size = self.trailers = self.head_size = 0
        self.chunked = self.expect = self.continue_pending = False
        self.connection_header = self.guard_asks = self.http10 = self.unusual = False
        self.keep_alive = True
