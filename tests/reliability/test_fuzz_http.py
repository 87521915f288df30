"""Property-based fuzzing of the ingest listener: bodies, headers and framing.

For every generated request, against one real daemon (with a token, small limits):
- no answer is 5xx, and the daemon neither dies nor logs an error;
- a request that is not answered 200 changes neither the ring nor any file;
- one answered 200 adds exactly the events it reports to both the ring and ops.jsonl.

Bodies and headers go through httpx; framing (request lines, Content-Length versus
chunked, line endings, pipelining, truncation) and hostile heads (sizes and counts
around the §11.2 limits, trailers, long and malformed targets, deep pipelines)
through raw sockets. The number of
examples per property is ``OBSERVER_FUZZ_EXAMPLES`` (default 300); the number run
is printed in the "reliability figures" summary.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_kit import (
    FUZZ_EXAMPLES,
    daemon_factory,
    errors_logged,
    exchange,
    parse_responses,
    record,
    snapshot,
)

from observer_core.testing import Daemon

TOKEN = "fuzz-token-0123456789"
MAX_BODY = 65536
MAX_FIELD = 1000
MAX_URL = 1024
MAX_HEAD = 4096
MAX_HEADERS = 20
CONFIG = f"""
[observer]
cycle_secs = 3600
ring_size = 1000000
max_field_bytes = {MAX_FIELD}
[sources.http]
port = {{port}}
token = "{TOKEN}"
max_body_bytes = {MAX_BODY}
max_url_bytes = {MAX_URL}
max_header_bytes = {MAX_HEAD}
max_headers = {MAX_HEADERS}
header_timeout_secs = 2
body_timeout_secs = 2
[sinks.ops]
plugin = "jsonl"
path = "ops.jsonl"
fsync = "never"
"""
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
AUTH = f"Bearer {TOKEN}"


class Ledger:
    """What the daemon holds: ops in the ring, lines in ops.jsonl, every other file's size."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.client = httpx.Client(base_url=daemon.url, timeout=10)
        self.ops = daemon.directory / "ops.jsonl"
        self._offset = 0
        self.lines = 0
        self.ring = self._ring()
        self.files = self._files()
        self.cases = 0
        self.statuses: dict[int, int] = {}

    def _ring(self) -> int:
        return int(self.client.get("/health").json()["ops_in_ring"])

    def _files(self) -> dict[str, int]:
        logs = (self.daemon.stderr_path, self.daemon.stdout_path, self.ops)
        return snapshot(self.daemon.directory, lambda path: path in logs)

    def _new_lines(self) -> int:
        if not self.ops.exists():
            return 0
        with open(self.ops, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        return data.count(b"\n")

    def settle(self, statuses: list[int], accepted: int) -> None:
        """After one case: no 5xx, and the daemon grew by exactly ``accepted`` ops."""
        self.cases += 1
        for status in statuses:
            self.statuses[status] = self.statuses.get(status, 0) + 1
        assert all(status < 500 for status in statuses), statuses
        assert self.daemon.process.poll() is None, "the daemon died"
        ring, lines, files = self._ring(), self._new_lines(), self._files()
        assert ring - self.ring == accepted, f"ring grew by {ring - self.ring}, not {accepted}"
        assert lines == accepted, f"ops.jsonl grew by {lines} lines, not {accepted}"
        assert files == self.files, "a file changed"
        self.ring = ring


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    with daemon_factory(tmp_path_factory.mktemp("fuzz")) as factory:
        keeper = Ledger(factory.start(CONFIG))
        yield keeper
        keeper.client.close()


def accepted_by(status: int, body: bytes) -> int:
    """Events an answer acknowledged (a 200 of /health, /stats or /metrics: none)."""
    if status != 200 or not body.startswith(b'{"accepted":'):
        return 0
    reply = json.loads(body)
    return 1 if reply["accepted"] is True else int(reply["accepted"])


# -- what to send -------------------------------------------------------------------

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    st.text(max_size=12),
)
json_values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
short_text = st.text(max_size=16)
long_text = st.sampled_from(["x" * MAX_FIELD, "x" * (MAX_FIELD + 1), "é" * (MAX_FIELD // 2 + 1)])
strings = st.one_of(short_text, short_text, long_text)
timestamps = st.sampled_from(
    [
        "2026-01-02T03:04:05.678Z",
        "2026-01-02T03:04:05+02:00",
        "2026-01-02T03:04:05",
        "2026-02-30T00:00:00.000Z",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "yesterday",
        "",
    ]
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.floats(), st.booleans(), st.just(1e308)
)
attribute_values = st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=False), short_text)
FIELDS: dict[str, Any] = {
    "timestamp": timestamps,
    "endpoint": strings,
    "input_summary": strings,
    "success": st.booleans(),
    "duration_ms": numbers,
    "output_summary": strings,
    "error": strings,
    "source": strings,
    "staffer_id": strings,
    "sig_hash": strings,
    "event_kind": strings,
    "role": strings,
    "city": strings,
    "state": strings,
    "count": numbers,
    "rescue_attempted": st.booleans(),
    "rescue_succeeded": st.booleans(),
    "task_class": strings,
    "correction": strings,
    "applied_at_turn": numbers,
    "id": st.text(max_size=130),
    "attributes": st.dictionaries(short_text, attribute_values, max_size=70),
}
VALID: dict[str, Any] = {
    **{name: short_text for name, values in FIELDS.items() if values is strings},
    "timestamp": st.sampled_from(["2026-01-02T03:04:05.678Z", "2026-01-02T03:04:05+02:00"]),
    "duration_ms": st.integers(min_value=0) | st.floats(min_value=0, max_value=1e300),
    "count": st.integers(min_value=-(2**63), max_value=2**63),
    "applied_at_turn": st.integers(min_value=-(2**63), max_value=2**63),
    "source": st.text(min_size=1, max_size=16),
    "id": st.text(max_size=128),
    "attributes": st.dictionaries(short_text, attribute_values, max_size=64),
}
valid_events = st.fixed_dictionaries(
    {}, optional={name: VALID.get(name, values) for name, values in FIELDS.items()}
)
wild_events = st.fixed_dictionaries(
    {},
    optional={
        **{name: st.one_of(valid, valid, json_values) for name, valid in FIELDS.items()},
        "unknown": json_values,
    },
)
events = valid_events | wild_events


@st.composite
def deep(draw: st.DrawFn) -> bytes:
    """A field nested hundreds to tens of thousands of levels deep."""
    depth = draw(st.integers(min_value=100, max_value=40000))
    field = draw(st.sampled_from(["unknown", "attributes", "endpoint", "count"]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    return f'{{"{field}": {opener * depth}1{closer * depth}}}'.encode()


BAD_BYTES = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00", b"\\ud800", b'"']


@st.composite
def mutated(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` as it is, or cut short, or with a byte changed, dropped or added."""
    how = draw(st.sampled_from(["keep", "keep", "cut", "replace", "drop", "insert"]))
    if how == "keep" or not body:
        return body
    at = draw(st.integers(min_value=0, max_value=len(body) - 1))
    if how == "cut":
        return body[:at]
    if how == "drop":
        return body[:at] + body[at + 1 :]
    piece = draw(st.sampled_from(BAD_BYTES) | st.binary(min_size=1, max_size=2))
    return body[:at] + piece + body[at + (how == "replace") :]


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode("utf-8", "surrogatepass")


def oversized(body: bytes) -> bytes:
    """``body`` behind enough blank space to pass ``max_body_bytes``."""
    return b" " * MAX_BODY + body


@st.composite
def one_event_bodies(draw: st.DrawFn) -> bytes:
    odd = draw(st.integers(0, 19))
    if odd < 2:
        return draw(deep())
    body = draw(mutated(encode(draw(events | json_values))))
    return oversized(body) if odd == 2 else body


@st.composite
def batch_bodies(draw: st.DrawFn) -> bytes:
    items = draw(st.lists(events, max_size=6))
    if draw(st.booleans()):
        body = ("[" + ", ".join(json.dumps(item) for item in items) + "]").encode()
    else:
        separator = draw(st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\n \t\n"]))
        body = separator.join(encode(item) for item in items)
    odd = draw(st.integers(0, 19))
    if odd == 0:
        body += b"\n" + draw(deep())
    body = draw(mutated(body))
    return oversized(body) if odd == 1 else body


header_names = st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=12)
header_values = st.text(alphabet=string.printable.strip() + " ", max_size=30).map(str.strip)
extra_headers = st.dictionaries(
    header_names.filter(
        lambda name: name.lower() not in ("content-length", "transfer-encoding", "host")
    ),
    header_values,
    max_size=4,
)
authorizations = st.one_of(
    st.just(AUTH), st.just(AUTH), st.just(AUTH), st.none(), header_values, st.just(AUTH + "x")
)


def post(ledger: Ledger, path: str, body: bytes, headers: dict[str, str], auth: str | None) -> None:
    sent = dict(headers)
    if auth is not None:
        sent["Authorization"] = auth
    reply = ledger.client.post(path, content=body, headers=sent)
    if reply.status_code != 200:
        assert "error" in reply.json()
    if auth != AUTH and "authorization" not in {name.lower() for name in headers}:
        assert reply.status_code == 401
    ledger.settle([reply.status_code], accepted_by(reply.status_code, reply.content))


@FUZZ
@given(body=one_event_bodies(), headers=extra_headers, auth=authorizations)
def test_post_event(ledger: Ledger, body: bytes, headers: dict[str, str], auth: str | None) -> None:
    post(ledger, "/event", body, headers, auth)


@FUZZ
@given(body=batch_bodies(), headers=extra_headers, auth=authorizations)
def test_post_events(
    ledger: Ledger, body: bytes, headers: dict[str, str], auth: str | None
) -> None:
    post(ledger, "/events", body, headers, auth)


# -- framing, over raw sockets ---------------------------------------------------------

METHODS = ["POST", "POST", "POST", "GET", "HEAD", "PUT", "OPTIONS", "CONNECT", "BREW", "P OST"]
TARGETS = [
    "/event",
    "/events",
    "/event",
    "/health",
    "/stats",
    "/metrics",
    "/nope",
    "*",
    "http://127.0.0.1/event",
    "/event?x=1",
    "//event",
    "/event#f",
    "/%00",
    "/ev ent",
]
VERSIONS = ["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", "HTTP/9", ""]
FRAMING_HEADERS = st.sampled_from(
    [
        ("Content-Length", "{length}"),
        ("Content-Length", "{length}"),
        ("Content-Length", "-1"),
        ("Content-Length", "99999999999999999999"),
        ("Content-Length", " {length} "),
        ("Content-Length", "0x10"),
        ("Transfer-Encoding", "chunked"),
        ("Transfer-Encoding", "gzip, chunked"),
        ("Transfer-Encoding", "chunked, gzip"),
        ("Transfer-Encoding", "identity"),
        ("Connection", "close"),
        ("Connection", "keep-alive"),
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Expect", "100-continue"),
        ("Authorization", AUTH),
        ("Authorization", AUTH),
        ("Authorization", "Bearer nope"),
        ("Host", "127.0.0.1"),
        (" Host", "x"),
        ("Bad Header", "x"),
        ("X-Null", "a\x00b"),
        ("X-Fold", "a\r\n b"),
    ]
)


@st.composite
def chunked(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` in chunks of random sizes, sometimes with a lie or a missing end."""
    out = b""
    position = 0
    while position < len(body):
        size = draw(st.integers(min_value=1, max_value=max(1, len(body) - position)))
        declared = size + draw(st.sampled_from([0, 0, 0, 0, 1, -1]))
        extension = draw(st.sampled_from([b"", b"", b";x=y", b" "]))
        out += b"%x%s\r\n%s\r\n" % (max(declared, 0), extension, body[position : position + size])
        position += size
    return out + draw(
        st.sampled_from([b"0\r\n\r\n", b"0\r\n\r\n", b"0\r\nX-Trailer: t\r\n\r\n", b""])
    )


@st.composite
def raw_request(draw: st.DrawFn) -> tuple[bytes, str]:
    method = draw(st.sampled_from(METHODS))
    target = draw(st.sampled_from(TARGETS))
    version = draw(st.sampled_from(VERSIONS))
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]))
    body = encode(draw(events))
    headers = draw(st.lists(FRAMING_HEADERS, max_size=5))
    if draw(st.booleans()):
        headers.append(("Authorization", AUTH))
    if any(name == "Transfer-Encoding" for name, _ in headers):
        body = draw(chunked(body))
    head = f"{method} {target} {version}".strip().encode() + eol
    for name, value in headers:
        head += f"{name}: {value.format(length=len(body))}".encode() + eol
    return head + eol + body, method


@st.composite
def raw_exchanges(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """One to three requests on one connection, the whole sometimes cut short."""
    requests = draw(st.lists(raw_request(), min_size=1, max_size=3))
    data = b"".join(request for request, _ in requests)
    if draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(min_value=0, max_value=len(data)))]
    return data, [method for _, method in requests]


@FUZZ
@given(case=raw_exchanges())
def test_framing(ledger: Ledger, case: tuple[bytes, list[str]]) -> None:
    data, _ = case
    port = ledger.daemon.port
    assert port is not None
    answers = parse_responses(exchange(port, data))
    ledger.settle(
        [status for status, _ in answers],
        sum(accepted_by(status, body) for status, body in answers),
    )


# -- hostile heads: sizes and counts around the limits, trailers, targets, pipelines ------

around = st.sampled_from([-2, -1, 0, 1, 2])
HOSTILE_TARGETS = st.one_of(
    st.sampled_from(
        ["/event", "/events", "/health", "/event#x", "/ev\x01ent", "/%23", "*", "http://h/event"]
    ),
    around.map(lambda delta: "/event?" + "q" * (MAX_URL - 24 + delta)),  # the line at the limit
    st.integers(MAX_URL, 4 * MAX_URL).map(lambda size: "/" + "u" * size),
)


@st.composite
def hostile_request(draw: st.DrawFn) -> bytes:
    """A POST of one event whose head and trailers go near or past the limits."""
    target = draw(HOSTILE_TARGETS)
    lines = [
        f"POST {target} HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        b"Authorization: " + AUTH.encode(),
    ]
    count = draw(st.sampled_from([0, 1, MAX_HEADERS - 5, MAX_HEADERS - 4, MAX_HEADERS - 3, 60]))
    lines += [b"X-%d: v" % i for i in range(count)]
    if draw(st.booleans()):  # one big header: the head near max_header_bytes
        size = MAX_HEAD - sum(len(line) + 2 for line in lines) - 60 + draw(around) * 30
        lines.append(b"X-Big: " + b"b" * max(size, 0))
    body = encode(draw(valid_events))
    if draw(st.booleans()):
        lines.append(b"Content-Length: %d" % len(body))
        framed = body
    else:
        lines.append(b"Transfer-Encoding: chunked")
        trailers = draw(
            st.sampled_from(
                [
                    b"",
                    b"X-Forwarded-For: 6.6.6.6\r\n",
                    b"X-T: " + b"t" * MAX_HEAD + b"\r\n",
                    b"".join(b"X-T%d: t\r\n" % i for i in range(MAX_HEADERS)),
                    b"Content-Length: 5\r\n",
                ]
            )
        )
        framed = b"%x\r\n%s\r\n0\r\n%s\r\n" % (len(body), body, trailers)
    return b"\r\n".join(lines) + b"\r\n\r\n" + framed


@st.composite
def hostile_exchanges(draw: st.DrawFn) -> bytes:
    """Up to 20 pipelined requests (past the pipelining limit of 16), sometimes cut short,
    sometimes ahead of Upgrade offers."""
    requests = draw(st.lists(hostile_request() | raw_request().map(lambda r: r[0]), max_size=20))
    if draw(st.integers(0, 3)) == 0:
        offer = b"GET /health HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
        requests.insert(draw(st.integers(0, len(requests))), offer * draw(st.integers(1, 50)))
    data = b"".join(requests) or b"GET /health HTTP/1.1\r\n\r\n"
    if draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(min_value=0, max_value=len(data)))]
    return data


@FUZZ
@given(data=hostile_exchanges())
def test_hostile_heads(ledger: Ledger, data: bytes) -> None:
    port = ledger.daemon.port
    assert port is not None
    answers = parse_responses(exchange(port, data, timeout=15))
    for status, body in answers:
        if status >= 400 and (body or b"HEAD " not in data):  # a HEAD answer has no body
            assert "error" in json.loads(body), body
    ledger.settle(
        [status for status, _ in answers],
        sum(accepted_by(status, body) for status, body in answers),
    )


def test_zz_fuzzing_left_the_daemon_healthy(ledger: Ledger) -> None:
    """Runs last in the module: the daemon is up, logged no error, and the cases are counted."""
    assert ledger.daemon.process.poll() is None
    assert not errors_logged(ledger.daemon), errors_logged(ledger.daemon)[:5]
    assert ledger.cases >= 4 * min(FUZZ_EXAMPLES, 50)
    record(
        "fuzz_http",
        cases=ledger.cases,
        events_accepted=ledger.ring,
        answers_by_status=dict(sorted(ledger.statuses.items())),
        answers_5xx=sum(n for status, n in ledger.statuses.items() if status >= 500),
    )
