"""The ``gateway`` source: observe the calls agents make to the gateway.

Two ways in (CONTRACT §6):

- a reverse proxy, when ``listen`` is set: agents in any language point at it
  instead of the gateway; each call is forwarded unchanged, streamed back, and
  recorded as an op (source ``mcp``);
- a Python API for agents written in Python: :class:`ObservedGateway` and
  :class:`AsyncObservedGateway` (see ``client.py``), which send their ops to the
  daemon's ``/events``.

With ``health_check`` it also watches ``GET {url}/health`` and reports it in
``/health`` ``checks`` under the instance's name; a gateway that is down never
stops the daemon.
"""

from __future__ import annotations

from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Annotated, ClassVar

import anyio
import httpx
import msgspec

from observer_core import (
    ComponentConfig,
    Context,
    Emit,
    Handed,
    RegisterSource,
    Source,
    Token,
    Tokens,
    check_http_url,
    hookimpl,
    redact_url,
)
from observer_core.http import (
    Connections,
    HeaderBytes,
    HeaderCount,
    HttpLimits,
    HttpServer,
    Seconds,
    Size,
    UrlBytes,
)
from observer_core.http_guard import AllowedHosts, normalize_allowed_hosts
from observer_core.listener import HandedSocket, start_on

from .client import AsyncObservedGateway, ObservedGateway, OpRecorder
from .health import HealthWatch
from .proxy import MAX_BODY_BYTES, GatewayProxy, QuietBrokenReplies
from .summarize import js_stringify, summarize

__all__ = [
    "AsyncObservedGateway",
    "GatewayConfig",
    "GatewaySource",
    "ObservedGateway",
    "OpRecorder",
    "js_stringify",
    "summarize",
]

STOP_GRACE_SECS = 3.0
"""At shutdown, how long calls in flight through the proxy get to finish."""
MAX_CONNECTIONS = 1024


def parse_listen(listen: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:3701"`` for IPv6) as ``(host, port)``; ValueError if not."""
    host, sep, port_text = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f'listen: expected "host:port", e.g. "127.0.0.1:3701", got {listen!r}')
    return host, int(port_text)


class GatewayConfig(ComponentConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[sources.NAME]`` with ``plugin = "gateway"``."""

    listen_keys: ClassVar[tuple[str, str]] = ("listen", "listen_token")
    """Where the proxy binds and its token: see ``observer_core.config.exposed_listener``."""
    url: str = "http://localhost:3700"
    """The gateway's base URL."""
    listen: str | None = None
    """Where the proxy listens, "host:port"; unset or "": no proxy."""
    health_check: bool = True
    """Watch GET {url}/health and report it in /health checks."""
    timeout_secs: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 300
    """Per proxied call: seconds the gateway may take to answer (else 504) or stall mid-reply."""
    exclude_paths: list[str] = msgspec.field(default_factory=lambda: ["/health"])
    """Paths proxied but not recorded (exact match, without the query)."""
    listen_token: Token | None = None
    """When set, proxy clients must send ``X-Observer-Token: <token>`` (else 401); a list
    accepts any of its tokens (rotation). The header is never forwarded."""
    forwarded_headers: bool = False
    """Set ``X-Forwarded-For`` (replacing the client's) and ``X-Forwarded-Proto`` on
    forwarded requests; when false, nothing is added."""
    # The proxy listener's limits (contract §11.2; see observer_core.http.HttpLimits).
    max_url_bytes: UrlBytes = 8192
    max_header_bytes: HeaderBytes = 32768
    max_headers: HeaderCount = 100
    max_body_bytes: Size = MAX_BODY_BYTES
    header_timeout_secs: Seconds = 10
    body_timeout_secs: Seconds = 300
    idle_timeout_secs: Seconds = 60
    """How long a proxy client's keep-alive connection may idle between requests."""
    send_timeout_secs: Seconds = 30
    """How long an answer's write may stall, the client not reading it: then the connection
    is closed (slow readers, e.g. slowhttptest -X, do not hold the proxy's connections)."""
    max_connections: Connections = MAX_CONNECTIONS
    max_inflight_bytes: Size = 256 << 20
    allowed_hosts: AllowedHosts = msgspec.field(default_factory=list)
    """Further names (or addresses) proxy clients may call it by (contract §11.4), as for
    the ``http`` source."""

    def __post_init__(self) -> None:
        check_http_url(self.url)
        if self.listen == "":  # e.g. "${GATEWAY_PROXY_LISTEN:-}": no proxy
            self.listen = None
        if self.listen is not None:
            parse_listen(self.listen)
        normalize_allowed_hosts(self.allowed_hosts)
        for path in self.exclude_paths:
            if not path.startswith("/"):
                raise ValueError(f"exclude_paths: a path starts with '/', got {path!r}")


class GatewaySource(Source):
    """Proxies calls to the gateway (``listen``) and records each as an op; watches its health."""

    name: ClassVar[str] = "gateway"
    Config = GatewayConfig
    config: GatewayConfig

    def __init__(self, config: GatewayConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._client: httpx.AsyncClient | None = None
        self._proxy: GatewayProxy | None = None
        self._server: HttpServer | None = None
        self._inherited: HandedSocket | None = None
        """The proxy socket of the instance this one replaces (a reload), when it listened
        on the same ``listen``: served on instead of binding again."""
        self._dropped = ctx.metrics.counter(
            "observer_gateway_ops_dropped_total",
            "Proxied calls whose op was lost (queue full or not accepted).",
        )
        ctx.status.update(url=redact_url(config.url), listen=config.listen)

    @property
    def check_name(self) -> str:
        """The key in /health ``checks``: the instance's name ("gateway" for [sources.gateway])."""
        return self.ctx.instance.rpartition(".")[2]

    def handover(self) -> HandedSocket | None:
        """The proxy's bound socket, for the instance replacing this one at a config reload."""
        if self.config.listen is None:
            return None
        return HandedSocket.of(self._server, *parse_listen(self.config.listen))

    def take_over(self, handed: Handed) -> bool:
        """Serve the proxy on the socket :meth:`handover` gave, if it was bound for this
        ``listen`` (a token or upstream change then refuses no proxy client)."""
        if self.config.listen is None or not isinstance(handed, HandedSocket):
            return False
        if not handed.fits(*parse_listen(self.config.listen)):
            return False
        self._inherited = handed
        return True

    async def open(self) -> None:
        """Make the HTTP client; with ``listen``, bind the proxy (a taken port stops the daemon)."""
        timeout = self.config.timeout_secs
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS, max_keepalive_connections=100, keepalive_expiry=30
            ),
            follow_redirects=False,
            cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),  # a proxy keeps none
        )
        if self.config.listen is None:
            return
        self._proxy = GatewayProxy(
            self.config.url,
            self._client,
            timeout=timeout,
            exclude_paths=self.config.exclude_paths,
            logger=self.ctx.logger,
            on_drop=self._count_drop,
            status=self.ctx.status,
            tokens=Tokens(self.config.listen_token),
            forwarded_headers=self.config.forwarded_headers,
        )
        host, port = parse_listen(self.config.listen)
        server_log = self.ctx.logger.getChild("proxy")
        server_log.addFilter(QuietBrokenReplies())
        self._server = HttpServer(
            self._proxy,
            host=host,
            port=port,
            limits=HttpLimits.of(self.config),
            allowed_hosts=self.config.allowed_hosts,
            logger=server_log,
            server_name="",
        )
        sock, self._inherited = self._inherited, None
        await start_on(self._server, sock)
        how = "still proxying" if sock is not None else "proxying"
        self.ctx.logger.info(
            "%s http://%s:%d to %s", how, host, self._server.port, redact_url(self.config.url)
        )

    def _count_drop(self, count: int) -> None:
        self._dropped.inc(count, instance=self.ctx.instance)
        self.ctx.status["ops_dropped"] = int(self._dropped.get(instance=self.ctx.instance))

    async def run(self, emit: Emit) -> None:
        try:
            async with anyio.create_task_group() as tasks:
                if self.config.health_check and self._client is not None:
                    watch = HealthWatch(self.config.url, self._client, self.ctx, self.check_name)
                    tasks.start_soon(watch.run)
                if self._proxy is not None:
                    tasks.start_soon(self._proxy.pump, emit)
                await anyio.sleep_forever()
        finally:
            with anyio.move_on_after(STOP_GRACE_SECS + 2, shield=True):
                await self._stop_proxy(emit)

    async def _stop_proxy(self, emit: Emit | None) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace=STOP_GRACE_SECS)
        if emit is not None and self._proxy is not None:
            await self._proxy.flush(emit)

    async def aclose(self) -> None:
        if self._inherited is not None:  # taken over, never served on
            self._inherited.close()
        await self._stop_proxy(None)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


@hookimpl
def observer_register_sources(register: RegisterSource) -> None:
    register(GatewaySource)
