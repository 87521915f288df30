"""The gateway proxy against hostile or careless clients (SECURITY §11.1, §11.2, §11.5).

One daemon serves the module, with three proxies in front of one upstream:
``guarded`` (``listen_token`` a list of two, ``forwarded_headers = true``),
``plain`` (the defaults) and ``slowread`` (``send_timeout_secs = 0.5``). Each test
uses its own paths, so it finds its own ops.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import select
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from gateway_upstream import WAIT_SECS, Exchange, Proxies, Seen, Upstream, daemon_config

from observer_core.testing import DaemonFactory, free_port, wait_for

TOKENS = ("tok-old", "tok-new")
_LATER = itertools.count()


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    upstream = Upstream()
    ports = {name: free_port() for name in ("guarded", "plain", "slowread")}
    factory = DaemonFactory(tmp_path_factory.mktemp("gateway-guard"))
    daemon = factory.start(
        daemon_config(
            f"""
            [sources.guarded]
            plugin = "gateway"
            url = "{upstream.url}"
            listen = "127.0.0.1:{ports["guarded"]}"
            listen_token = {json.dumps(list(TOKENS))}
            forwarded_headers = true
            health_check = false

            [sources.plain]
            plugin = "gateway"
            url = "{upstream.url}"
            listen = "127.0.0.1:{ports["plain"]}"
            health_check = false

            [sources.slowread]
            plugin = "gateway"
            url = "{upstream.url}"
            listen = "127.0.0.1:{ports["slowread"]}"
            health_check = false
            send_timeout_secs = 0.5
            """
        )
    )
    try:
        yield Proxies(daemon, upstream, ports)
        assert daemon.stop() == 0
        logs = daemon.logs()
        assert "Traceback" not in logs
        assert not [word for word in TOKENS if word in logs]
    finally:
        factory.close()
        upstream.close()


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection; everything the proxy answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECS) as conn:
        conn.sendall(data)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    return received


def status_and_body(reply: bytes) -> tuple[int, bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def wait_for_a_later_op(proxies: Proxies) -> None:
    """Proxy a recorded call and wait for its op: ops are emitted in order, so the op of
    any call made before it would be in ops.jsonl by then."""
    endpoint = f"/later/{next(_LATER)}"
    proxies.request("GET", endpoint, name="plain")
    proxies.op(endpoint)


class TestListenToken:
    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"X-Observer-Token": "tok-wrong"},
            {"X-Observer-Token": "tok-old,tok-new"},
            {"Authorization": f"Bearer {TOKENS[0]}"},  # the agent's own credentials are not ours
        ],
    )
    def test_without_the_right_token_401_not_forwarded_no_op(
        self, proxies: Proxies, headers: dict[str, str]
    ) -> None:
        reply, data = proxies.request("POST", "/guarded/denied", b"x" * 100_000, headers, "guarded")
        assert reply.status == 401
        assert json.loads(data) == {"error": "missing or wrong X-Observer-Token (listen_token)"}
        assert proxies.upstream.received("/guarded/denied") == []
        wait_for_a_later_op(proxies)
        assert proxies.ops("/guarded/denied") == []

    @pytest.mark.parametrize("token", TOKENS)
    def test_each_listed_token_passes_and_is_removed_before_forwarding(
        self, proxies: Proxies, token: str
    ) -> None:
        path = f"/guarded/allowed-{token}"
        reply, _ = proxies.request(
            "GET",
            path,
            headers={"X-Observer-Token": token, "Authorization": "Bearer agent-key"},
            name="guarded",
        )
        assert reply.status == 200
        (seen,) = proxies.upstream.received(path)
        assert seen.header("x-observer-token") is None
        assert seen.header("authorization") == "Bearer agent-key"  # unchanged
        assert proxies.op(path)["success"] is True

    def test_without_listen_token_the_header_is_not_forwarded_either(
        self, proxies: Proxies
    ) -> None:
        proxies.request("GET", "/plain/token", headers={"X-Observer-Token": "x"}, name="plain")
        (seen,) = proxies.upstream.received("/plain/token")
        assert seen.header("x-observer-token") is None


class TestForwardedHeaders:
    def test_off_by_default_nothing_is_added(self, proxies: Proxies) -> None:
        proxies.request("GET", "/plain/fwd", name="plain")
        (seen,) = proxies.upstream.received("/plain/fwd")
        names = {name.lower() for name, _ in seen.headers}
        assert not {"x-forwarded-for", "x-forwarded-proto", "forwarded", "via"} & names

    def test_on_sets_them_replacing_the_clients(self, proxies: Proxies) -> None:
        proxies.request(
            "GET",
            "/guarded/fwd",
            headers={
                "X-Observer-Token": TOKENS[1],
                "X-Forwarded-For": "6.6.6.6",
                "X-Forwarded-Proto": "https",
            },
            name="guarded",
        )
        (seen,) = proxies.upstream.received("/guarded/fwd")
        assert [v for k, v in seen.headers if k.lower() == "x-forwarded-for"] == ["127.0.0.1"]
        assert [v for k, v in seen.headers if k.lower() == "x-forwarded-proto"] == ["http"]


def test_chunked_trailers_are_never_forwarded(proxies: Proxies) -> None:
    request = (
        b"POST /plain/trailers HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nX-Sneaky: 1\r\n\r\n"
    )
    status, _ = status_and_body(raw_exchange(proxies.ports["plain"], request))
    assert status == 200
    (seen,) = proxies.upstream.received("/plain/trailers")
    assert seen.body == b"hello"
    assert seen.header("x-forwarded-for") is None
    assert seen.header("x-sneaky") is None


@pytest.mark.parametrize(
    "target",
    [b"/bad/frag#ment", b"/bad/query?x=1#y", b"/bad/del\x7f", b"/bad/\xc3\xa9", b"/bad/\x01"],
)
def test_malformed_target_is_400_never_500(proxies: Proxies, target: bytes) -> None:
    request = b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    status, body = status_and_body(raw_exchange(proxies.ports["plain"], request))
    assert status == 400
    assert json.loads(body)["error"].startswith("bad request")
    with proxies.upstream.lock:
        assert not [seen for seen in proxies.upstream.seen if seen.target.startswith("/bad/")]


def test_not_an_open_proxy(proxies: Proxies) -> None:
    elsewhere = Upstream()
    try:
        absolute = (
            f"GET {elsewhere.url}/plain/absolute HTTP/1.1\r\nHost: 127.0.0.1:{elsewhere.port}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        status, _ = status_and_body(raw_exchange(proxies.ports["plain"], absolute))
        assert status == 400 or proxies.upstream.received("/plain/absolute")  # the gateway's
        connect = f"CONNECT 127.0.0.1:{elsewhere.port} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        status, _ = status_and_body(raw_exchange(proxies.ports["plain"], connect))
        assert status == 400
        assert elsewhere.seen == []
    finally:
        elsewhere.close()


STREAMED_POST = (
    "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n{extra}\r\n"
    "5\r\nhello\r\n0\r\n\r\n"
)


class TestClientLeaves:
    @pytest.mark.parametrize("how", ["close", "shutdown", "shutdown-after-body"])
    def test_before_the_gateway_answers_cancels_the_call(self, proxies: Proxies, how: str) -> None:
        path = f"/plain/left-early-{how}"
        upstream_closed = threading.Event()

        def route(exchange: Exchange, seen: Seen) -> None:
            # Never answer; note when the proxy drops its side of the call.
            readable, _, _ = select.select([exchange.connection], [], [], WAIT_SECS)
            if readable and exchange.connection.recv(1) == b"":
                upstream_closed.set()
            exchange.close_connection = True

        proxies.upstream.routes[path] = route
        client = socket.create_connection(("127.0.0.1", proxies.ports["plain"]), WAIT_SECS)
        if how == "shutdown-after-body":  # a whole streamed body, on a connection it keeps
            client.sendall(STREAMED_POST.format(path=path, extra="").encode())
        else:
            client.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        wait_for(lambda: proxies.upstream.received(path), what="the call at the gateway")
        left = time.monotonic()
        if how == "close":
            client.close()
        else:  # half-closed a connection it meant to keep: as nginx, that is leaving
            client.shutdown(socket.SHUT_WR)
        try:
            assert upstream_closed.wait(WAIT_SECS)
            assert time.monotonic() - left < 3  # at once, not after timeout_secs (300)
            op = proxies.op(path)
        finally:
            client.close()
        assert (op["success"], op["error"]) == (False, "client disconnected")
        assert op["attributes"] == {"client_left": True}

    @pytest.mark.parametrize("method", ["GET", "POST"])
    def test_half_close_after_a_last_request_still_gets_the_answer(
        self, proxies: Proxies, method: str
    ) -> None:
        """RFC 9112 §9.6: a half-close does not say the client lost interest. One that said
        its request was its last (Connection: close) is answered, and its op is the call's."""
        path = f"/plain/half-closed-{method}"
        half_closed = threading.Event()

        def route(exchange: Exchange, seen: Seen) -> None:
            half_closed.wait(WAIT_SECS)
            # Nothing to poll for: a cancel would come within milliseconds of the FIN.
            time.sleep(0.3)
            exchange.send_json(200, {"ok": True})

        proxies.upstream.routes[path] = route
        extra = "Connection: close\r\n"
        if method == "GET":
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n"
        else:
            request = STREAMED_POST.format(path=path, extra=extra)
        with socket.create_connection(("127.0.0.1", proxies.ports["plain"]), WAIT_SECS) as conn:
            conn.sendall(request.encode())
            wait_for(lambda: proxies.upstream.received(path), what="the call at the gateway")
            conn.shutdown(socket.SHUT_WR)
            half_closed.set()
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
        status, body = status_and_body(received)
        assert (status, json.loads(body)) == (200, {"ok": True})
        op = proxies.op(path)
        assert op["success"] is True and "client_left" not in op["attributes"]

    def test_after_the_gateway_answered_keeps_its_status(self, proxies: Proxies) -> None:
        path = "/plain/left-late"
        release = threading.Event()

        def route(exchange: Exchange, seen: Seen) -> None:
            exchange.start_chunked(500, "application/json")
            exchange.chunk(b'{"error": "down')
            release.wait(WAIT_SECS)

        proxies.upstream.routes[path] = route
        try:
            with httpx.stream("GET", f"{proxies.url('plain')}{path}", timeout=WAIT_SECS) as reply:
                assert reply.status_code == 500
                next(reply.iter_raw())
            op = proxies.op(path)
        finally:
            release.set()
        assert op["success"] is False
        assert op["attributes"] == {"http_status": 500, "client_left": True}


def test_a_client_that_reads_nothing_is_closed_after_send_timeout_secs(proxies: Proxies) -> None:
    """A slow reader (slowhttptest -X) does not hold a proxy connection: once its answer's
    write stalls for send_timeout_secs, the connection is closed and the call ends."""
    path = "/slowread/big"

    def route(exchange: Exchange, seen: Seen) -> None:
        exchange.close_connection = True
        exchange.start_chunked(200, "text/plain")
        with contextlib.suppress(OSError):  # the proxy lets go of the reply
            for _ in range(256):  # 16 MiB: more than the socket buffers hold
                exchange.chunk(b"x" * 65536)
            exchange.end_chunked()

    proxies.upstream.routes[path] = route
    with socket.socket() as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.settimeout(WAIT_SECS)
        conn.connect(("127.0.0.1", proxies.ports["slowread"]))
        started = time.monotonic()
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        op = proxies.op(path)  # recorded when the proxy gives up on the reader
        elapsed = time.monotonic() - started
    assert op["attributes"]["http_status"] == 200 and op["attributes"]["client_left"] is True
    assert elapsed < 5  # send_timeout_secs (0.5 s), not the idle timeout (60 s)
