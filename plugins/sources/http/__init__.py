"""The ``http`` source: the ingest listener agents post events to.

Endpoints: ``GET /health``, ``GET /ready``, ``GET /stats``, ``GET /metrics``,
``GET /tap``, ``GET /`` (the status page), ``POST /event`` (one JSON object) and
``POST /events`` (NDJSON or a JSON array, at most ``max_batch_events`` events: past it
413). An event is answered 200 only after every ack-holding op sink has written it; a
failing sink or a backed-up input answers 503 with ``Retry-After`` (only what a retry
can clear).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Annotated, ClassVar

import anyio
import msgspec

from observer_core import (
    BatchTooLarge,
    ComponentConfig,
    Context,
    Emit,
    Emitter,
    EventDecoder,
    InvalidEvent,
    NotAccepted,
    Observer,
    OnAccepted,
    Op,
    RegisterSource,
    Source,
    Token,
    Tokens,
    UnknownFields,
    hookimpl,
)
from observer_core.engine import MAX_PENDING_OPS
from observer_core.http_guard import AllowedHosts, normalize_allowed_hosts
from observer_core.httpserver import (
    LATER,
    Connections,
    HeaderBytes,
    HeaderCount,
    HttpLimits,
    HttpServer,
    Later,
    Request,
    Response,
    Seconds,
    Size,
    UrlBytes,
)
from observer_core.operator_routes import MAX_TAPS, TAP_QUEUE_MAX, OperatorRoutes

__all__ = ["HttpSource", "ReadRoutes"]

_encode = msgspec.json.Encoder().encode


Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
"""A TCP port; 0 binds any free one."""


class HttpConfig(ComponentConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[sources.NAME]`` with ``plugin = "http"``."""

    listen_keys: ClassVar[tuple[str, str]] = ("host", "token")
    """Where it binds and its token: checked by ``observer_core.config.exposed_listener``."""
    host: str = "127.0.0.1"
    port: Port = 3800
    token: Token | None = None
    """When set, every endpoint but /health needs ``Authorization: Bearer <token>``; a list
    accepts any of its tokens (rotation). Empty is refused (a ``${VAR:-}`` left empty must
    not silently turn auth off)."""
    max_body_bytes: Size = 1048576
    max_connections: Connections = 1024
    header_timeout_secs: Seconds = 10
    idle_timeout_secs: Seconds = 60
    send_timeout_secs: Seconds | None = None
    """How long an answer's write may stall, the client not reading it (a ``/tap`` reader
    too): then the connection is closed. Unset: ``idle_timeout_secs``."""
    # Contract §11.2: the limits every listener has (see observer_core.httpserver.HttpLimits).
    max_url_bytes: UrlBytes = 8192
    max_header_bytes: HeaderBytes = 32768
    max_headers: HeaderCount = 100
    body_timeout_secs: Seconds = 10
    max_inflight_bytes: Size = 64 << 20
    max_batch_events: Annotated[int, msgspec.Meta(ge=1, le=MAX_PENDING_OPS)] = 10000
    """Events one ``POST /events`` may carry; past it 413 and nothing is accepted. At most
    the engine's pending bound (65536): a larger batch could never be accepted."""
    max_taps: Annotated[int, msgspec.Meta(ge=0, le=1024)] = MAX_TAPS
    """``GET /tap`` streams open at once on this listener; past it ``503``. 0 turns tap off."""
    tap_queue_max: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = TAP_QUEUE_MAX
    """Records one tap reader may fall behind by; past it they are dropped for that reader
    (and a ``{"dropped": N}`` line says so)."""
    allowed_hosts: AllowedHosts = msgspec.field(default_factory=list)
    """Further names (or addresses) clients may call the listener by (contract §11.4): a
    ``Host`` a loopback listener accepts; on another listener, setting it checks ``Host``."""

    def __post_init__(self) -> None:
        normalize_allowed_hosts(self.allowed_hosts)  # ValueError naming the key and the entry


def _error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, _encode({"error": message}), headers or [])


def _bearer_token(authorization: bytes) -> bytes:
    """The token of ``Bearer <token>`` (the scheme in any case, RFC 7235); else empty."""
    scheme, _, token = authorization.partition(b" ")
    return token.lstrip(b" ") if scheme.lower() == b"bearer" else b""


class ReadRoutes:
    """``GET /health``, ``/ready``, ``/stats``, ``/metrics``, ``/tap`` and ``/`` (the status
    page), with the checks every route gets.

    The server calls ``precheck`` then ``handle``. Unknown path: 404; wrong method:
    405 with ``Allow``; with a ``token``, every path but ``/health``, ``/ready`` and ``/``
    needs ``Authorization: Bearer <token>`` (401). Rejections are counted by
    ``count(status)``. The ``status`` source serves exactly these; the ``http`` source adds
    ingest routes.
    """

    routes: ClassVar[dict[str, str]] = {
        "/health": "GET",
        "/stats": "GET",
        "/metrics": "GET",
        **OperatorRoutes.routes,
    }
    open_paths: ClassVar[frozenset[str]] = frozenset({"/health", *OperatorRoutes.open_paths})

    def __init__(
        self,
        observer: Observer,
        token: str | list[str] | None,
        count: Callable[[int], None],
        *,
        max_taps: int = MAX_TAPS,
        tap_queue_max: int = TAP_QUEUE_MAX,
    ) -> None:
        self._observer = observer
        self._tokens = Tokens(token)
        self._count = count
        self.operator = OperatorRoutes(observer, max_taps=max_taps, tap_queue_max=tap_queue_max)

    def precheck(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> Response | None:
        allowed = self.routes.get(path)
        if allowed is None:
            return self._reject(404, f"no such endpoint: {path}")
        if method != allowed and not (method == "HEAD" and allowed == "GET"):
            return self._reject(405, f"{path} takes {allowed}", [("Allow", allowed)])
        if self._tokens and path not in self.open_paths:
            given = next((value for name, value in headers if name == b"authorization"), b"")
            if not self._tokens.matches(_bearer_token(given)):
                return self._reject(
                    401, "missing or wrong bearer token", [("WWW-Authenticate", "Bearer")]
                )
        return None

    def _reject(
        self, status: int, message: str, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        self._count(status)
        return _error(status, message, headers)

    def handle(self, request: Request) -> Response | Awaitable[Response] | Later:
        path = request.path
        if path == "/health":
            return Response(200, _encode(self._observer.health()))
        if path == "/stats":
            return Response(200, _encode(self._observer.stats()))
        if path in OperatorRoutes.routes:
            return self.operator.handle(request, self._reject)
        return Response(
            200,
            self._observer.metrics_text().encode(),
            content_type="text/plain; version=0.0.4; charset=utf-8",
        )


async def _not_serving(ops: Sequence[Op]) -> None:
    raise NotAccepted("not serving yet", retry_after=1)


class _TooManyEvents(InvalidEvent):
    """A batch with more events than ``max_batch_events``: 413, not 400."""


_UNREADABLE = (msgspec.MsgspecError, UnicodeDecodeError, RecursionError)
_Items = msgspec.json.Decoder(list[msgspec.Raw])
"""A JSON array's items, each left undecoded: counts them without building objects."""


def _check_count(body: bytes, array: bool, limit: int) -> None:
    """Raise :class:`_TooManyEvents` when ``body`` holds more than ``limit`` events.

    Cheap bounds first, each one C call: an upper bound (the newlines of NDJSON, the ``{``
    of an array: each event has one) that is not past the limit lets the body through; a
    lower bound (NDJSON lines ending ``}``) past it refuses it. Only in between are the
    events counted. A body that is not JSON passes, and decoding words its error."""
    at_least = ""
    if array:
        if body.count(b"{") <= limit:
            return
        try:
            count = len(_Items.decode(body))
        except _UNREADABLE:
            return
    else:
        if body.count(b"\n") < limit:
            return
        count = body.count(b"}\n")
        if count > limit:
            at_least = "at least "
        else:
            lines = body.translate(None, _BLANK).split(b"\n")
            count = len(lines) - lines.count(b"")
    if count > limit:
        raise _TooManyEvents(
            f"batch too large: {at_least}{count} events, more than max_batch_events ({limit})"
        )


_BLANK = b" \t\r\x0b\x0c"
"""What, besides newlines, a blank line of NDJSON may hold (``bytes.isspace``)."""


class _Routes(ReadRoutes):
    """The read routes plus ``POST /event`` and ``POST /events``.

    With the engine's :class:`~observer_core.Emitter`, an event is answered from the
    commit's callback (``submit`` and ``LATER``): no coroutine, future or task step per
    request. Any other ``emit`` is awaited in a coroutine.
    """

    routes: ClassVar[dict[str, str]] = {**ReadRoutes.routes, "/event": "POST", "/events": "POST"}

    def __init__(self, source: HttpSource) -> None:
        super().__init__(
            source.ctx.observer,
            source.config.token,
            source.reject,
            max_taps=source.config.max_taps,
            tap_queue_max=source.config.tap_queue_max,
        )
        self._emit: Emit = _not_serving
        self._submit: Callable[[Sequence[Op], OnAccepted], None] | None = None
        ctx = source.ctx
        self._decoder = EventDecoder(
            max_field_bytes=ctx.max_field_bytes, on_unknown=UnknownFields(ctx.metrics, ctx.logger)
        )
        self._ring_len = source.ctx.observer.ring_len
        self._max_batch = source.config.max_batch_events

    def serve(self, emit: Emit) -> None:
        """Start taking events: accepted ones go to ``emit``."""
        self._emit = emit
        self._submit = emit.submit if isinstance(emit, Emitter) else None

    def handle(self, request: Request) -> Response | Awaitable[Response] | Later:
        path = request.path
        try:
            if path == "/event":
                ops = [self._decoder.decode(request.body)]
                batch = 0
            elif path == "/events":
                ops = self._decode_batch(request.body)
                batch = len(ops)
            else:
                return super().handle(request)
        except _TooManyEvents as exc:
            return self._reject(413, str(exc))
        except InvalidEvent as exc:
            return self._reject(400, str(exc))
        if self._submit is None:
            return self._accept(ops, batch)
        try:
            self._submit(ops, partial(self._answer, request, batch))
        except NotAccepted as exc:
            return self._refused(exc)
        return LATER

    def _answer(self, request: Request, batch: int, refusal: NotAccepted | None) -> None:
        request.reply(self._accepted(batch) if refusal is None else self._refused(refusal))

    async def _accept(self, ops: list[Op], batch: int) -> Response:
        try:
            await self._emit(ops)
        except NotAccepted as exc:
            return self._refused(exc)
        return self._accepted(batch)

    def _accepted(self, batch: int) -> Response:
        """200 for ``/event`` (``batch`` 0) or for a batch of that many events."""
        if batch:
            return Response(200, b'{"accepted":%d}' % batch)
        return Response(200, b'{"accepted":true,"ring_size":%d}' % self._ring_len())

    def _refused(self, refusal: NotAccepted) -> Response:
        """503 with ``Retry-After`` for what a retry can clear; 413 for what it never can."""
        if isinstance(refusal, BatchTooLarge):
            return self._reject(413, str(refusal))
        return self._reject(503, str(refusal), [("Retry-After", str(refusal.retry_after))])

    def _decode_batch(self, body: bytes) -> list[Op]:
        """``POST /events``: NDJSON or a JSON array, at least one event and at most
        ``max_batch_events`` (counted before anything is decoded)."""
        stripped = body.lstrip()
        array = stripped[:1] == b"["
        _check_count(stripped if array else body, array, self._max_batch)
        decoder = self._decoder
        ops = decoder.decode_array(stripped) if array else decoder.decode_lines(body)
        if not ops:
            raise InvalidEvent("empty batch: send one or more events")
        return ops


class HttpSource(Source):
    """Takes events over HTTP (POST /event, /events) and serves /health, /stats, /metrics."""

    name: ClassVar[str] = "http"
    Config = HttpConfig
    config: HttpConfig

    def __init__(self, config: HttpConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._server: HttpServer | None = None
        self._ingest: _Routes | None = None
        self._served: ReadRoutes | None = None

    def reject(self, status: int) -> None:
        self.ctx.metrics.requests_rejected.inc(status=str(status))

    async def open(self) -> None:
        """Bind the port now, so a taken port stops the daemon before anything runs."""
        self._served = self._routes()
        self._server = HttpServer(
            self._served,
            host=self.config.host,
            port=self.config.port,
            limits=HttpLimits.of(self.config),
            allowed_hosts=self.config.allowed_hosts,
            on_reject=self.reject,
            logger=self.ctx.logger,
        )
        await self._server.start()
        self.ctx.logger.info("listening on http://%s:%d", self.config.host, self._server.port)

    def _routes(self) -> ReadRoutes:
        """What the server answers (a subclass may serve fewer routes)."""
        self._ingest = _Routes(self)
        return self._ingest

    async def run(self, emit: Emit) -> None:
        if self._ingest is not None:
            self._ingest.serve(emit)
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if self._served is not None:
            self._served.operator.close()  # taps end now: they would hold the grace period
        if server is not None:
            await server.stop(grace=5.0)


@hookimpl
def observer_register_sources(register: RegisterSource) -> None:
    register(HttpSource)
