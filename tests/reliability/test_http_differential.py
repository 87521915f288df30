"""Differential test of the HTTP server's framing against h11 (contract §11.2).

Hypothesis writes byte streams of one to four pipelined requests with varied framing
(Content-Length, chunked with extensions and trailers, both, duplicates, odd
Transfer-Encodings, bad header lines, bodies that lie about their length, streams cut
short). Each stream goes over a socket to our server, answering with an echo handler
built on its public classes, and to ``h11.Connection(h11.SERVER)``. Then:

- where h11 takes a request, we either take the same one (same method, target and body:
  we agree on where it ends) or reject it with a 4xx and close (we may be stricter);
- where h11 rejects the framing (or the stream ends inside a request), we never answer
  that request with a 200, and answer nothing after it;
- never a 5xx, never an ERROR in our log.

The number of examples is ``OBSERVER_FUZZ_EXAMPLES`` (default 300).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import h11
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from reliability_kit import FUZZ_EXAMPLES, exchange, parse_responses, record

from observer_core.http import HttpLimits, HttpServer, Request, Response

FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class Echo:
    """Answers every request with its method, target and body (latin-1) as JSON."""

    def precheck(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> Response | None:
        return None

    def handle(self, request: Request) -> Response:
        target = request.path + ("?" + request.query if request.query else "")
        echo = {"m": request.method, "t": target, "b": request.body.decode("latin-1")}
        return Response(200, json.dumps(echo).encode())


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class ServerThread:
    """Our server on an event loop of its own thread (the test side is blocking sockets)."""

    def __init__(self) -> None:
        self.errors = Errors()
        logger = logging.getLogger("test_http_differential")
        logger.addHandler(self.errors)
        limits = HttpLimits(header_timeout_secs=3, body_timeout_secs=3)
        self.server = HttpServer(Echo(), host="127.0.0.1", port=0, limits=limits, logger=logger)
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(10), "the server did not start"
        self.port = self.server.port

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(1.0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Tally:
    cases: int = 0
    agreed: int = 0  # requests both took, identically
    stricter: int = 0  # requests h11 took and we rejected
    rejected_by_both: int = 0


@pytest.fixture(scope="module")
def ours() -> Iterator[ServerThread]:
    server = ServerThread()
    yield server
    server.close()


TALLY = Tally()

# -- what to send -------------------------------------------------------------------------

METHODS = ["GET", "POST", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]
TARGETS = ["/", "/echo", "/a/b?c=d&e", "/x%20y", "/" + "p" * 300]
HEADERS = st.sampled_from(
    [
        b"Accept: */*",
        b"X-Empty:",
        b"X-Spaces:   padded   ",
        b"User-Agent: fuzz/1",
        b"Connection: keep-alive",
        b"Connection: close",
        b"Connection: upgrade",
        b"Upgrade: h2c",
        b"Content-Type: application/json",
        b"X-Tab:\tvalue",
    ]
)
BAD_HEADERS = st.sampled_from(
    [
        b"Bad Header: x",  # a space in the name
        b"X-Space : x",  # whitespace before the colon
        b"X-Fold: a\r\n b",  # obs-fold
        b": no-name",
        b"X-Nul: a\x00b",
        b"X-Ctl: a\x01b",
        b"NoColon",
        b"X-Utf8: \xc3\xa9",
        b"X-Del\x7f: x",
    ]
)


@st.composite
def chunked(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` in chunks, with extensions, odd size spellings, trailers or lies."""
    out = b""
    position = 0
    while position < len(body):
        size = draw(st.integers(min_value=1, max_value=len(body) - position))
        spelled = draw(st.sampled_from([b"%x", b"%X", b"0%x", b"%x ", b"%x;ext=1", b"%x;e"]))
        lie = draw(st.sampled_from([0, 0, 0, 0, 0, 1, -1]))
        out += spelled % max(size + lie, 0) + b"\r\n" + body[position : position + size] + b"\r\n"
        position += size
    trailers = draw(
        st.sampled_from(
            [b"", b"", b"X-Trailer: t\r\n", b"X-Forwarded-For: 6.6.6.6\r\n", b"Bad Trailer\r\n"]
        )
    )
    return out + b"0\r\n" + trailers + b"\r\n"


@st.composite
def request(draw: st.DrawFn, last: bool) -> bytes:
    method = draw(st.sampled_from(METHODS))
    target = draw(st.sampled_from(TARGETS))
    version = b"HTTP/1.0" if last and draw(st.integers(0, 9)) == 0 else b"HTTP/1.1"
    eol = draw(st.sampled_from([b"\r\n"] * 9 + [b"\n"]))
    lines = [f"{method} {target} ".encode() + version, b"Host: 127.0.0.1"]
    lines += draw(st.lists(HEADERS, max_size=3))
    if draw(st.integers(0, 5)) == 0:
        lines.append(draw(BAD_HEADERS))
    body = draw(st.binary(max_size=40))
    framing = draw(
        st.sampled_from(
            ["none", "length", "length", "chunked", "chunked", "both", "two-lengths", "odd-te"]
        )
    )
    if framing == "none":
        body = b""
    elif framing in ("length", "both", "two-lengths"):
        declared = len(body) + draw(st.sampled_from([0, 0, 0, 0, 1, -1]))
        spelled = draw(st.sampled_from([b"%d", b"%d", b"+%d", b"0%d", b"%d "]))
        lines.append(b"Content-Length: " + spelled % max(declared, 0))
        if framing == "two-lengths":
            other = draw(st.sampled_from([declared, declared + 1]))
            lines.append(b"Content-Length: %d" % max(other, 0))
    if framing in ("chunked", "both", "odd-te"):
        coding = b"chunked"
        if framing == "odd-te":
            coding = draw(
                st.sampled_from([b"Chunked", b"gzip, chunked", b"chunked, identity", b"identity"])
            )
        lines.append(b"Transfer-Encoding: " + coding)
        body = draw(chunked(body)) if body else b"0\r\n\r\n"
    head = eol.join(lines) + eol + eol
    return head + body


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    count = draw(st.integers(min_value=1, max_value=4))
    data = b"".join(draw(request(index == count - 1)) for index in range(count))
    if draw(st.integers(0, 9)) == 0:
        data = data[: draw(st.integers(min_value=0, max_value=len(data)))]
    return data


# -- the reference: h11 -------------------------------------------------------------------


@dataclass
class Reference:
    taken: list[tuple[str, str, bytes]]  # the requests h11 read whole, in order
    bad_framing: bool  # h11 rejected the next one before the stream ended


def h11_reads(data: bytes) -> Reference:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    ended = False  # the client half-closes after sending, as exchange() does
    taken: list[tuple[str, str, bytes]] = []
    current: tuple[str, str] | None = None
    body = b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                current, body = (event.method.decode(), event.target.decode("latin-1")), b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert current is not None
                taken.append((*current, body))
                current = None
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                    return Reference(taken, bad_framing=False)  # the connection ends here
                conn.start_next_cycle()
            elif event is h11.PAUSED:  # an Upgrade offer: h11 would wait for our decision
                return Reference(taken, bad_framing=False)
            elif event is h11.NEED_DATA and not ended:
                conn.receive_data(b"")
                ended = True
            else:  # the end of the stream
                return Reference(taken, bad_framing=False)
    except h11.RemoteProtocolError:
        # h11 refuses a stray CR or LF where a request line may begin; RFC 9112 §2.2 lets
        # a server skip empty lines there, as ours does (it waits for the rest of the line).
        leftover = conn.trailing_data[0]
        stray = current is None and bool(leftover) and not leftover.strip(b"\r\n")
        return Reference(taken, bad_framing=not ended and not stray)


# -- the property ---------------------------------------------------------------------------


@FUZZ
@given(data=streams())
@example(data=b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n\r")
def test_framing_agrees_with_h11(ours: ServerThread, data: bytes) -> None:
    reference = h11_reads(data)
    answers = parse_responses(exchange(ours.port, data, timeout=10))
    TALLY.cases += 1
    assert all(status < 500 for status, _ in answers), answers
    for index, (status, body) in enumerate(answers):
        if status != 200:  # a rejection: 4xx, and the last answer on the connection
            assert 400 <= status < 500 and index == len(answers) - 1, answers
            if index < len(reference.taken):
                TALLY.stricter += 1
            else:
                TALLY.rejected_by_both += 1
            break
        assert index < len(reference.taken), f"we took request {index}; h11 did not: {answers}"
        echo = json.loads(body)
        method, target, expected = reference.taken[index]
        assert (echo["m"], echo["t"], echo["b"].encode("latin-1")) == (method, target, expected)
        TALLY.agreed += 1
    if reference.bad_framing and len(answers) <= len(reference.taken):
        assert answers and 400 <= answers[-1][0] < 500, f"h11 rejected; we did not: {answers}"
    assert not ours.errors.lines, ours.errors.lines[:3]


def test_zz_differential_figures(ours: ServerThread) -> None:
    """Runs last in the module: the cases are counted and some requests agreed."""
    assert TALLY.cases >= min(FUZZ_EXAMPLES, 50) and TALLY.agreed > 0
    record(
        "http_differential",
        cases=TALLY.cases,
        requests_agreed=TALLY.agreed,
        rejected_by_both=TALLY.rejected_by_both,
        stricter_than_h11=TALLY.stricter,
    )
