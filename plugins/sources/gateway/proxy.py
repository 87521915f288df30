"""The reverse proxy: forwards every request to the gateway unchanged and records it.

The request goes on with its method, path, query, headers (hop-by-hop ones and
``X-Observer-Token`` aside; ``Host`` becomes the gateway's; ``X-Forwarded-For``
and ``-Proto`` set only with ``forwarded_headers``) and body; the reply comes back with its
status, headers (hop-by-hop ones aside) and body as they arrive, raw: a
compressed body stays compressed and server-sent events reach the client chunk
by chunk. The op is queued once the reply has ended and handed to the engine by
:meth:`GatewayProxy.pump`, so recording never holds up a reply.

With ``listen_token``, a request without the right ``X-Observer-Token`` is
answered 401 and neither forwarded nor recorded. A target the proxy cannot
forward as it came (``#``, a control character, a byte that is not ASCII) is
400. A client that leaves cancels the gateway call at once; its op says
``client_left`` (SECURITY §11.5).
"""

from __future__ import annotations

import logging
import re
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from observer_core import DropOldestQueue, Emit, NotAccepted, Op, Tokens
from observer_core.http import STREAM, Request, Response, Stream
from observer_core.http import json_error as _error

from .outcome import Outcome, make_op, parse_json, text_outcome
from .usage import HeldBytes, RequestModel, SseUsage, Usage, reply_usage

__all__ = ["MAX_BODY_BYTES", "GatewayProxy", "QuietBrokenReplies"]

MAX_BODY_BYTES = 64 << 20
"""The largest request body the proxy takes (413 beyond)."""
JSON_CAPTURE_BYTES = 1 << 20
"""How much of a reply that may be JSON is kept to summarise it (a longer one is
summarised as text: its first 100 characters)."""
TEXT_CAPTURE_BYTES = 4096
"""How much of any other reply (an SSE stream, text) is kept: enough for 100 characters."""
QUEUE_MAX = 10000
EMIT_BATCH = 1000
_CHUNK_ERRORS = (httpx.HTTPError, anyio.EndOfStream, anyio.BrokenResourceError)

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
TOKEN_HEADER = b"x-observer-token"
"""Where a client of a proxy with ``listen_token`` puts it; never forwarded."""
CLIENT_LEFT_STATUS = 499
"""Written (as nginx logs it) to a client that closed its side while its call was cut."""
_FORWARDED_FOR = frozenset({"x-forwarded-for", "x-forwarded-proto"})
_NOT_FORWARDED = _HOP_BY_HOP | {"host", "content-length", "expect", TOKEN_HEADER.decode()}
_BAD_TARGET = re.compile(r"[^\x21-\x7e]|#")
_NO_BODY = frozenset((*range(100, 200), 204, 304))
_Attributes = dict[str, str | int | float | bool]
_NO_USAGE = Usage()


def _named_by_connection(values: list[str]) -> set[str]:
    return {token.strip().lower() for value in values for token in value.split(",")}


def request_headers(
    headers: list[tuple[bytes, bytes]], client: str | None = None
) -> list[tuple[bytes, bytes]]:
    """The client's headers that go on to the gateway; with ``client`` (its address),
    ``X-Forwarded-For`` and ``X-Forwarded-Proto`` say who asked, replacing the client's."""
    named = _named_by_connection(
        [value.decode("latin-1") for name, value in headers if name == b"connection"]
    )
    if client is not None:
        named |= _FORWARDED_FOR
    kept = [
        (name, value)
        for name, value in headers
        if name.decode("latin-1") not in _NOT_FORWARDED and name.decode("latin-1") not in named
    ]
    if client is not None:
        kept += [(b"x-forwarded-for", client.encode()), (b"x-forwarded-proto", b"http")]
    return kept


def target_problem(path: str, query: str) -> str | None:
    """Why the request target cannot be forwarded as it came, or None: only printable
    ASCII, no ``#`` (a fragment is not sent), no control character (RFC 9112 §3.2)."""
    for part, text in (("path", path), ("query", query)):
        found = _BAD_TARGET.search(text)
        if found:
            return f"bad request: {found.group()!r} in the target's {part}"
    return None


def response_headers(
    headers: list[tuple[bytes, bytes]], *, keep_length: bool
) -> list[tuple[str, str]]:
    """The gateway's headers that go back to the client (content-length only for a stream)."""
    pairs = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]
    named = _named_by_connection([value for name, value in pairs if name.lower() == "connection"])
    return [
        (name, value)
        for name, value in pairs
        if (lower := name.lower()) not in _HOP_BY_HOP
        and lower not in named
        and (keep_length or lower != "content-length")
    ]


def _decompress(body: bytes, encoding: str, limit: int) -> bytes | None:
    """``body`` without its content-encoding (at most ``limit`` bytes), None if unknown."""
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    for wbits in (47, -15):  # gzip or zlib (auto-detected), then raw deflate
        try:
            return zlib.decompressobj(wbits).decompress(body, limit)
        except zlib.error:
            continue
    return None


@dataclass(slots=True)
class _Call:
    """One proxied request: what its op needs."""

    method: str
    path: str
    recorded: bool
    body: RequestModel | None = None
    """Reads the model the request asked for (``gen_ai.request.model``)."""
    started: float = field(default_factory=time.perf_counter)

    def model(self) -> str | None:
        """The model the request asked for, once the call ended (the body is let go)."""
        return self.body.model() if self.body is not None else None


class _Relay:
    """Streams the gateway's reply body to the client and keeps its beginning; reads the
    usage of a server-sent-event stream as it passes (:class:`SseUsage`).

    The server iterates it and always ``aclose()``s it (even for HEAD, or when the
    client leaves), which ends the op.
    """

    def __init__(self, proxy: GatewayProxy, call: _Call, reply: httpx.Response) -> None:
        self._proxy = proxy
        self._call = call
        self._reply = reply
        self._chunks = reply.aiter_raw()
        content_type = reply.headers.get("content-type", "json").lower()
        self._limit = JSON_CAPTURE_BYTES if "json" in content_type else TEXT_CAPTURE_BYTES
        self._encoding = reply.headers.get("content-encoding", "").strip().lower()
        plain = self._encoding in ("", "identity")
        self._events = SseUsage() if plain and "text/event-stream" in content_type else None
        self._kept = bytearray()
        self._size = 0
        self._done = False

    def __aiter__(self) -> _Relay:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            await self._finish()
            raise
        except _CHUNK_ERRORS as exc:
            await self._finish(f"the gateway's reply broke off: {_describe(exc)}")
            raise
        room = self._limit - len(self._kept)
        if room > 0:
            self._kept += chunk[:room]
        self._size += len(chunk)
        if self._events is not None:
            self._events.feed(chunk)
        return chunk

    async def aclose(self) -> None:
        """Called by the server when it is done; before the end, the client has left."""
        await self._finish(client_left=self._call.method != "HEAD")

    async def _finish(self, error: str | None = None, *, client_left: bool = False) -> None:
        if self._done:
            return
        self._done = True
        try:
            await self._reply.aclose()
        finally:
            if error:
                outcome, usage = Outcome.failed(error), self._stream_usage()
            else:
                outcome, usage = self._outcome()
            attributes: _Attributes = {"http_status": self._reply.status_code}
            if client_left:
                attributes["client_left"] = True
            self._proxy.record(self._call, outcome, attributes, usage)

    def _stream_usage(self) -> Usage:
        return self._events.finish() if self._events is not None else _NO_USAGE

    def _outcome(self) -> tuple[Outcome, Usage]:
        """What the reply came to, and the usage it reported (a JSON body's, else the
        last one its events carried)."""
        status = self._reply.status_code
        usage = self._stream_usage()
        body = _decompress(bytes(self._kept), self._encoding, self._limit)
        if body is None:
            text = f"({self._encoding}-encoded body, {self._size} bytes)"
            return Outcome.of_text(status, text), usage
        if self._size > self._limit:
            text = body[:TEXT_CAPTURE_BYTES].decode("utf-8", "replace")
            return Outcome.of_text(status, text), usage
        is_json, data = parse_json(body)
        if not is_json:
            return text_outcome(status, body), usage
        return Outcome.of_json(status, data), reply_usage(data)


class QuietBrokenReplies(logging.Filter):
    """For the proxy's server logger: a gateway reply that broke off is a one-line
    warning (its op says what happened), not a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, _CHUNK_ERRORS):
            record.msg = f"{record.getMessage()}: the gateway's reply broke off: {_describe(exc)}"
            record.args = None
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _content_type(request: Request) -> str:
    return (request.header(b"content-type") or b"").decode("latin-1")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class GatewayProxy:
    """The proxy's request handler (for :class:`observer_core.http.HttpServer`)."""

    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        *,
        timeout: float,
        exclude_paths: list[str],
        logger: logging.Logger,
        on_drop: Callable[[int], None],
        status: dict[str, Any],
        tokens: Tokens | None = None,
        forwarded_headers: bool = False,
    ) -> None:
        self._base = httpx.URL(url)
        self._tokens = tokens or Tokens(None)
        self._forwarded = forwarded_headers
        self._prefix = self._base.raw_path.split(b"?")[0].rstrip(b"/")
        self._client = client
        self._timeout = timeout
        self._timeouts = client.timeout.as_dict()
        self._exclude = frozenset(exclude_paths)
        self._log = logger
        self._on_drop = on_drop
        self._status = status
        status.update(proxied=0, recorded=0)
        self.queue: DropOldestQueue[Op] = DropOldestQueue(QUEUE_MAX, on_drop)
        self._refused_logged = False
        self._held = HeldBytes()
        """What request bodies the calls in flight keep to read their model."""

    # -- the server's Handler protocol ---------------------------------------------------

    def precheck(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> Response | Stream | None:
        """401 without the right ``X-Observer-Token`` (with ``listen_token``): answered
        before the body is read, no op recorded. Everything else goes to the gateway, the
        body as it arrives."""
        if self._tokens:
            given = next((value for name, value in headers if name == TOKEN_HEADER), b"")
            if not self._tokens.matches(given):
                return _error(401, "missing or wrong X-Observer-Token (listen_token)")
        return STREAM

    async def handle(self, request: Request) -> Response:
        """Forward ``request``; answer with the gateway's reply, or 400, 502, 504."""
        problem = target_problem(request.path, request.query)
        if problem is not None:
            return _error(400, problem)
        self._status["proxied"] += 1
        call = _Call(request.method, request.path, request.path not in self._exclude)
        try:
            upstream = self._build(request, call)
        except (httpx.InvalidURL, UnicodeError) as exc:  # what target_problem did not foresee
            return _error(400, f"bad request: {_describe(exc)}")
        with anyio.CancelScope() as scope:  # cancelled at once if the client leaves
            stop_watching = request.on_client_left(scope.cancel)
            try:
                return await self._forward(call, upstream)
            except httpx.HTTPError as exc:
                return self._failed(call, exc)
            finally:
                stop_watching()
        self.record(call, Outcome.failed("client disconnected"), {"client_left": True})
        return _error(CLIENT_LEFT_STATUS, "client disconnected")

    async def _forward(self, call: _Call, upstream: httpx.Request) -> Response:
        """Send ``upstream``; the gateway's reply, streamed back unless it has no body."""
        reply = await self._client.send(upstream, stream=True)
        if reply.status_code in _NO_BODY:
            return await self._answer_empty(call, reply)
        return Response(
            reply.status_code,
            headers=response_headers(reply.headers.raw, keep_length=True),
            content_type=None,
            stream=_Relay(self, call, reply),
        )

    def _build(self, request: Request, call: _Call) -> httpx.Request:
        target = self._prefix + request.path.encode("latin-1")
        if request.query:
            target += b"?" + request.query.encode("latin-1")
        forwarded_for = (request.client_address() or "unknown") if self._forwarded else None
        headers = request_headers(request.headers, forwarded_for)
        content: bytes | AsyncIterator[bytes] = request.body
        if request.body_stream is not None:  # streamed on: chunked unless the client sized it
            content = request.body_stream
            if call.recorded:  # read for its model on the way
                content = call.body = RequestModel(content, _content_type(request), self._held)
            length = request.header(b"content-length")
            if length is not None:
                headers.append((b"content-length", length))
        # A bare Request, not client.build_request: no default headers, no cookies added.
        return httpx.Request(
            request.method,
            self._base.copy_with(raw_path=target),
            headers=headers,
            content=content,
            extensions={"timeout": self._timeouts},
        )

    async def _answer_empty(self, call: _Call, reply: httpx.Response) -> Response:
        try:
            await reply.aread()
        finally:
            await reply.aclose()
        self.record(
            call, Outcome.of_body(reply.status_code, b""), {"http_status": reply.status_code}
        )
        return Response(
            reply.status_code,
            headers=response_headers(reply.headers.raw, keep_length=False),
            content_type=None,
        )

    def _failed(self, call: _Call, exc: httpx.HTTPError) -> Response:
        """502 when the gateway cannot be reached, 504 when it did not answer in time."""
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            status, message = 504, f"the gateway did not answer within {self._timeout:g}s"
        else:
            status, message = 502, f"cannot reach the gateway: {_describe(exc)}"
        self.record(call, Outcome.failed(message), None)
        return _error(status, message)

    # -- recording -----------------------------------------------------------------------

    def record(
        self,
        call: _Call,
        outcome: Outcome,
        attributes: _Attributes | None,
        usage: Usage | None = None,
    ) -> None:
        """Queue the op of a call that just ended (unless its path is excluded), with the
        model it asked for and the ``usage`` its reply reported in its attributes."""
        if not call.recorded:
            return
        duration = (time.perf_counter() - call.started) * 1000
        attributes = {**(attributes or {}), **(usage or _NO_USAGE).attributes(call.model())}
        self.queue.put_many(
            [make_op(call.path, f"{call.method} {call.path}", duration, outcome, attributes)]
        )
        self._status["recorded"] += 1

    async def pump(self, emit: Emit) -> None:
        """Hand queued ops to the engine, in batches, until cancelled."""
        while batch := await self.queue.get_batch(EMIT_BATCH):
            await self._emit(emit, batch)

    async def flush(self, emit: Emit) -> None:
        """Hand over what is still queued (at shutdown)."""
        batch = self.queue.drain()
        if batch:
            await self._emit(emit, batch)

    async def _emit(self, emit: Emit, batch: list[Op]) -> None:
        try:
            await emit(batch)
        except NotAccepted as exc:
            self._on_drop(len(batch))
            if not self._refused_logged:
                self._log.warning("%d proxied op(s) dropped: %s", len(batch), exc)
            self._refused_logged = True
        else:
            self._refused_logged = False
