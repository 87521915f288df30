"""A lean HTTP/1.1 server: the ``httptools`` (llhttp) parser under an asyncio ``Protocol``,
public for plugins that serve HTTP.

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

The modules, one job each: ``_messages`` (what a handler sees and returns),
``_limits`` (`HttpLimits`), ``_framing`` (the bytes of heads and status lines),
``_incoming`` (what belongs to one request), ``_connection`` (one connection: its
state, parsing, answering in order), ``_shared`` (what a listener's connections
share: limits, the memory budget, caches) and ``_server`` (`HttpServer`).
"""

from ._limits import Connections, HeaderBytes, HeaderCount, HttpLimits, Seconds, Size, UrlBytes
from ._messages import (
    LATER,
    STREAM,
    Handler,
    Later,
    Request,
    RequestBody,
    RequestBodyError,
    Response,
    Stream,
    json_error,
)
from ._server import HttpServer

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
