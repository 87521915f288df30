"""What belongs to one request, from its first byte to its answer: `Incoming`."""

from __future__ import annotations

from collections.abc import Awaitable

import msgspec

from ._messages import Request, Response


class Incoming(msgspec.Struct):
    """One request as it is read, then queued until answered. (A msgspec Struct: made in C
    with its defaults, one per request, cheaper than resetting a dozen attributes.)"""

    url: bytes = b""
    """The target, once whole (a target that came in several reads: ``url_parts``)."""
    url_parts: list[bytes] | None = None
    url_len: int = 0  # bytes of a target that came in several reads
    method: str = ""
    path: str = ""
    query: str = ""
    headers: list[tuple[bytes, bytes]] = []
    body: list[bytes] = []  # a body read whole, as it came
    body_size: int = 0  # of a chunked body (a Content-Length one is checked at its head)
    content_length: int = 0
    chunked: bool = False
    expect: bool = False  # "Expect: 100-continue"
    continue_pending: bool = False  # ... whose "100 Continue" waits for earlier answers
    connection_header: bool = False  # HTTP/1.0 keeps a connection only with one
    host: bytes | None = None  # the first Host header's value
    guard_asks: bool = False  # a second Host, or a header of BROWSER_HEADERS, came
    trailers: int = 0  # chunked trailer fields (counted, not kept)
    head_size: int = 0  # bytes of the head and trailers, counted once trailers come
    early: Response | None = None  # answered at its head (precheck): sent when it completes
    # How it is answered: the connection's keep-alive, "HTTP/1.0" (and "HEAD": ``method``) ...
    keep_alive: bool = True
    http10: bool = False
    # ... and what answers it, once complete: the Request for its handler, a ready
    # Response (sent in turn), or the handler's awaitable answer.
    answer: Request | Response | Awaitable[Response] | None = None
