"""The ``http`` source: the ingest listener agents post events to.

Endpoints: ``GET /health``, ``GET /stats``, ``GET /metrics``, ``POST /event``
(one JSON object) and ``POST /events`` (NDJSON or a JSON array). An event is
answered 200 only after every ack-holding op sink has written it; a failing
sink or a backed-up input answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Annotated, ClassVar

import anyio
import msgspec

from observer_core import (
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
    Source,
    hookimpl,
)
from observer_core.httpserver import (
    LATER,
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

__all__ = ["HttpSource", "ReadRoutes"]

_encode = msgspec.json.Encoder().encode


class HttpConfig(ComponentConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[sources.NAME]`` with ``plugin = "http"``."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 3800
    token: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    """When set, every endpoint but /health needs ``Authorization: Bearer <token>``.
    Empty is refused (a ``${VAR:-}`` left empty must not silently turn auth off)."""
    max_body_bytes: Size = 1048576
    max_connections: Size = 1024
    header_timeout_secs: Seconds = 10
    idle_timeout_secs: Seconds = 60
    # Contract §11.2: the limits every listener has (see observer_core.httpserver.HttpLimits).
    max_url_bytes: UrlBytes = 8192
    max_header_bytes: HeaderBytes = 32768
    max_headers: HeaderCount = 100
    body_timeout_secs: Seconds = 10
    max_inflight_bytes: Size = 64 << 20


def _error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, _encode({"error": message}), headers or [])


def _bearer_token(authorization: bytes) -> bytes:
    """The token of ``Bearer <token>`` (the scheme in any case, RFC 7235); else empty."""
    scheme, _, token = authorization.partition(b" ")
    return token.lstrip(b" ") if scheme.lower() == b"bearer" else b""


class ReadRoutes:
    """``GET /health``, ``/stats`` and ``/metrics``, with the checks every route gets.

    The server calls ``precheck`` then ``handle``. Unknown path: 404; wrong method:
    405 with ``Allow``; with a ``token``, every path but ``/health`` needs
    ``Authorization: Bearer <token>`` (401). Rejections are counted by ``count(status)``.
    The ``status`` source serves exactly these; the ``http`` source adds ingest routes.
    """

    routes: ClassVar[dict[str, str]] = {"/health": "GET", "/stats": "GET", "/metrics": "GET"}

    def __init__(self, observer: Observer, token: str | None, count: Callable[[int], None]) -> None:
        self._observer = observer
        self._expected = token.encode() if token else None
        self._count = count

    def precheck(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> Response | None:
        allowed = self.routes.get(path)
        if allowed is None:
            return self._reject(404, f"no such endpoint: {path}")
        if method != allowed and not (method == "HEAD" and allowed == "GET"):
            return self._reject(405, f"{path} takes {allowed}", [("Allow", allowed)])
        if self._expected is not None and path != "/health":
            given = next((value for name, value in headers if name == b"authorization"), b"")
            if not hmac.compare_digest(_bearer_token(given), self._expected):
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
        return Response(
            200,
            self._observer.metrics_text().encode(),
            content_type="text/plain; version=0.0.4; charset=utf-8",
        )


async def _not_serving(ops: Sequence[Op]) -> None:
    raise NotAccepted("not serving yet", retry_after=1)


class _Routes(ReadRoutes):
    """The read routes plus ``POST /event`` and ``POST /events``.

    With the engine's :class:`~observer_core.Emitter`, an event is answered from the
    commit's callback (``submit`` and ``LATER``): no coroutine, future or task step per
    request. Any other ``emit`` is awaited in a coroutine.
    """

    routes: ClassVar[dict[str, str]] = {**ReadRoutes.routes, "/event": "POST", "/events": "POST"}

    def __init__(self, source: HttpSource) -> None:
        super().__init__(source.ctx.observer, source.config.token, source.reject)
        self._emit: Emit = _not_serving
        self._submit: Callable[[Sequence[Op], OnAccepted], None] | None = None
        self._decoder = EventDecoder(max_field_bytes=source.ctx.max_field_bytes)
        self._ring_len = source.ctx.observer.ring_len

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
        return self._reject(503, str(refusal), [("Retry-After", str(refusal.retry_after))])

    def _decode_batch(self, body: bytes) -> list[Op]:
        """``POST /events``: NDJSON or a JSON array, at least one event."""
        stripped = body.lstrip()
        if stripped[:1] == b"[":
            ops = self._decoder.decode_array(stripped)
        else:
            ops = self._decoder.decode_lines(body)
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

    def reject(self, status: int) -> None:
        self.ctx.metrics.requests_rejected.inc(status=str(status))

    async def open(self) -> None:
        """Bind the port now, so a taken port stops the daemon before anything runs."""
        self._server = HttpServer(
            self._routes(),
            host=self.config.host,
            port=self.config.port,
            limits=HttpLimits.of(self.config),
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
        if server is not None:
            await server.stop(grace=5.0)


@hookimpl
def observer_register_sources(register: Callable[[type[Source]], None]) -> None:
    register(HttpSource)
