"""`HttpServer`: binds, accepts connections within the limits, shares the memory budget
among them, and stops gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import cast

from ..http_guard import BrowserGuard, normalize_allowed_hosts
from ._connection import Connection
from ._limits import HttpLimits
from ._messages import Handler
from ._shared import Shared

_STOP_CANCEL_WAIT = 1.0  # at the end of stop(), how long cancelled handlers get


class HttpServer:
    """An HTTP/1.1 server calling one `Handler`, within ``limits`` (see `HttpLimits`).

    ``max_body_bytes``, ``max_connections``, ``header_timeout`` and ``idle_timeout``, when
    given, override those fields of ``limits``. ``allowed_hosts``: further names clients may
    call the listener by, for its `BrowserGuard` (ValueError naming a bad one). ``on_reject
    (status)`` is called for each error the server itself answers: 400, 403, 408, 413, 414,
    431, 500 (a failing handler), 503.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        host: str,
        port: int,
        limits: HttpLimits | None = None,
        max_body_bytes: int | None = None,
        max_connections: int | None = None,
        header_timeout: float | None = None,
        idle_timeout: float | None = None,
        allowed_hosts: Sequence[str] = (),
        on_reject: Callable[[int], None] | None = None,
        logger: logging.Logger | None = None,
        server_name: str = "observer-core",
    ) -> None:
        overrides = {
            key: value
            for key, value in (
                ("max_body_bytes", max_body_bytes),
                ("max_connections", max_connections),
                ("header_timeout_secs", header_timeout),
                ("idle_timeout_secs", idle_timeout),
            )
            if value is not None
        }
        self._limits = limits = HttpLimits.of(limits, **overrides)
        self._host = host
        self._port = port
        self._allowed_hosts = normalize_allowed_hosts(allowed_hosts)
        self._logger = logger or logging.getLogger("observer_core.http")
        self._shared = Shared(
            handler, limits, on_reject=on_reject, logger=self._logger, server_name=server_name
        )
        self._connections: set[Connection] = set()  # (the same set as the shared state's)
        self._shared._connections = cast("set[object]", self._connections)
        self._server: asyncio.Server | None = None

    async def start(self, sock: socket.socket | None = None) -> None:
        """Bind and listen; raises OSError if the address is taken. With ``sock`` (a bound
        listening socket, from :meth:`listening_socket` of a server it succeeds), serve on
        it instead: the port never closes, and connections waiting in its backlog are
        served by this server."""
        if self._server is not None:
            raise RuntimeError("server already started")
        loop = asyncio.get_running_loop()
        shared = self._shared
        backlog = min(max(self._limits.max_connections, 128), 4096)

        def protocol() -> asyncio.Protocol:
            # A Connection is a protocol by its methods, not by its base: a compiled
            # (mypyc) class can't subclass asyncio.Protocol and keep its fast attributes.
            return cast(asyncio.Protocol, Connection(shared, loop))

        self._server = await (
            loop.create_server(
                protocol,
                self._host,
                self._port,
                reuse_address=True,
                backlog=backlog,
                start_serving=False,  # not before the guard, which needs the bound port
            )
            if sock is None
            else loop.create_server(protocol, sock=sock, backlog=backlog, start_serving=False)
        )
        shared._guard = BrowserGuard(self._host, self.port, self._allowed_hosts)
        await self._server.start_serving()

    @property
    def port(self) -> int:
        """The bound port (of the first socket, if the host resolved to several)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server not started")
        return int(self._server.sockets[0].getsockname()[1])

    def listening_socket(self) -> socket.socket | None:
        """A duplicate of the bound listening socket, for a successor's :meth:`start`: it
        stays open after this server stops. None unless exactly one socket is bound."""
        if self._server is None or len(self._server.sockets) != 1:
            return None
        return socket.socket(fileno=os.dup(self._server.sockets[0].fileno()))

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, close idle connections now, give in-flight requests up to
        ``grace`` seconds to finish, then close what is left."""
        server = self._server
        shared = self._shared
        if server is None or shared._closing:
            return
        shared._closing = True
        server.close()
        for conn in list(self._connections):
            conn.shutdown()
        if self._connections:
            all_closed = shared._all_closed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_closed.wait(), grace)
        tasks = [task for conn in list(self._connections) if (task := conn.abort()) is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_STOP_CANCEL_WAIT)
            if pending:
                self._logger.warning("%d request handlers ignored cancellation", len(pending))
        await server.wait_closed()

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def limits(self) -> HttpLimits:
        """The limits this server applies."""
        return self._limits
