"""observer_core.http over real loopback sockets.

Protocol-level behaviour is checked with raw asyncio streams (exact bytes on the wire);
ordinary requests go through httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import anyio
import httpx
import pytest

from observer_core.http import (
    LATER,
    STREAM,
    HttpLimits,
    HttpServer,
    Later,
    Request,
    RequestBodyError,
    Response,
    Stream,
)
from observer_core.http._connection import BODY, CLOSED, FIRST_REQUEST_GRACE, HEAD, IDLE
from observer_core.http._framing import LENGTH_CACHE_MAX, LENGTH_KEY_MAX

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class App:
    """The test handler: a few routes, and a record of what it saw."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.release = asyncio.Event()  # /wait blocks until set
        self.next_chunk = asyncio.Event()  # /stream sends its second event once set
        self.stream_closed = asyncio.Event()
        self.cancelled = False

    def precheck(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> Response | None:
        if path == "/missing":
            return Response(404, b'{"error": "not found"}')
        if path == "/private" and (b"authorization", b"Bearer t") not in headers:
            return Response(401, b'{"error": "unauthorized"}')
        return None

    async def handle(self, request: Request) -> Response:
        self.requests.append(request)
        path = request.path
        if path == "/boom":
            raise RuntimeError("boom")
        if path == "/wait":
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        if path == "/yield":  # finishes later than a request pipelined behind it would
            for _ in range(50):
                await asyncio.sleep(0)
        if path == "/stream":
            return Response(200, content_type="text/event-stream", stream=self._events())
        if path == "/sized":
            return Response(
                200, headers=[("content-length", "10")], stream=_chunks(b"01234", b"56789")
            )
        if path == "/endless":
            return Response(200, stream=self._endless(), content_type=None)
        if path == "/bad-header":
            return Response(200, headers=[("X-Injected", "a\r\nSet-Cookie: b")])
        if path == "/plain":
            return Response(201, b"hi", headers=[("X-Extra", "1")], content_type=None)
        echo = {
            "method": request.method,
            "path": path,
            "query": request.query,
            "body": request.body.decode("latin-1"),
            "ua": (request.header(b"user-agent") or b"").decode(),
        }
        return Response(200, json.dumps(echo).encode())

    async def _endless(self) -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"x" * 65536
        finally:
            self.stream_closed.set()

    async def _events(self) -> AsyncIterator[bytes]:
        try:
            yield b"data: 1\n\n"
            await self.next_chunk.wait()
            yield b"data: 2\n\n"
        finally:
            self.stream_closed.set()


async def _chunks(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@contextlib.asynccontextmanager
async def serving(
    app: App | None = None, host: str = "127.0.0.1", **options: object
) -> AsyncIterator[HttpServer]:
    server = HttpServer(app or App(), host=host, port=0, **options)  # type: ignore[arg-type]
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=1.0)


@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes


class Conn:
    """A raw client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server: HttpServer) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", server.port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, *, head: bool = False) -> Raw:
        with anyio.fail_after(5):
            raw = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = raw.decode("latin-1").split("\r\n")[:-2]
            headers = {}
            for line in lines:
                name, value = line.split(":", 1)
                assert name.lower() not in headers, f"duplicate header {name}"
                headers[name.lower()] = value.strip()
            status = int(status_line.split()[1])
            if head or status < 200:
                body = b""
            elif "content-length" in headers:
                body = await self.reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding") == "chunked":
                body = b"".join([chunk async for chunk in self.chunks()])
            else:
                body = await self.reader.read()
            return Raw(status, headers, body)

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            with anyio.fail_after(5):
                size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
                data = await self.reader.readexactly(size + 2)
            if size == 0:
                return
            yield data[:-2]

    async def closed_by_server(self) -> bool:
        with anyio.fail_after(5):
            return await self.reader.read() == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def connection(server: HttpServer) -> AsyncIterator[Conn]:
    conn = await Conn.open(server)
    try:
        yield conn
    finally:
        await conn.close()


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def get(path: str, *headers: str, version: str = "1.1", host: str = "127.0.0.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", f"Host: {host}", *headers, "", ""]
    return "\r\n".join(lines).encode()


def post(path: str, body: bytes, *headers: str, host: str = "127.0.0.1") -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}", *headers]
    return "\r\n".join([*lines, "", ""]).encode() + body


# -- ordinary requests ------------------------------------------------------------------


async def test_request_fields_and_response_headers() -> None:
    app = App()
    async with serving(app) as server, httpx.AsyncClient() as client:
        base = f"http://127.0.0.1:{server.port}"
        r = await client.post(
            f"{base}/echo%20x?a=1&b=%2F", content=b'{"k": 1}', headers={"User-Agent": "t/1"}
        )
        assert r.status_code == 200
        assert r.json() == {
            "method": "POST",
            "path": "/echo%20x",
            "query": "a=1&b=%2F",
            "body": '{"k": 1}',
            "ua": "t/1",
        }
        assert r.headers["content-type"] == "application/json"
        assert r.headers["content-length"] == str(len(r.content))
        assert r.headers["server"] == "observer-core"
        assert (b"user-agent", b"t/1") in app.requests[0].headers  # names lower-cased

        r = await client.get(f"{base}/plain")
        assert (r.status_code, r.content, r.headers["x-extra"]) == (201, b"hi", "1")
        assert "content-type" not in r.headers
        assert app.requests[-1].query == ""


async def test_head_response_has_no_body() -> None:
    async with serving() as server, connection(server) as conn:
        await conn.send(b"HEAD /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + get("/echo?after"))
        head = await conn.response(head=True)
        assert head.status == 200 and int(head.headers["content-length"]) > 0
        after = await conn.response()  # the body was not sent: the next response parses
        assert json.loads(after.body)["query"] == "after"


# -- connection management --------------------------------------------------------------


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    async with serving() as server, connection(server) as conn:
        for i in range(3):
            await conn.send(get(f"/echo?{i}"))
            r = await conn.response()
            assert r.status == 200 and json.loads(r.body)["query"] == str(i)
            assert "connection" not in r.headers


async def test_connection_close_is_honoured() -> None:
    async with serving() as server, connection(server) as conn:
        await conn.send(get("/echo", "Connection: close"))
        r = await conn.response()
        assert r.status == 200 and r.headers["connection"] == "close"
        assert await conn.closed_by_server()


async def test_http10_closes_unless_keep_alive_is_asked() -> None:
    async with serving() as server:
        async with connection(server) as conn:
            await conn.send(get("/echo", version="1.0"))
            r = await conn.response()
            assert r.status == 200 and r.headers["connection"] == "close"
            assert await conn.closed_by_server()
        async with connection(server) as conn:
            for _ in range(2):
                await conn.send(get("/echo", "Connection: keep-alive", version="1.0"))
                r = await conn.response()
                assert r.status == 200 and r.headers["connection"] == "keep-alive"


async def test_half_closed_client_still_gets_its_answer() -> None:
    async with serving() as server, connection(server) as conn:
        await conn.send(get("/yield"))
        conn.writer.write_eof()
        assert (await conn.response()).status == 200
        assert await conn.closed_by_server()


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with serving() as server, connection(server) as conn:
        await conn.send(get("/yield?1") + post("/echo?2", b"body") + get("/echo?3"))
        queries = [json.loads((await conn.response()).body)["query"] for _ in range(3)]
        assert queries == ["1", "2", "3"]


async def test_pipelining_backlog_pauses_reading() -> None:
    app = App()
    async with serving(app) as server, connection(server) as conn:
        await conn.send(b"".join(get(f"/wait?{i}") for i in range(100)))
        await eventually(lambda: len(server._connections) == 1)
        (server_conn,) = server._connections
        await eventually(lambda: not server_conn._transport.is_reading())
        app.release.set()
        queries = [json.loads((await conn.response()).body)["query"] for _ in range(100)]
        assert queries == [str(i) for i in range(100)]
        assert server_conn._transport.is_reading()


async def test_upgrade_offer_is_ignored() -> None:
    async with serving() as server, connection(server) as conn:
        await conn.send(get("/echo?1", "Connection: Upgrade", "Upgrade: h2c") + get("/echo?2"))
        assert json.loads((await conn.response()).body)["query"] == "1"
        assert json.loads((await conn.response()).body)["query"] == "2"


# -- request bodies ---------------------------------------------------------------------


async def test_chunked_request_body() -> None:
    async with serving() as server, connection(server) as conn:
        head = b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        await conn.send(head + b"5\r\nhello\r\n")
        await conn.send(b"6\r\n world\r\n0\r\n\r\n")
        r = await conn.response()
        assert r.status == 200 and json.loads(r.body)["body"] == "hello world"
        await conn.send(get("/echo"))  # still usable
        assert (await conn.response()).status == 200


async def test_chunked_request_body_with_httpx() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"a" * 1000
        yield b"b" * 1000

    async with serving() as server, httpx.AsyncClient() as client:
        r = await client.post(f"http://127.0.0.1:{server.port}/echo", content=body())
        assert json.loads(r.content)["body"] == "a" * 1000 + "b" * 1000


async def test_expect_100_continue() -> None:
    async with serving() as server, connection(server) as conn:
        await conn.send(post("/echo", b"", "Expect: 100-continue").replace(b": 0", b": 4"))
        interim = await conn.response()
        assert interim.status == 100
        await conn.send(b"data")
        r = await conn.response()
        assert r.status == 200 and json.loads(r.body)["body"] == "data"


async def test_a_request_after_a_chunked_expecting_one_starts_afresh() -> None:
    """A keep-alive connection recycles its finished request's state: nothing of a chunked,
    100-continue request with trailers (framing, Expect, headers, body) leaks into the next."""
    app = App()
    async with serving(app) as server, connection(server) as conn:
        head = "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        head += "Expect: 100-continue\r\nUser-Agent: first\r\n\r\n"
        await conn.send(head.encode())
        assert (await conn.response()).status == 100
        await conn.send(b"4\r\ndata\r\n0\r\nX-Trailer: t\r\n\r\n")
        first = await conn.response()
        assert first.status == 200 and json.loads(first.body)["body"] == "data"
        for _ in range(2):  # the next requests come in reads of their own, on the same connection
            await conn.send(post("/echo", b"ab"))
            r = await conn.response()  # a 100 Continue or a chunked framing left over fails here
            assert r.status == 200
            assert json.loads(r.body) == {
                "method": "POST",
                "path": "/echo",
                "query": "",
                "body": "ab",
                "ua": "",
            }
            assert app.requests[-1].header(b"transfer-encoding") is None
        await conn.send(get("/echo?q"))
        r = await conn.response()
        assert (
            r.status == 200
            and json.loads(r.body)["body"] == ""
            and json.loads(r.body)["method"] == "GET"
        )


async def test_a_usual_request_after_unusual_ones_starts_afresh() -> None:
    """After a request answered at its head, an HTTP/1.0 keep-alive one, one whose target
    came in two reads and one the browser guard was asked about, the next (usual) request on
    the same connection is read as new: nothing of theirs is left on the recycled Incoming."""
    app = App()
    async with serving(app) as server, connection(server) as conn:

        async def usual() -> None:
            await conn.send(post("/echo", b"ab"))
            r = await conn.response()
            assert r.status == 200 and "connection" not in r.headers  # no HTTP/1.0 left over
            assert json.loads(r.body)["body"] == "ab"  # nor an early answer, nor a target

        await conn.send(get("/missing"))
        assert (await conn.response()).status == 404
        await usual()
        await conn.send(get("/echo", "Connection: keep-alive", version="1.0"))
        assert (await conn.response()).headers["connection"] == "keep-alive"
        await usual()
        await eventually(lambda: len(server._connections) == 1)
        (server_conn,) = server._connections
        await conn.send(b"GET /ec")
        await eventually(lambda: server_conn._state == HEAD)
        await conn.send(b"ho?split HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert json.loads((await conn.response()).body)["query"] == "split"
        await usual()
        await conn.send(get("/echo", f"Origin: http://127.0.0.1:{server.port}"))
        assert (await conn.response()).status == 200  # the guard was asked, and passed it
        await usual()
        assert [r.path for r in app.requests] == ["/echo"] * 7


async def test_expect_100_continue_rejected_by_precheck() -> None:
    async with serving() as server, connection(server) as conn:
        await conn.send(post("/private", b"", "Expect: 100-continue").replace(b": 0", b": 4"))
        r = await conn.response()  # the final answer, with no 100 before it
        assert r.status == 401 and r.headers["connection"] == "close"
        assert await conn.closed_by_server()


async def test_expect_100_continue_over_the_limit() -> None:
    rejects: list[int] = []
    async with (
        serving(max_body_bytes=100, on_reject=rejects.append) as server,
        connection(server) as conn,
    ):
        headers = "Expect: 100-continue"
        await conn.send(post("/echo", b"", headers).replace(b": 0", b": 101"))
        r = await conn.response()
        assert r.status == 413
        assert json.loads(r.body) == {
            "error": "request body too large: over max_body_bytes (100 bytes)"
        }
        assert await conn.closed_by_server()
    assert rejects == [413]


async def test_content_length_over_the_limit_is_refused_unread() -> None:
    rejects: list[int] = []
    app = App()
    async with serving(app, max_body_bytes=1000, on_reject=rejects.append) as server:
        async with connection(server) as conn:
            # Announce 10 MB, send only the headers: the answer must not wait for the body.
            await conn.send(post("/echo", b"").replace(b": 0", b": 10000000"))
            r = await conn.response()
            assert r.status == 413 and r.headers["connection"] == "close"
            assert await conn.closed_by_server()
        async with connection(server) as conn:  # a body the client sends anyway
            await conn.send(post("/echo", b"x" * 200_000))
            assert (await conn.response()).status == 413
            assert await conn.closed_by_server()
    assert rejects == [413, 413] and app.requests == []


async def test_chunked_body_over_the_limit() -> None:
    rejects: list[int] = []
    async with (
        serving(max_body_bytes=1000, on_reject=rejects.append) as server,
        connection(server) as conn,
    ):
        head = b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        await conn.send(head + b"200\r\n" + b"x" * 512 + b"\r\n")
        await conn.send(b"200\r\n" + b"x" * 512 + b"\r\n")
        r = await conn.response()
        assert r.status == 413 and r.headers["connection"] == "close"
        assert await conn.closed_by_server()
    assert rejects == [413]


# -- early and error responses ----------------------------------------------------------


async def test_precheck_rejection_without_body_keeps_the_connection() -> None:
    app = App()
    async with serving(app) as server, connection(server) as conn:
        await conn.send(get("/missing") + get("/echo"))
        r = await conn.response()
        assert r.status == 404 and "connection" not in r.headers
        assert (await conn.response()).status == 200
        assert [req.path for req in app.requests] == ["/echo"]


async def test_precheck_rejection_with_body_closes() -> None:
    app = App()
    async with serving(app) as server, connection(server) as conn:
        await conn.send(post("/private", b"x" * 100))
        r = await conn.response()
        assert r.status == 401 and r.headers["connection"] == "close"
        assert json.loads(r.body) == {"error": "unauthorized"}
        assert await conn.closed_by_server()
        assert app.requests == []


async def test_malformed_request_gets_400_and_close() -> None:
    rejects: list[int] = []
    async with serving(on_reject=rejects.append) as server:
        for bad in (
            b"GARBAGE\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        ):
            async with connection(server) as conn:
                await conn.send(bad)
                r = await conn.response()
                assert r.status == 400 and r.headers["connection"] == "close"
                assert json.loads(r.body)["error"].startswith("bad request: ")
                assert await conn.closed_by_server()
    assert rejects == [400, 400, 400]


async def test_handler_exception_is_a_logged_500_and_the_connection_stays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rejects: list[int] = []
    async with serving(on_reject=rejects.append) as server, connection(server) as conn:
        with caplog.at_level(logging.ERROR, logger="observer_core.http"):
            await conn.send(get("/boom"))
            r = await conn.response()
        assert r.status == 500 and json.loads(r.body) == {"error": "internal error"}
        assert "connection" not in r.headers
        await conn.send(get("/echo"))
        assert (await conn.response()).status == 200
    assert rejects == [500]
    (record,) = [rec for rec in caplog.records if rec.exc_info]
    assert "boom" in str(record.exc_info[1])  # type: ignore[index]


async def test_malformed_response_is_a_500(caplog: pytest.LogCaptureFixture) -> None:
    rejects: list[int] = []
    async with serving(on_reject=rejects.append) as server, connection(server) as conn:
        with caplog.at_level(logging.ERROR, logger="observer_core.http"):
            await conn.send(get("/bad-header") + get("/echo"))
            r = await conn.response()
        assert r.status == 500 and "set-cookie" not in r.headers
        assert (await conn.response()).status == 200
    assert rejects == [500]
    assert any("invalid response" in rec.getMessage() for rec in caplog.records)


# -- timeouts and limits ----------------------------------------------------------------


async def test_header_and_body_timeouts_answer_408_and_close() -> None:
    limits = HttpLimits(header_timeout_secs=0.3, body_timeout_secs=0.6)
    async with serving(limits=limits) as server:
        for partial, key, least in (
            (b"", "header_timeout_secs (0.3s)", 0.29),  # connects and says nothing
            (b"GET /echo HTTP/1.1\r\nHost: te", "header_timeout_secs (0.3s)", 0.29),
            (post("/echo", b"12345").replace(b": 5", b": 10"), "body_timeout_secs (0.6s)", 0.59),
        ):
            started = time.monotonic()  # before the server can start its clock
            async with connection(server) as conn:
                await conn.send(partial)
                r = await conn.response()
                assert r.status == 408 and r.headers["connection"] == "close"
                assert key in json.loads(r.body)["error"]
                assert await conn.closed_by_server()
                assert least <= time.monotonic() - started < 4


async def test_timeout_while_an_answer_is_pending_just_closes() -> None:
    app = App()
    limits = HttpLimits(header_timeout_secs=0.3)
    async with serving(app, limits=limits) as server, connection(server) as conn:
        await conn.send(get("/wait") + b"GET /echo HTTP/1.1\r\nHost: te")
        await eventually(lambda: len(app.requests) == 1)
        assert await conn.closed_by_server()  # no 408 ahead of /wait's answer


async def test_a_trickled_method_does_not_stretch_the_first_head() -> None:
    """The first head is timed from the connection's opening, not from its target's start."""
    limits = HttpLimits(header_timeout_secs=1.0)
    async with serving(limits=limits) as server:
        started = time.monotonic()
        async with connection(server) as conn:
            await conn.send(b"GE")
            await asyncio.sleep(0.8)  # the method trickles: the target begins late
            await conn.send(b"T /echo HTTP/1.1\r\nHost: te")
            r = await conn.response()
            assert r.status == 408 and "header_timeout_secs" in json.loads(r.body)["error"]
            assert 0.99 <= time.monotonic() - started < 1.6  # not 0.8 + 1.0


async def test_idle_timeout_closes_keep_alive_connections() -> None:
    async with serving(header_timeout=0.2, idle_timeout=0.6) as server, connection(server) as conn:
        started = time.monotonic()
        await conn.send(get("/echo"))
        assert (await conn.response()).status == 200
        assert await conn.closed_by_server()
        assert 0.59 <= time.monotonic() - started < 4  # the idle timeout, not the header one


async def test_max_connections() -> None:
    rejects: list[int] = []
    async with serving(max_connections=2, on_reject=rejects.append) as server:
        first, second = await Conn.open(server), await Conn.open(server)
        for conn in (first, second):
            await conn.send(get("/echo"))
            assert (await conn.response()).status == 200
        async with connection(server) as third:
            r = await third.response()
            assert r.status == 503 and r.headers["connection"] == "close"
            assert await third.closed_by_server()
        assert rejects == [503]
        await first.close()
        await eventually(lambda: len(server._connections) < 2)
        async with connection(server) as fourth:
            await fourth.send(get("/echo"))
            assert (await fourth.response()).status == 200
        await second.close()


async def test_port_in_use_raises() -> None:
    async with serving() as server:
        other = HttpServer(App(), host="127.0.0.1", port=server.port)
        with pytest.raises(OSError):
            await other.start()


async def test_client_not_reading_is_dropped_after_idle_timeout() -> None:
    app = App()
    async with serving(app, idle_timeout=0.3) as server, connection(server) as conn:
        await conn.send(get("/endless"))  # and never read the response
        with anyio.fail_after(5):
            await app.stream_closed.wait()
        await eventually(lambda: not server._connections)


async def test_client_not_reading_is_dropped_after_send_timeout() -> None:
    app = App()
    limits = HttpLimits(idle_timeout_secs=60, send_timeout_secs=0.3)
    async with serving(app, limits=limits) as server, connection(server) as conn:
        await conn.send(get("/endless"))  # and never read the response
        with anyio.fail_after(5):
            await app.stream_closed.wait()
        await eventually(lambda: not server._connections)


# -- streamed responses -----------------------------------------------------------------


async def test_stream_is_chunked_and_flushed_chunk_by_chunk() -> None:
    app = App()
    async with serving(app) as server, connection(server) as conn:
        await conn.send(get("/stream"))
        r = await conn.response(head=True)
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.headers["content-type"] == "text/event-stream"
        assert "content-length" not in r.headers
        chunks = conn.chunks()
        assert await anext(chunks) == b"data: 1\n\n"  # arrives before the next one exists
        app.next_chunk.set()
        assert [chunk async for chunk in chunks] == [b"data: 2\n\n"]
        await conn.send(get("/echo"))  # the terminating chunk was sent: still in step
        assert (await conn.response()).status == 200


async def test_stream_with_content_length_is_sent_raw() -> None:
    async with serving() as server, connection(server) as conn:
        await conn.send(get("/sized") + get("/echo"))
        r = await conn.response()
        assert r.body == b"0123456789" and "transfer-encoding" not in r.headers
        assert (await conn.response()).status == 200


async def test_stream_to_http10_client_ends_with_close() -> None:
    app = App()
    app.next_chunk.set()
    async with serving(app) as server, connection(server) as conn:
        await conn.send(get("/stream", "Connection: keep-alive", version="1.0"))
        r = await conn.response()
        assert r.body == b"data: 1\n\ndata: 2\n\n" and r.headers["connection"] == "close"


async def test_client_leaving_mid_stream_closes_the_iterator() -> None:
    app = App()
    async with serving(app) as server:
        conn = await Conn.open(server)
        await conn.send(get("/stream"))
        await conn.response(head=True)
        assert await anext(conn.chunks()) == b"data: 1\n\n"
        await conn.close()
        with anyio.fail_after(5):
            await app.stream_closed.wait()  # the generator was waiting: it was closed
        await eventually(lambda: not server._connections)


# -- stop -------------------------------------------------------------------------------


async def test_stop_is_graceful() -> None:
    app = App()
    server = HttpServer(app, host="127.0.0.1", port=0)
    await server.start()
    port = server.port
    idle, busy = await Conn.open(server), await Conn.open(server)
    try:
        await idle.send(get("/echo"))
        assert (await idle.response()).status == 200
        await busy.send(get("/wait"))
        await eventually(lambda: len(app.requests) == 2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.stop, 5.0)
            assert await idle.closed_by_server()  # idle keep-alive: closed at once
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)  # no longer accepting
            app.release.set()  # the in-flight request finishes
            r = await busy.response()
            assert r.status == 200 and r.headers["connection"] == "close"
            assert await busy.closed_by_server()
        assert not app.cancelled
    finally:
        await idle.close()
        await busy.close()


async def test_stop_closes_what_is_left_after_the_grace_period() -> None:
    app = App()
    server = HttpServer(app, host="127.0.0.1", port=0)
    await server.start()
    async with connection(server) as conn:
        await conn.send(get("/wait"))
        await eventually(lambda: len(app.requests) == 1)
        started = time.monotonic()
        await server.stop(grace=0.2)
        assert 0.19 <= time.monotonic() - started < 3
        assert await conn.closed_by_server()
        assert app.cancelled


async def test_stop_answers_the_first_request_of_a_connection_it_had_just_taken() -> None:
    """A client that connected just before ``stop()`` (a reload hands the listening socket
    on while clients connect) had its request on the way: it is answered, not cut off. One
    that sends nothing is closed after ``FIRST_REQUEST_GRACE``."""
    app = App()
    server = HttpServer(app, host="127.0.0.1", port=0)
    await server.start()
    early, silent = await Conn.open(server), await Conn.open(server)
    try:
        await eventually(lambda: len(server._connections) == 2)
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.stop, 5.0)
            await asyncio.sleep(0.05)  # the request arrives after stop() began
            await early.send(get("/echo?late"))
            r = await early.response()
            assert r.status == 200 and r.headers["connection"] == "close"
            assert await early.closed_by_server()
            assert await silent.closed_by_server()
        assert FIRST_REQUEST_GRACE - 0.1 <= time.monotonic() - started < 3
    finally:
        await early.close()
        await silent.close()


# -- handlers that answer at once, or later with request.reply() -----------------------------


class PromptApp(App):
    """A handler answering without a coroutine: a Response at once (``/now``), LATER then
    ``request.reply()`` when the test calls ``resolve()`` (``/later...``), else as App."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Request] = []

    def handle(self, request: Request) -> Response | Awaitable[Response] | Later:  # type: ignore[override]
        path = request.path
        if path == "/now":
            return Response(200, json.dumps({"answer": request.query}).encode())
        if path == "/now-empty":
            return Response(204)
        if path == "/now-bad":
            return Response(200, cast(bytes, "not bytes"))
        if path == "/sync-boom":
            raise RuntimeError("sync boom")
        if path.startswith("/later"):
            self.waiting.append(request)
            return LATER
        return super().handle(request)

    def resolve(self) -> None:
        """Answer every waiting request according to its path."""
        waiting, self.waiting = self.waiting, []
        for request in waiting:
            if request.path == "/later-stream":
                request.reply(Response(200, stream=_chunks(b"a", b"b"), content_type=None))
            else:
                request.reply(Response(200, json.dumps({"answer": request.query}).encode()))


async def test_prompt_and_later_answers_keep_pipelined_order() -> None:
    app = PromptApp()
    async with serving(app) as server, connection(server) as conn:
        await conn.send(get("/now?1"))
        assert json.loads((await conn.response()).body) == {"answer": "1"}
        await conn.send(get("/later?2") + get("/now?3") + get("/echo?4") + get("/later?5"))
        await eventually(lambda: len(app.waiting) == 1)
        with pytest.raises(TimeoutError):  # nothing is answered before /later?2
            with anyio.fail_after(0.2):
                await conn.reader.readuntil(b"\r\n\r\n")
        app.resolve()  # answers ?2; then ?3 and ?4 go out, and ?5 waits (in the task)
        await eventually(lambda: len(app.waiting) == 1)
        app.resolve()
        bodies = [json.loads((await conn.response()).body) for _ in range(4)]
        assert [body.get("answer", body.get("query")) for body in bodies] == ["2", "3", "4", "5"]


async def test_answers_at_once_are_framed_as_any() -> None:
    """An answer sent at once (the usual one without a call, see Connection._deliver) is
    framed as any other: a HEAD's without its body, a 204 without Content-Length, a
    malformed one replaced by a 500; the connection goes on after each."""
    rejects: list[int] = []
    async with serving(PromptApp(), on_reject=rejects.append) as server, connection(server) as conn:
        await conn.send(get("/now?1"))
        first = await conn.response()
        assert first.status == 200 and json.loads(first.body) == {"answer": "1"}
        await conn.send(b"HEAD /now?2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + get("/now?3"))
        head = await conn.response(head=True)
        assert head.status == 200
        assert head.headers["content-length"] == first.headers["content-length"]
        assert json.loads((await conn.response()).body) == {"answer": "3"}  # no body came
        await conn.send(get("/now-empty") * 2 + get("/now?4"))  # the second: prefix cached
        for _ in range(2):
            empty = await conn.response(head=True)
            assert empty.status == 204 and "content-length" not in empty.headers
        assert json.loads((await conn.response()).body) == {"answer": "4"}
        await conn.send(get("/now-bad"))
        assert (await conn.response()).status == 500
        await conn.send(get("/now?5"))
        assert json.loads((await conn.response()).body) == {"answer": "5"}
    assert rejects == [500]


async def test_reply_twice_or_unasked_is_an_error() -> None:
    app = PromptApp()
    async with serving(app) as server, connection(server) as conn:
        await conn.send(get("/later?x"))
        await eventually(lambda: len(app.waiting) == 1)
        (request,) = app.waiting
        app.resolve()
        assert (await conn.response()).status == 200
        with pytest.raises(RuntimeError):
            request.reply(Response(200))
    with pytest.raises(RuntimeError):
        Request("GET", "/", "", [], b"").reply(Response(200))


async def test_handler_raising_at_once_is_a_500_and_the_connection_stays() -> None:
    rejects: list[int] = []
    async with serving(PromptApp(), on_reject=rejects.append) as server, connection(server) as conn:
        await conn.send(get("/sync-boom"))
        assert (await conn.response()).status == 500
        await conn.send(get("/now?ok"))
        assert (await conn.response()).status == 200
    assert rejects == [500]


async def test_later_answer_may_stream() -> None:
    app = PromptApp()
    async with serving(app) as server, connection(server) as conn:
        await conn.send(get("/later-stream") + get("/now?after"))
        await eventually(lambda: len(app.waiting) == 1)
        app.resolve()
        r = await conn.response()
        assert r.headers["transfer-encoding"] == "chunked" and r.body == b"ab"
        assert json.loads((await conn.response()).body) == {"answer": "after"}


async def test_client_leaving_before_the_reply() -> None:
    app = PromptApp()
    async with serving(app) as server:
        conn = await Conn.open(server)
        await conn.send(get("/later?gone"))
        await eventually(lambda: len(app.waiting) == 1)
        await conn.close()  # the server sees a half-close: it still owes an answer
        app.resolve()  # the answer finds the client gone; the connection is dropped
        await eventually(lambda: not server._connections)
        async with connection(server) as again:
            await again.send(get("/now?next"))
            assert (await again.response()).status == 200


async def test_stop_waits_for_a_pending_reply() -> None:
    app = PromptApp()
    server = HttpServer(app, host="127.0.0.1", port=0)
    await server.start()
    conn = await Conn.open(server)
    try:
        await conn.send(get("/later?inflight"))
        await eventually(lambda: len(app.waiting) == 1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.stop, 5.0)
            await asyncio.sleep(0.05)
            app.resolve()
            r = await conn.response()
            assert r.status == 200 and r.headers["connection"] == "close"
            assert await conn.closed_by_server()
    finally:
        await conn.close()


async def test_connect_is_400_and_closed() -> None:
    app = PromptApp()
    async with serving(app) as server, connection(server) as conn:
        await conn.send(b"CONNECT /now HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\ntunnel bytes")
        r = await conn.response()
        assert r.status == 400 and "CONNECT" in json.loads(r.body)["error"]
        assert await conn.closed_by_server()  # no tunnel: the connection ends with the answer
    assert app.requests == []


# -- contract §11.2: limits on what a client sends ----------------------------------------


def _line(target: str, method: str = "GET") -> bytes:
    return f"{method} {target} HTTP/1.1\r\n".encode()


async def test_request_line_up_to_max_url_bytes_then_414() -> None:
    rejects: list[int] = []
    limits = HttpLimits(max_url_bytes=100)
    async with serving(limits=limits, on_reject=rejects.append) as server:
        target = "/echo?" + "x" * (100 - 13 - 6)  # GET SP target SP HTTP/1.1: 100 bytes
        async with connection(server) as conn:
            await conn.send(_line(target) + b"\r\n")
            assert (await conn.response()).status == 200
        async with connection(server) as conn:
            await conn.send(_line(target + "x") + b"\r\n")
            r = await conn.response()
            assert r.status == 414 and r.headers["connection"] == "close"
            assert json.loads(r.body) == {
                "error": "request line longer than max_url_bytes (100 bytes)"
            }
            assert await conn.closed_by_server()
    assert rejects == [414]


async def _send_until_answered(conn: Conn, first: bytes, piece: bytes) -> tuple[int, Raw]:
    """Send ``first``, then ``piece`` after ``piece`` (at most 300 of them) until an answer
    comes; how many bytes went, and the answer."""
    answer = asyncio.create_task(conn.response())
    await conn.send(first)
    sent = len(first)
    for _ in range(300):
        if answer.done():
            break
        try:
            await conn.send(piece)
        except OSError:
            break
        sent += len(piece)
        await asyncio.sleep(0.002)  # a read on the server's side per piece
    return sent, await answer


async def test_url_arriving_in_pieces_is_cut_off_as_it_arrives() -> None:
    limits = HttpLimits(max_url_bytes=1000)
    async with serving(limits=limits) as server, connection(server) as conn:
        sent, r = await _send_until_answered(conn, b"GET /", b"u" * 100)
        assert r.status == 414 and sent < 2000


async def test_head_up_to_max_header_bytes_then_431() -> None:
    limits = HttpLimits(max_header_bytes=300)
    async with serving(limits=limits) as server:
        line = _line("/echo")  # then one "X:<value>\r\n" field and the blank line
        value = "v" * (300 - len(line) - 4 - 2)
        async with connection(server) as conn:
            await conn.send(line + f"X:{value}\r\n\r\n".encode())
            assert (await conn.response()).status == 200
        async with connection(server) as conn:
            await conn.send(line + f"X:{value}v\r\n\r\n".encode())
            r = await conn.response()
            assert r.status == 431 and r.headers["connection"] == "close"
            assert "max_header_bytes (300 bytes)" in json.loads(r.body)["error"]


async def test_head_trickled_in_small_reads_is_cut_off_at_the_limit() -> None:
    app = App()
    limits = HttpLimits(max_header_bytes=4096)
    async with serving(app, limits=limits) as server, connection(server) as conn:
        # one header value that never ends
        sent, r = await _send_until_answered(conn, get("/echo")[:-2] + b"X: ", b"a" * 512)
        assert r.status == 431 and sent < 8192
    assert app.requests == []


async def test_more_than_max_headers_is_431() -> None:
    async with serving(limits=HttpLimits(max_headers=5)) as server:
        for count, status in ((5, 200), (6, 431)):
            async with connection(server) as conn:
                await conn.send(get("/echo", *[f"X-{i}: 1" for i in range(count - 1)]))
                r = await conn.response()
                assert r.status == status
        assert "max_headers (5)" in json.loads(r.body)["error"]


async def test_head_limits_come_before_precheck() -> None:
    limits = HttpLimits(max_header_bytes=1000)
    async with serving(limits=limits) as server, connection(server) as conn:
        await conn.send(get("/private", "X-Big: " + "a" * 2000))  # would be 401: 431 first
        assert (await conn.response()).status == 431


async def test_trailers_are_counted_and_never_merged_into_headers() -> None:
    app = App()
    async with serving(app, limits=HttpLimits(max_header_bytes=400, max_headers=6)) as server:
        head = b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        async with connection(server) as conn:
            await conn.send(head + b"2\r\nhi\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
            r = await conn.response()
            assert r.status == 200 and json.loads(r.body)["body"] == "hi"
            await conn.send(get("/echo"))  # the connection stays in step
            assert (await conn.response()).status == 200
        assert [name for name, _ in app.requests[0].headers] == [b"host", b"transfer-encoding"]
        for trailers in (b"X-T: " + b"a" * 400 + b"\r\n", b"X-T: 1\r\n" * 5):
            async with connection(server) as conn:
                await conn.send(head + b"2\r\nhi\r\n0\r\n" + trailers + b"\r\n")
                r = await conn.response()
                assert r.status == 431 and await conn.closed_by_server()
    assert len(app.requests) == 2


async def test_target_cache_is_bounded_in_bytes() -> None:
    async with serving() as server, connection(server) as conn:
        for i in range(300):
            await conn.send(get(f"/missing?{i}" + "q" * 4000))
            assert (await conn.response()).status == 404
        assert len(server._shared._targets) <= 256
        assert sum(map(len, server._shared._targets)) <= 256 * 512


async def test_header_names_in_any_spelling_and_content_lengths_are_read_alike() -> None:
    """Common names are looked up (HEADER_NAMES), others lowered; Content-Length values are
    remembered: every spelling reads the same, and what is remembered is bounded."""
    app = App()
    async with serving(app) as server, connection(server) as conn:
        spellings = ["Content-Length", "content-length", "CONTENT-LENGTH", "cOnTeNt-LeNgTh"]
        for number, name in enumerate(spellings):
            body = b"x" * (number + 1)
            head = f"POST /echo HTTP/1.1\r\nHOST: 127.0.0.1\r\nX-Odd-Name: 1\r\n{name}: "
            for digits in (str(len(body)), f"000{len(body)}"):  # a cached value, then not
                await conn.send(f"{head}{digits}\r\n\r\n".encode() + body)
                r = await conn.response()
                assert r.status == 200 and json.loads(r.body)["body"] == body.decode()
        for request in app.requests:
            assert [name for name, _ in request.headers] == [
                b"host",
                b"x-odd-name",
                b"content-length",
            ]
        for size in range(1, 1100):  # more sizes than either cache keeps
            await conn.send(post("/echo", b"y" * size))
            r = await conn.response()
            assert r.status == 200 and json.loads(r.body)["body"] == "y" * size
        shared = server._shared
        assert (
            len(shared._lengths) <= LENGTH_CACHE_MAX
            and len(shared._length_lines) <= LENGTH_CACHE_MAX
        )
        assert max(map(len, shared._lengths)) <= LENGTH_KEY_MAX


@pytest.mark.parametrize(
    "target", ["/echo#frag", "http://127.0.0.1/echo", "*", "//x#"], ids=["hash", "abs", "*", "//#"]
)
async def test_malformed_target_is_400(target: str) -> None:
    app = App()
    async with serving(app) as server, connection(server) as conn:
        await conn.send(get(target))
        r = await conn.response()
        assert r.status == 400 and json.loads(r.body)["error"].startswith("bad request: ")
        assert await conn.closed_by_server()
    assert app.requests == []


async def test_pipelined_upgrade_offers_are_answered_without_recursion(
    caplog: pytest.LogCaptureFixture,
) -> None:
    offer = get("/echo", "Connection: upgrade", "Upgrade: websocket")
    async with serving() as server, connection(server) as conn:
        with caplog.at_level(logging.ERROR):
            await conn.send(offer * 3000)
            for _ in range(3000):
                assert (await conn.response()).status == 200
    assert not caplog.records


async def test_max_inflight_bytes_pauses_reading_until_answers_go_out() -> None:
    app = App()
    limits = HttpLimits(max_inflight_bytes=1000)
    async with serving(app, limits=limits) as server:
        first, second, third = [await Conn.open(server) for _ in range(3)]
        try:
            await first.send(post("/wait?1", b"a" * 600))  # held: the handler waits
            await second.send(post("/wait?2", b"b" * 600))  # past the budget, may finish
            await eventually(lambda: len(app.requests) == 2)
            assert server._shared._inflight == 1200
            await third.send(post("/echo", b"c" * 100)[:-50])  # reading pauses after this
            await asyncio.sleep(0.05)
            await third.send(b"c" * 50)
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.3):
                    await third.reader.readuntil(b"\r\n\r\n")
            app.release.set()  # answers go out, the bytes are freed, the third reads on
            assert (await first.response()).status == 200
            assert (await second.response()).status == 200
            r = await third.response()
            assert r.status == 200 and json.loads(r.body)["body"] == "c" * 100
            await eventually(lambda: server._shared._inflight == 0)
        finally:
            for conn in (first, second, third):
                await conn.close()


def test_limits_are_checked_against_their_bounds() -> None:
    with pytest.raises(ValueError, match="max_header_bytes"):
        HttpLimits.of(None, max_header_bytes=10)
    assert HttpLimits.of(None) == HttpLimits()


class StreamingApp(App):
    """Takes ``/in`` bodies as they arrive (``STREAM``); reads them once ``go`` is set
    (``/in?noread``: answers without reading)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.errors: list[str] = []

    def precheck(  # type: ignore[override]
        self, method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> Response | Stream | None:
        return STREAM if path == "/in" else super().precheck(method, path, headers)

    async def handle(self, request: Request) -> Response:
        if request.path != "/in":
            return await super().handle(request)
        self.requests.append(request)
        assert request.body_stream is not None and request.body == b""
        if request.query == "noread":
            return Response(200, b"{}")
        await self.go.wait()
        size = 0
        try:
            async for chunk in request.body_stream:
                size += len(chunk)
        except RequestBodyError as exc:
            self.errors.append(str(exc))
            raise
        return Response(200, json.dumps({"size": size}).encode())


async def test_streamed_body_is_handed_over_with_backpressure() -> None:
    app = StreamingApp()
    async with serving(app, max_body_bytes=8 << 20) as server, connection(server) as conn:
        body = b"x" * (4 << 20)
        send = asyncio.create_task(conn.send(post("/in", body) + get("/echo?after")))
        await eventually(lambda: len(app.requests) == 1)  # called before the body is in
        (server_conn,) = server._connections
        await eventually(lambda: not server_conn._transport.is_reading())
        assert server._shared._inflight <= (256 << 10) + (256 << 10)  # the buffer and one read
        app.go.set()
        r = await conn.response()
        assert r.status == 200 and json.loads(r.body) == {"size": len(body)}
        assert json.loads((await conn.response()).body)["query"] == "after"
        await send
        await eventually(lambda: server._shared._inflight == 0)


async def test_streamed_body_breaking_off_is_the_handlers_error_not_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = StreamingApp()
    app.go.set()
    rejects: list[int] = []
    async with serving(app, max_body_bytes=100, on_reject=rejects.append) as server:
        head = b"POST /in HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        with caplog.at_level(logging.ERROR):
            async with connection(server) as conn:
                await conn.send(head + b"64\r\n" + b"x" * 100 + b"\r\n" + b"1\r\nx\r\n")
                r = await conn.response()
                assert r.status == 413 and r.headers["connection"] == "close"
                assert await conn.closed_by_server()
        assert app.errors and "max_body_bytes" in app.errors[0]
        await eventually(lambda: server._shared._inflight == 0)
    assert rejects == [413] and not caplog.records


async def test_answer_before_the_streamed_body_ended_closes_the_connection() -> None:
    app = StreamingApp()
    async with serving(app, max_body_bytes=8 << 20) as server, connection(server) as conn:
        await conn.send(post("/in?noread", b"").replace(b": 0", b": 1000") + b"partial")
        r = await conn.response()
        assert r.status == 200 and r.headers["connection"] == "close"
        assert await conn.closed_by_server()
        await eventually(lambda: server._shared._inflight == 0)


async def test_upgrade_offer_with_a_body_is_answered_as_if_absent() -> None:
    app = App()
    offer = ("Connection: Upgrade", "Upgrade: websocket")
    chunked = b"POST /echo?2 HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
    chunked += b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    async with serving(app) as server, connection(server) as conn:
        await conn.send(post("/echo?1", b"body", *offer) + chunked + get("/echo?3"))
        bodies = [json.loads((await conn.response()).body) for _ in range(3)]
        assert [(b["query"], b["body"]) for b in bodies] == [("1", "body"), ("2", "abc"), ("3", "")]
        await conn.send(post("/echo?4", b"again", *offer))  # the new parser goes on
        assert json.loads((await conn.response()).body)["body"] == "again"


@pytest.mark.parametrize(
    "coding",
    [
        "gzip, chunked",
        "chunked, chunked",
        "identity",
        "chunked, identity",
        "chunked\r\nTransfer-Encoding: chunked",
    ],
)
async def test_transfer_encoding_other_than_chunked_is_400(coding: str) -> None:
    app = App()
    async with serving(app) as server, connection(server) as conn:
        await conn.send(
            post("/echo", b"").replace(
                b"Content-Length: 0", f"Transfer-Encoding: {coding}".encode()
            )
            + b"0\r\n\r\n"
        )
        r = await conn.response()
        assert r.status == 400 and await conn.closed_by_server()
    assert app.requests == []


async def test_transfer_encoding_chunked_in_any_case_is_taken() -> None:
    async with serving() as server, connection(server) as conn:
        await conn.send(
            post("/echo", b"").replace(b"Content-Length: 0", b"Transfer-Encoding: ChUnKeD")
            + b"2\r\nhi\r\n0\r\n\r\n"
        )
        assert json.loads((await conn.response()).body)["body"] == "hi"


async def test_error_logs_are_rate_limited_per_kind(caplog: pytest.LogCaptureFixture) -> None:
    async with serving() as server, connection(server) as conn:
        with caplog.at_level(logging.ERROR, logger="observer_core.http"):
            for _ in range(50):
                await conn.send(get("/boom"))
                assert (await conn.response()).status == 500
            assert len(caplog.records) == 1  # the other 49 within the second: counted
            with anyio.fail_after(5):  # a second later, the next one says how many were left out
                while len(caplog.records) == 1:
                    await conn.send(get("/boom"))
                    assert (await conn.response()).status == 500
                    await asyncio.sleep(0.05)
            assert "more like it since the last one, not logged" in caplog.records[1].getMessage()
            await conn.send(get("/bad-header"))  # another kind: logged at once
            assert (await conn.response()).status == 500
            assert "invalid response" in caplog.records[2].getMessage()


# -- contract §11.4: what browsers must not send, on every listener ----------------------------

EVIL = "Origin: http://evil.example"


async def test_cross_site_writes_are_403_before_the_handlers_precheck() -> None:
    app = App()
    rejects: list[int] = []
    async with serving(app, on_reject=rejects.append) as server, connection(server) as conn:
        await conn.send(get("/missing", EVIL))  # a safe method: the handler's 404
        assert (await conn.response()).status == 404
        await conn.send(post("/missing", b"", EVIL))  # would be 404: 403 first
        r = await conn.response()
        assert r.status == 403 and "connection" not in r.headers  # no body: the connection stays
        assert json.loads(r.body) == {
            "error": "cross-origin POST refused: Origin 'http://evil.example' is not this "
            "listener's"
        }
        await conn.send(post("/private", b"", "Sec-Fetch-Site: cross-site"))  # would be 401
        r = await conn.response()
        assert r.status == 403 and "Sec-Fetch-Site" in json.loads(r.body)["error"]
        await conn.send(post("/echo", b"{}"))  # a script: no Origin
        assert (await conn.response()).status == 200
    assert rejects == [403, 403]
    assert [request.path for request in app.requests] == ["/echo"]


async def test_a_refused_write_is_answered_without_reading_its_body() -> None:
    app = App()
    async with serving(app) as server, connection(server) as conn:
        smuggled = get("/echo").ljust(60)
        await conn.send(post("/echo", smuggled, EVIL))
        r = await conn.response()
        assert r.status == 403 and r.headers["connection"] == "close"
        assert await conn.closed_by_server()
    assert app.requests == []


async def test_a_foreign_host_on_a_loopback_listener_is_400_before_the_handler() -> None:
    app = App()
    async with serving(app) as server, connection(server) as conn:
        await conn.send(get("/private", host=f"evil.example:{server.port}"))  # would be 401
        r = await conn.response()
        assert r.status == 400
        assert json.loads(r.body)["error"].startswith(
            f"Host 'evil.example:{server.port}' is not a loopback name or address, nor in "
            "allowed_hosts"
        )
        for host in (f"localhost:{server.port}", "127.0.0.2", "[::1]"):
            await conn.send(get("/echo", host=host))
            assert (await conn.response()).status == 200, host
    assert len(app.requests) == 3


async def test_allowed_hosts_admits_a_listed_name_and_its_origin() -> None:
    async with (
        serving(allowed_hosts=["Observer.Example.com."]) as server,
        connection(server) as conn,
    ):
        name = f"observer.example.com:{server.port}"
        await conn.send(post("/echo", b"{}", f"Origin: http://{name}", host=name))
        assert (await conn.response()).status == 200
        await conn.send(get("/echo", host="other.example.com"))
        assert (await conn.response()).status == 400


async def test_the_guard_knows_the_port_bound_for_port_0() -> None:
    async with serving() as server, connection(server) as conn:
        own = f"Origin: http://127.0.0.1:{server.port}"  # not the Host the request names
        await conn.send(post("/echo", b"{}", own, host=f"localhost:{server.port}"))
        assert (await conn.response()).status == 200
        other = f"Origin: http://127.0.0.1:{server.port + 1}"
        await conn.send(post("/echo", b"{}", other, host=f"localhost:{server.port}"))
        assert (await conn.response()).status == 403


async def test_the_guard_comes_after_the_head_limits_and_the_target() -> None:
    limits = HttpLimits(max_url_bytes=100, max_header_bytes=1000)
    async with serving(limits=limits) as server:
        for request, status, error in (
            (get("/echo?" + "x" * 100, host="evil.example"), 414, "max_url_bytes"),
            (get("/echo", "X-Big: " + "a" * 2000, host="evil.example"), 431, "max_header_bytes"),
            (get("/echo#frag", host="evil.example"), 400, "bad request: a '#'"),
        ):
            async with connection(server) as conn:
                await conn.send(request)
                r = await conn.response()
                assert r.status == status and error in json.loads(r.body)["error"]


async def test_a_listener_bound_elsewhere_checks_host_only_with_allowed_hosts() -> None:
    async with serving(host="0.0.0.0") as server, connection(server) as conn:
        await conn.send(get("/echo", host="evil.example"))
        assert (await conn.response()).status == 200
        await conn.send(post("/echo", b"{}", EVIL))  # a cross-site write: still 403
        assert (await conn.response()).status == 403
    named = ["observer.example.com"]
    async with serving(host="0.0.0.0", allowed_hosts=named) as server, connection(server) as conn:
        await conn.send(get("/echo", host="observer.example.com"))
        assert (await conn.response()).status == 200
        await conn.send(get("/echo", host="evil.example"))
        r = await conn.response()
        assert r.status == 400 and "is not in allowed_hosts" in json.loads(r.body)["error"]


def test_a_bad_allowed_hosts_entry_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"allowed_hosts: 'http://x\.example' is not a host name"):
        HttpServer(App(), host="127.0.0.1", port=0, allowed_hosts=["http://x.example"])


async def test_a_connection_is_in_one_state_at_a_time() -> None:
    """IDLE between requests, HEAD and BODY while one arrives, DONE once no further request
    is read, CLOSED: each stage of a request is one value, not flags in combination."""
    async with serving() as server, connection(server) as conn:
        await eventually(lambda: len(server._connections) == 1)
        (server_conn,) = server._connections
        assert server_conn._state == IDLE
        request = post("/echo", b"abc")
        head, body = request[:-3], request[-3:]
        await conn.send(head[:10])
        await eventually(lambda: server_conn._state == HEAD)
        await conn.send(head[10:])
        await eventually(lambda: server_conn._state == BODY)
        await conn.send(body)
        assert (await conn.response()).status == 200
        assert server_conn._state == IDLE
        await conn.send(get("/echo", "Connection: close"))
        assert (await conn.response()).status == 200
        assert await conn.closed_by_server()
        assert server_conn._state >= CLOSED


async def test_a_content_length_body_counts_toward_max_inflight_bytes_from_its_head() -> None:
    """The bytes a Content-Length body will hold are counted once, at its head (not per
    read), and freed when it is answered."""
    async with serving() as server, connection(server) as conn:
        await conn.send(post("/echo", b"x" * 1000)[:-1000])
        await eventually(lambda: server._shared._inflight == 1000)
        await conn.send(b"x" * 1000)
        assert (await conn.response()).status == 200
        await eventually(lambda: server._shared._inflight == 0)
