"""Contract §11.2 from outside: hostile requests to a real daemon's listeners (issue 19).

One daemon serves the module: the ``http`` source (with a token) and a ``gateway``
proxy in front of a recording upstream (h11 on a thread, so it reads chunked bodies
exactly as they arrive). Every case goes over a raw loopback socket; after each, the
daemon must still be up, and no test may leave an ERROR line or a traceback in its log.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import h11
import httpx
import pytest
from reliability_kit import daemon_factory, errors_logged, exchange, parse_responses, rss_kb

from observer_core.testing import Daemon, free_port, wait_for

TOKEN = "limits-token-0123456789"


@dataclass
class Forwarded:
    """A request as the upstream received it."""

    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


class Upstream:
    """A one-thread-per-connection HTTP/1.1 server (h11) that answers 200 and records."""

    def __init__(self) -> None:
        self.seen: list[Forwarded] = []
        self.partial: dict[bytes, bytearray] = {}  # body bytes received so far, by target
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        http = h11.Connection(h11.SERVER)
        with conn:
            request: h11.Request | None = None
            body = bytearray()
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    data = conn.recv(65536)
                    http.receive_data(data)
                    if not data and http.their_state is not h11.DONE:
                        return
                    continue
                if isinstance(event, h11.Request):
                    request, body = event, bytearray()
                    self.partial[event.target] = body
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage) and request is not None:
                    self.seen.append(Forwarded(request.target, list(request.headers), bytes(body)))
                    reply = b'{"ok": true}'
                    headers = [("content-type", "application/json"), ("content-length", "12")]
                    conn.sendall(http.send(h11.Response(status_code=200, headers=headers)) or b"")
                    conn.sendall(http.send(h11.Data(data=reply)) or b"")
                    conn.sendall(http.send(h11.EndOfMessage()) or b"")
                    http.start_next_cycle()
                else:
                    return

    def close(self) -> None:
        self._sock.close()


@dataclass
class Listeners:
    daemon: Daemon
    upstream: Upstream
    proxy_port: int
    small_port: int  # a proxy with small limits

    @property
    def port(self) -> int:
        assert self.daemon.port is not None
        return self.daemon.port


@pytest.fixture(scope="module")
def listeners(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listeners]:
    upstream = Upstream()
    proxy_port, small_port = free_port(), free_port()
    config = f"""
    [observer]
    cycle_secs = 3600
    [sources.http]
    port = {{port}}
    token = "{TOKEN}"
    [sources.gateway]
    url = "http://127.0.0.1:{upstream.port}"
    listen = "127.0.0.1:{proxy_port}"
    health_check = false
    [sources.small]
    plugin = "gateway"
    url = "http://127.0.0.1:{upstream.port}"
    listen = "127.0.0.1:{small_port}"
    health_check = false
    max_body_bytes = 1000
    body_timeout_secs = 0.5
    [sinks.ops]
    plugin = "jsonl"
    path = "ops.jsonl"
    fsync = "never"
    """
    try:
        with daemon_factory(tmp_path_factory.mktemp("limits")) as factory:
            yield Listeners(factory.start(config), upstream, proxy_port, small_port)
    finally:
        upstream.close()


@pytest.fixture(autouse=True)
def _daemon_stays_clean(listeners: Listeners) -> Iterator[None]:
    yield
    assert listeners.daemon.process.poll() is None, "the daemon died"
    assert not errors_logged(listeners.daemon), errors_logged(listeners.daemon)[:5]


def error_of(body: bytes) -> str:
    message = json.loads(body)["error"]
    assert isinstance(message, str)
    return message


def one_answer(port: int, data: bytes) -> tuple[int, bytes]:
    answers = parse_responses(exchange(port, data, timeout=15))
    assert len(answers) == 1, answers
    return answers[0]


# -- the head limits, before authentication ------------------------------------------------


def test_16_mib_header_is_431_naming_the_key(listeners: Listeners) -> None:
    huge = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (16 << 20) + b"\r\n\r\n"
    status, body = one_answer(listeners.port, huge)
    assert status == 431 and "max_header_bytes (32768 bytes)" in error_of(body)


def test_200000_header_lines_are_431_naming_the_key(listeners: Listeners) -> None:
    lines = b"".join(b"X-%d: 1\r\n" % i for i in range(200_000))
    status, body = one_answer(listeners.port, b"GET /health HTTP/1.1\r\n" + lines + b"\r\n")
    assert status == 431 and "max_headers (100)" in error_of(body)


def test_32_mib_url_is_414_and_the_loop_is_not_stalled(listeners: Listeners) -> None:
    url = b"/" + b"u" * (32 << 20)
    result: list[tuple[int, bytes]] = []
    attacker = threading.Thread(
        target=lambda: result.append(one_answer(listeners.port, b"GET " + url + b" HTTP/1.1\r\n"))
    )
    attacker.start()
    slowest = 0.0
    with httpx.Client(base_url=listeners.daemon.url, timeout=10) as client:
        while attacker.is_alive():
            started = time.monotonic()
            assert client.get("/health").status_code == 200
            slowest = max(slowest, time.monotonic() - started)
    attacker.join()
    ((status, body),) = result
    assert status == 414 and "max_url_bytes (8192 bytes)" in error_of(body)
    assert slowest < 0.3, f"/health waited {slowest:.2f}s during the attack"


def test_distinct_long_targets_leave_no_memory_behind(listeners: Listeners) -> None:
    pid = listeners.daemon.process.pid
    before = rss_kb(pid)
    for i in range(4):
        target = b"/%d" % i + b"t" * (4 << 20)
        status, _ = one_answer(listeners.port, b"GET " + target + b" HTTP/1.1\r\n\r\n")
        assert status == 414
    for i in range(2000):  # under the limit: each a distinct key of the target cache
        target = b"/%d" % i + b"t" * 8000
        answers = parse_responses(exchange(listeners.port, b"GET " + target + b" HTTP/1.1\r\n\r\n"))
        assert [status for status, _ in answers] == [404]
    grown = rss_kb(pid) - before
    assert grown < 12_000, f"RSS grew by {grown} KiB"


def test_head_limit_comes_before_authentication(listeners: Listeners) -> None:
    head = b"GET /stats HTTP/1.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    status, body = one_answer(listeners.port, head)  # no token: still 431, not 401
    assert status == 431 and "max_header_bytes" in error_of(body)


# -- Upgrade, CONNECT, malformed targets ---------------------------------------------------


def test_3000_pipelined_upgrade_offers_are_answered_in_turn(listeners: Listeners) -> None:
    one = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
    answers = parse_responses(exchange(listeners.port, one * 3000, timeout=30))
    statuses = [status for status, _ in answers]
    assert statuses == [200] * 3000, (len(statuses), set(statuses))


def test_connect_is_400_and_closed(listeners: Listeners) -> None:
    for port in (listeners.port, listeners.proxy_port):
        data = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
        status, body = one_answer(port, data + b"GET /health HTTP/1.1\r\n\r\n")
        assert status == 400 and "CONNECT" in error_of(body)


@pytest.mark.parametrize(
    "target",
    [b"/health#x", b"/v1/chat#frag", b"http://127.0.0.1/health", b"*", b"/a\x01b", b"/a\x7f"],
    ids=["hash", "hash-proxy", "absolute-form", "asterisk", "control", "del"],
)
def test_malformed_target_is_400_with_json(listeners: Listeners, target: bytes) -> None:
    for port in (listeners.port, listeners.proxy_port):
        status, body = one_answer(port, b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status == 400 and error_of(body).startswith("bad request")


# -- chunked trailers ------------------------------------------------------------------------


def test_trailers_never_reach_the_gateway(listeners: Listeners) -> None:
    data = (
        b"POST /v1/trailers HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nX-Trailer: t\r\n\r\n"
    )
    status, _ = one_answer(listeners.proxy_port, data)
    assert status == 200
    (seen,) = [seen for seen in listeners.upstream.seen if seen.target == b"/v1/trailers"]
    assert seen.body == b"hello"
    names = {name.lower() for name, _ in seen.headers}
    assert b"x-forwarded-for" not in names and b"x-trailer" not in names


def test_trailers_count_toward_max_header_bytes(listeners: Listeners) -> None:
    data = (
        b"POST /event HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
        + b"2\r\n{}\r\n0\r\nX-T: "
        + b"a" * 40_000
        + b"\r\n\r\n"
    )
    status, body = one_answer(listeners.port, data)
    assert status == 431 and "max_header_bytes" in error_of(body)


# -- what held up before, and must keep holding -----------------------------------------------

SMUGGLING = {
    "two-content-lengths": b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "cl-and-te": b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "chunked-identity": b"Transfer-Encoding: chunked, identity\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "obs-fold": b"X-A: 1\r\n  folded\r\nContent-Length: 2\r\n\r\n{}",
    "bare-lf": b"X-A: 1\nContent-Length: 2\r\n\r\n{}",
    "space-before-colon": b"Content-Length : 2\r\n\r\n{}",
    "cl-in-trailer": b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nContent-Length: 9\r\n\r\n",
}


@pytest.mark.parametrize("case", SMUGGLING, ids=list(SMUGGLING))
def test_ambiguous_framing_is_400_and_closed(listeners: Listeners, case: str) -> None:
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    data = b"POST /event HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + SMUGGLING[case]
    status, body = one_answer(listeners.port, data + b"GET /health HTTP/1.1\r\n\r\n")
    assert status == 400 and error_of(body).startswith("bad request")


def test_request_after_an_early_401_is_never_parsed(listeners: Listeners) -> None:
    first = b"POST /event HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 60\r\n\r\n"
    smuggled = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    answers = parse_responses(exchange(listeners.port, first + smuggled.ljust(60)))
    assert [status for status, _ in answers] == [401]


# -- the proxy streams request bodies (§11.5) --------------------------------------------------

CHUNKED_HEAD = b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_request_body_reaches_the_gateway_as_it_arrives(listeners: Listeners) -> None:
    upstream = listeners.upstream
    # Its last request (Connection: close), so it may half-close and still get the answer.
    head = CHUNKED_HEAD.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", listeners.proxy_port), timeout=10) as sock:
        sock.sendall(head % b"/v1/streamed" + b"6\r\nfirst \r\n")
        wait_for(
            lambda: upstream.partial.get(b"/v1/streamed") == b"first ",
            what="the first chunk at the gateway before the body ended",
        )
        sock.sendall(b"6\r\nsecond\r\n0\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert parse_responses(reply)[0][0] == 200
    (seen,) = [seen for seen in upstream.seen if seen.target == b"/v1/streamed"]
    assert seen.body == b"first second"
    assert (b"transfer-encoding", b"chunked") in seen.headers


def test_sized_body_is_streamed_with_its_content_length(listeners: Listeners) -> None:
    data = (
        b"POST /v1/sized HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
        b"Connection: close\r\n\r\n"
    )
    status, _ = one_answer(listeners.proxy_port, data + b"hello")
    assert status == 200
    (seen,) = [seen for seen in listeners.upstream.seen if seen.target == b"/v1/sized"]
    assert seen.body == b"hello" and (b"content-length", b"5") in seen.headers


def test_streamed_body_past_max_body_bytes_is_413(listeners: Listeners) -> None:
    body = b"".join(b"64\r\n" + b"x" * 100 + b"\r\n" for _ in range(11)) + b"0\r\n\r\n"
    status, reply = one_answer(listeners.small_port, CHUNKED_HEAD % b"/v1/big" + body)
    assert status == 413 and "max_body_bytes (1000 bytes)" in error_of(reply)


def test_streamed_body_too_slow_is_408(listeners: Listeners) -> None:
    with socket.create_connection(("127.0.0.1", listeners.small_port), timeout=10) as sock:
        sock.sendall(CHUNKED_HEAD % b"/v1/slow" + b"2\r\nhi\r\n")  # and nothing more
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    ((status, body),) = parse_responses(reply)
    assert status == 408 and "body_timeout_secs (0.5s)" in error_of(body)
