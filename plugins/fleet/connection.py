"""One NATS connection for a fleet component: nats-py imported lazily, connected with
retries, reconnected by nats-py, its state shown in ``/health`` and ``/stats``.

nats-py is an optional dependency (``pip install 'observer-core[nats]'``): nothing here
imports it until a component opens, and :func:`require_nats` turns its absence into a
config error that says what to install.
"""

from __future__ import annotations

import importlib.util
import time
from typing import TYPE_CHECKING, Any

import anyio

from observer_core import Context, redact_url

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

__all__ = ["INSTALL_HINT", "Link", "Quiet", "check_url", "created_meanwhile", "require_nats"]

INSTALL_HINT = "needs nats-py, which is not installed: pip install 'observer-core[nats]'"
CONNECT_TIMEOUT_SECS = 2
RECONNECT_WAIT_SECS = 1
PING_SECS = 10
MAX_OUTSTANDING_PINGS = 3
"""A connection that answers none of this many pings (30 s) is dropped and made again."""
BACKOFF_MAX_SECS = 15.0
LOG_REPEAT_SECS = 60.0
"""The same connection error is logged again only after this long."""
_SCHEMES = ("nats://", "tls://", "ws://", "wss://")
_CREATED_MEANWHILE = (10058, 10065)
"""JetStream's answers when another client created the same stream a moment before:
"stream name already in use", "subjects overlap with an existing stream"."""


def require_nats(key: str) -> None:
    """Raise the config error ``key: needs nats-py ...`` when nats-py is missing."""
    if importlib.util.find_spec("nats") is None:
        raise ValueError(f"{key}: {INSTALL_HINT}")


def check_url(url: str, key: str = "url") -> list[str]:
    """The servers of a comma-separated ``url``; ``ValueError("url: ...")`` when malformed."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError(f"{key}: expected a NATS URL, e.g. nats://127.0.0.1:4222")
    for server in servers:
        if not server.startswith(_SCHEMES):
            raise ValueError(
                f"{key}: expected nats://HOST:PORT (or tls://, ws://, wss://), "
                f"got {redact_url(server)!r}"
            )
    return servers


def created_meanwhile(exc: BaseException) -> bool:
    """Whether creating a stream (or bucket) failed only because another observer of the
    fleet created it at the same moment; the caller then uses the one that exists."""
    err_code = getattr(exc, "err_code", None)
    return err_code in _CREATED_MEANWHILE


class Quiet:
    """Logs a repeated message once per ``LOG_REPEAT_SECS`` (an outage is one line a minute)."""

    def __init__(self) -> None:
        self._last = ""
        self._at = 0.0

    def due(self, message: str) -> bool:
        now = time.monotonic()
        if message == self._last and now - self._at < LOG_REPEAT_SECS:
            return False
        self._last, self._at = message, now
        return True


class Link:
    """A NATS connection that a component keeps for its lifetime.

    :meth:`connect` waits until the first connection succeeds (:meth:`try_connect`
    gives up after a few seconds); nats-py then reconnects on its own, forever. The
    state is the ``/health`` check named after the instance, and is in ``/stats``.
    """

    def __init__(
        self, ctx: Context, url: str, *, token: str | None = None, creds: str | None = None
    ) -> None:
        self.ctx = ctx
        self.servers = check_url(url)
        self._token = token
        self._creds = str(ctx.resolve_path(creds)) if creds else None
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._quiet = Quiet()
        self._closing = False
        self.ready = anyio.Event()
        """Set once the first connection is up."""
        self._report(False, "not connected yet")

    @property
    def client(self) -> Client:
        assert self._client is not None, "connect() first"
        return self._client

    @property
    def js(self) -> JetStreamContext:
        """The connection's one JetStream context (each makes its own reply subscription)."""
        if self._js is None:
            self._js = self.client.jetstream()
        return self._js

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def try_connect(self) -> bool:
        """Try to connect for a few seconds; False when NATS is not there (yet)."""
        if self._client is None:
            with anyio.move_on_after(CONNECT_TIMEOUT_SECS + RECONNECT_WAIT_SECS):
                await self.connect()
        return self._client is not None

    async def connect(self) -> Client:
        """Connect, however long it takes (cancel to give up): nats-py retries every
        ``RECONNECT_WAIT_SECS``; errors it does not retry are retried here, with backoff."""
        delay = 0.5
        while self._client is None:
            try:
                self._client = await self._connect_once()
            except Exception as exc:
                self._trouble(f"cannot connect to {self.url}: {_describe(exc)}")
                await anyio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_SECS)
        if not self.ready.is_set():
            self._report(True, "connected")
            self.ctx.logger.info("connected to NATS at %s", self.url)
            self.ready.set()
        return self._client

    async def _connect_once(self) -> Client:
        import nats

        options: dict[str, Any] = {}
        if self._token:
            options["token"] = self._token
        if self._creds:
            options["user_credentials"] = self._creds
        return await nats.connect(
            self.servers,
            name=f"observer-core {self.ctx.instance}",
            connect_timeout=CONNECT_TIMEOUT_SECS,
            reconnect_time_wait=RECONNECT_WAIT_SECS,
            ping_interval=PING_SECS,
            max_outstanding_pings=MAX_OUTSTANDING_PINGS,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            **options,
        )

    @property
    def url(self) -> str:
        """The servers as shown (/health, /stats, logs): passwords and tokens masked."""
        return redact_url(",".join(self.servers))

    async def _on_error(self, exc: Exception) -> None:
        self._trouble(f"NATS: {_describe(exc)}")

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        self._report(False, "disconnected; reconnecting")
        self.ctx.logger.warning("disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        self._report(True, "reconnected")
        self.ctx.logger.info("reconnected to NATS")

    def _trouble(self, message: str) -> None:
        self.ctx.status["nats_error"] = message
        if self._quiet.due(message):
            self.ctx.logger.warning("%s", message)

    def _report(self, healthy: bool, state: str) -> None:
        self.ctx.status["nats"] = state
        self.ctx.report_check(self.ctx.instance, healthy, url=self.url)

    async def close(self) -> None:
        self._closing = True
        client, self._client = self._client, None
        self._js = None
        if client is not None and not client.is_closed:
            with anyio.move_on_after(5, shield=True):
                await client.close()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
