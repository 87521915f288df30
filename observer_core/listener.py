"""What the listening sources share (``http``, ``status``, ``otlp``, a third party's).

:class:`ListenerConfig` holds the keys every listener has (contract §11),
:class:`ReadRoutes` answers ``GET /health``, ``/ready``, ``/stats``, ``/metrics``,
``/tap`` and ``/`` with the checks every route gets (404, 405, the bearer token), and
:class:`ListenerSource` binds at ``open()`` and serves until cancelled. A listener that
ingests subclasses the three: its routes add paths and take ``serve(emit)``.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ClassVar

import anyio
import msgspec

from .auth import Token, Tokens
from .components import ComponentConfig, Context, Emit, Handed, Observer, Source
from .engine import MAX_PENDING_OPS, or_none
from .http import (
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
    json_error,
)
from .http_guard import AllowedHosts, normalize_allowed_hosts
from .operator_routes import MAX_TAPS, TAP_QUEUE_MAX, OperatorRoutes

__all__ = [
    "HandedSocket",
    "ListenerConfig",
    "ListenerSource",
    "Port",
    "ReadRoutes",
    "bearer_token",
    "json_error",
    "start_on",
]

_encode = msgspec.json.Encoder().encode
SCENARIO_SOURCE = "scenario"
"""The ``source`` of an op ``POST /event`` gets when the event names none (contract §6)."""
RECENT_SCENARIO_OPS = 10
"""How many of them ``/stats`` lists under ``recent_scenario_ops`` (contract §6)."""


Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
"""A TCP port; 0 binds any free one."""


class ListenerConfig(ComponentConfig, kw_only=True, forbid_unknown_fields=True):
    """The keys every listening source has (``http``, ``status``, ``otlp``): where it binds,
    its token, the limits of contract §11.2, tap and ``allowed_hosts`` (§11.4)."""

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
    # Contract §11.2: the limits every listener has (see observer_core.http.HttpLimits).
    max_url_bytes: UrlBytes = 8192
    max_header_bytes: HeaderBytes = 32768
    max_headers: HeaderCount = 100
    body_timeout_secs: Seconds = 10
    max_inflight_bytes: Size = 64 << 20
    max_batch_events: Annotated[int, msgspec.Meta(ge=1, le=MAX_PENDING_OPS)] = 10000
    """Events one request may carry (``POST /events``; spans of ``POST /v1/traces``); past
    it 413 and nothing is accepted. At most the engine's pending bound (65536): a larger
    batch could never be accepted."""
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


class HandedSocket:
    """A listening socket handed from a listener to its successor at a config reload
    (:meth:`Source.handover`): what any source serving an :class:`HttpServer` hands over."""

    __slots__ = ("host", "port", "sock")

    def __init__(self, host: str, port: int, sock: socket.socket) -> None:
        self.host, self.port, self.sock = host, port, sock

    @classmethod
    def of(cls, server: HttpServer | None, host: str, port: int) -> HandedSocket | None:
        """A duplicate of ``server``'s listening socket, configured as ``host:port``; None
        when it is not serving or listens on more than one socket (then the successor
        binds again)."""
        sock = server.listening_socket() if server is not None else None
        return None if sock is None else cls(host, port, sock)

    def fits(self, host: str, port: int) -> bool:
        """Whether a successor configured as ``host:port`` may serve on it (port 0, any
        free port, never does: it asks for a new one)."""
        return port != 0 and (self.host, self.port) == (host, port)

    def close(self) -> None:
        """Close it (nobody took it over)."""
        with contextlib.suppress(OSError):
            self.sock.close()


async def start_on(server: HttpServer, inherited: HandedSocket | None) -> None:
    """Start ``server``: on ``inherited`` (a socket taken over) when given, else bind;
    ``inherited`` is closed if it fails."""
    try:
        await server.start(inherited.sock if inherited is not None else None)
    except BaseException:
        if inherited is not None:
            inherited.close()
        raise


def bearer_token(authorization: bytes) -> bytes:
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
        self._auth = bool(self._tokens)  # per request, without Tokens.__bool__'s call
        self._count = count
        # The class's routes, as an attribute of the instance: read per request, a class
        # attribute is not (measured: ~180 instructions fewer per POST /event).
        self._routes = self.routes
        self.operator = OperatorRoutes(observer, max_taps=max_taps, tap_queue_max=tap_queue_max)

    def precheck(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> Response | None:
        allowed = self._routes.get(path)
        if allowed is None:
            return self._reject(404, f"no such endpoint: {path}")
        if method != allowed and not (method == "HEAD" and allowed == "GET"):
            return self._reject(405, f"{path} takes {allowed}", [("Allow", allowed)])
        if self._auth and path not in self.open_paths:
            given = next((value for name, value in headers if name == b"authorization"), b"")
            if not self._tokens.matches(bearer_token(given)):
                return self._reject(
                    401, "missing or wrong bearer token", [("WWW-Authenticate", "Bearer")]
                )
        return None

    def _reject(
        self, status: int, message: str, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        self._count(status)
        return json_error(status, message, headers)

    def serve(self, emit: Emit) -> None:
        """Start taking what the routes ingest (the read routes take nothing)."""

    def _stats(self) -> dict[str, Any]:
        """``/stats``: the daemon's stats, and ``recent_scenario_ops`` as contract §6 has
        it (the newest ops of ``/event``'s default source, for the reference's clients)."""
        stats = self._observer.stats()
        stats["recent_scenario_ops"] = [
            {
                "ts": op.timestamp,
                "ok": op.success,
                "staffer": or_none(op.staffer_id),
                "kind": or_none(op.event_kind),
                "role": or_none(op.role),
            }
            for op in self._observer.recent_ops(SCENARIO_SOURCE, RECENT_SCENARIO_OPS)
        ]
        return stats

    def handle(self, request: Request) -> Response | Awaitable[Response] | Later:
        path = request.path
        if path == "/health":
            return Response(200, _encode(self._observer.health()))
        if path == "/stats":
            return Response(200, _encode(self._stats()))
        if path in OperatorRoutes.routes:
            return self.operator.handle(request, self._reject)
        return Response(
            200,
            self._observer.metrics_text().encode(),
            content_type="text/plain; version=0.0.4; charset=utf-8",
        )


class ListenerSource(Source):
    """A source that listens: binds at ``open()``, serves :meth:`routes` until cancelled.

    Subclasses set ``name`` and a ``Config`` subclassing :class:`ListenerConfig`, and
    override :meth:`routes` to serve more than the read routes (``status`` serves them
    as they are)."""

    config: ListenerConfig

    def __init__(self, config: ListenerConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._server: HttpServer | None = None
        self._served: ReadRoutes | None = None
        self._inherited: HandedSocket | None = None
        """The socket of the instance this one replaces (a reload), when it bound the same
        host and port: served on instead of binding again."""

    def handover(self) -> HandedSocket | None:
        """Its bound socket, for the instance replacing it at a config reload."""
        return HandedSocket.of(self._server, self.config.host, self.config.port)

    def take_over(self, handed: Handed) -> bool:
        """Serve on the socket :meth:`handover` gave, if it was bound for this config's
        host and port (a token rotation then refuses nobody, and connections waiting to be
        accepted are served)."""
        if not isinstance(handed, HandedSocket) or not handed.fits(
            self.config.host, self.config.port
        ):
            return False
        self._inherited = handed
        return True

    def reject(self, status: int) -> None:
        """Count a rejected request (``observer_requests_rejected_total``) by its status."""
        self.ctx.metrics.requests_rejected.inc(status=str(status))

    async def open(self) -> None:
        """Bind the port now, so a taken port stops the daemon before anything runs."""
        self._served = self.routes()
        self._server = HttpServer(
            self._served,
            host=self.config.host,
            port=self.config.port,
            limits=HttpLimits.of(self.config),
            allowed_hosts=self.config.allowed_hosts,
            on_reject=self.reject,
            logger=self.ctx.logger,
        )
        sock, self._inherited = self._inherited, None
        await start_on(self._server, sock)
        how = "still listening" if sock is not None else "listening"
        self.ctx.logger.info("%s on http://%s:%d", how, self.config.host, self._server.port)

    def routes(self) -> ReadRoutes:
        """What the server answers: called once, by ``open()``."""
        return ReadRoutes(
            self.ctx.observer,
            self.config.token,
            self.reject,
            max_taps=self.config.max_taps,
            tap_queue_max=self.config.tap_queue_max,
        )

    async def run(self, emit: Emit) -> None:
        """Serve until cancelled; what the routes ingest goes to ``emit``."""
        if self._served is not None:
            self._served.serve(emit)
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def aclose(self) -> None:
        """Stop listening: taps end at once, requests in flight get 5 seconds."""
        server, self._server = self._server, None
        if self._inherited is not None:  # taken over, never served on
            self._inherited.close()
        if self._served is not None:
            self._served.operator.close()  # taps end now: they would hold the grace period
        if server is not None:
            await server.stop(grace=5.0)
