"""Hostile bodies and lines, by name: oversized, deeply nested, not UTF-8, huge numbers.

Each goes to ``POST /event`` or ``/events`` of a real daemon, and the lines go to a
``jsonl_tail`` of the same daemon too: a bad request is a 4xx naming the problem and
changes nothing; a bad tailed line is skipped and counted, and the tail goes on.
(The fuzzer in test_fuzz_http.py covers the space between these cases.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from reliability_kit import daemon_factory, errors_logged, line_count, read_jsonl, record

from observer_core.testing import Daemon, wait_for

MAX_BODY = 65536
MAX_FIELD = 4096
CONFIG = f"""
[observer]
cycle_secs = 0.2
max_field_bytes = {MAX_FIELD}
[sources.http]
port = {{port}}
max_body_bytes = {MAX_BODY}
max_batch_events = {MAX_BODY // 3}
[sources.tail]
plugin = "jsonl_tail"
path = "tail.jsonl"
[sinks.ops]
plugin = "jsonl"
path = "ops.jsonl"
fsync = "never"
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with daemon_factory(tmp_path_factory.mktemp("bad-input")) as factory:
        yield factory.start(CONFIG)


def nested(depth: int, field: str = "unknown") -> bytes:
    return b'{"%s": %s1%s}' % (field.encode(), b"[" * depth, b"]" * depth)


REJECTED: dict[str, tuple[str, bytes, int, str]] = {
    # case: (path, body, status, what the error says)
    "body-over-limit": ("/events", b"{}\n" * (MAX_BODY // 3 + 1), 413, "too large"),
    "chunked-body-over-limit": ("/events", b"", 413, "too large"),  # the body is sent chunked
    "line-field-over-limit": (
        "/events",
        b'{}\n{"endpoint": "' + b"x" * (MAX_FIELD + 1) + b'"}\n',
        400,
        "line 2: endpoint: string longer than max_field_bytes",
    ),
    "multibyte-field-over-limit": (
        "/event",
        json.dumps({"city": "é" * (MAX_FIELD // 2 + 1)}, ensure_ascii=False).encode(),
        400,
        "city: string longer than max_field_bytes",
    ),
    "nested-30k-unknown-field": ("/event", nested(30_000), 400, "nested too deeply"),
    "nested-30k-attributes": ("/event", nested(30_000, "attributes"), 400, "attributes"),
    "nested-6k-objects": (
        "/event",
        b'{"unknown": ' + b'{"a": ' * 6_000 + b"1" + b"}" * 6_001,
        400,
        "nested too deeply",
    ),
    "nested-array-body": ("/events", b"[" * 30_000 + b"]" * 30_000, 400, "item 1"),
    "nested-in-a-line": ("/events", b"{}\n" + nested(30_000), 400, "line 2: invalid JSON"),
    "invalid-utf8": ("/event", b'{"endpoint": "\xff\xfe"}', 400, "not valid UTF-8"),
    "overlong-utf8": ("/event", b'{"endpoint": "\xc0\xaf"}', 400, "not valid UTF-8"),
    "utf8-encoded-surrogate": ("/event", b'{"role": "\xed\xa0\x80"}', 400, "not valid UTF-8"),
    "invalid-utf8-in-a-line": ("/events", b'{}\n{"city": "\x80"}', 400, "line 2: invalid JSON"),
    "lone-surrogate-escape": ("/event", b'{"endpoint": "\\ud800"}', 400, "invalid JSON"),
    "utf8-bom": ("/event", b"\xef\xbb\xbf{}", 400, "invalid JSON"),
    "number-out-of-range": ("/event", b'{"duration_ms": 1e400}', 400, "duration_ms"),
    "attribute-out-of-range": ("/event", b'{"attributes": {"a": -1e999}}', 400, "attributes"),
    "nan": ("/event", b'{"duration_ms": NaN}', 400, "invalid JSON"),
    "only-whitespace": ("/events", b" \n\t\r\n " * 100, 400, "empty batch"),
}


def post(daemon: Daemon, path: str, body: bytes, chunked: bool = False) -> httpx.Response:
    content: Any = iter([b"{}\n" * 5000] * (MAX_BODY // 15000 + 1)) if chunked else body
    return httpx.post(f"{daemon.url}{path}", content=content, timeout=30)


@pytest.mark.parametrize("case", REJECTED, ids=list(REJECTED))
def test_bad_request_is_a_4xx_naming_the_problem_and_changes_nothing(
    daemon: Daemon, case: str
) -> None:
    path, body, status, said = REJECTED[case]
    ops = daemon.directory / "ops.jsonl"
    before = (httpx.get(f"{daemon.url}/health").json()["ops_in_ring"], line_count(ops))
    reply = post(daemon, path, body, chunked=case.startswith("chunked"))
    assert reply.status_code == status, reply.text
    assert said in reply.json()["error"]
    assert (httpx.get(f"{daemon.url}/health").json()["ops_in_ring"], line_count(ops)) == before
    assert not errors_logged(daemon)


ACCEPTED: dict[str, tuple[bytes, dict[str, Any]]] = {
    # case: (body for /event, fields of the op written)
    "field-at-the-limit": (
        json.dumps({"city": "é" * (MAX_FIELD // 2)}, ensure_ascii=False).encode(),
        {"city": "é" * (MAX_FIELD // 2)},
    ),
    "huge-integer": (
        b'{"duration_ms": 123456789012345678901234567890, "count": -99999999999999999999}',
        {"duration_ms": 123456789012345678901234567890, "count": -99999999999999999999},
    ),
    "largest-double": (
        b'{"duration_ms": 1.7976931348623157e308}',
        {"duration_ms": 1.7976931348623157e308},
    ),
    "nul-and-controls": (b'{"endpoint": "a\\u0000b\\u001fc"}', {"endpoint": "a\x00b\x1fc"}),
    "nested-unknown-field-within-limits": (nested(500), {"endpoint": "scenario:fill"}),
    "astral-plane": ('{"role": "\U0001f600"}'.encode(), {"role": "\U0001f600"}),
}


@pytest.mark.parametrize("case", ACCEPTED, ids=list(ACCEPTED))
def test_odd_but_valid_event_is_written_exactly(daemon: Daemon, case: str) -> None:
    body, fields = ACCEPTED[case]
    ops = daemon.directory / "ops.jsonl"
    count = line_count(ops)
    reply = post(daemon, "/event", body)
    assert reply.status_code == 200, reply.text
    written = read_jsonl(ops)[count:]
    assert len(written) == 1
    assert {key: written[0][key] for key in fields} == fields


def test_body_at_the_limit_is_taken_whole(daemon: Daemon) -> None:
    line = b"{}\n"
    body = line * (MAX_BODY // len(line)) + b" " * (MAX_BODY % len(line))
    assert len(body) == MAX_BODY
    reply = post(daemon, "/events", body)
    assert reply.status_code == 200
    assert reply.json() == {"accepted": MAX_BODY // len(line)}


TAILED_BAD_LINES = [
    nested(1800) + b"\n",  # shorter than max_field_bytes: the fast path reads it first
    nested(30_000) + b"\n",
    b'{"timestamp": "2026-01-01T00:00:00.000Z", "endpoint": "\xff"}\n',
    b'{"endpoint": "\xed\xa0\x80"}\n',
    b'{"duration_ms": 1e400}\n',
    b"\xef\xbb\xbf{}\n",
]


def tailed_op(number: int) -> bytes:
    row = {
        "timestamp": "2026-01-01T00:00:00.000Z",
        "endpoint": "/tail",
        "input_summary": "i",
        "success": True,
        "duration_ms": 1,
        "output_summary": "o",
        "source": "tail",
        "id": f"tail-{number}",
    }
    return json.dumps(row).encode() + b"\n"


def test_bad_tailed_lines_are_skipped_and_the_tail_goes_on(daemon: Daemon) -> None:
    path: Path = daemon.directory / "tail.jsonl"

    def tailed() -> list[str]:
        rows = read_jsonl(daemon.directory / "ops.jsonl")
        return [row["id"] for row in rows if str(row.get("id", "")).startswith("tail-")]

    for number, line in enumerate(TAILED_BAD_LINES):  # one poll each, then all in one
        with open(path, "ab") as out:
            out.write(line + tailed_op(number))
        wait_for(lambda n=number: len(tailed()) == n + 1, timeout=10, what=f"line {number}")
    with open(path, "ab") as out:
        out.write(b"".join(TAILED_BAD_LINES) + tailed_op(len(TAILED_BAD_LINES)))
    wait_for(lambda: len(tailed()) == len(TAILED_BAD_LINES) + 1, timeout=10, what="the last")
    assert tailed() == [f"tail-{n}" for n in range(len(TAILED_BAD_LINES) + 1)]
    skipped = daemon.metric("observer_tail_lines_skipped_total", instance="sources.tail")
    assert skipped == 2 * len(TAILED_BAD_LINES)
    assert not daemon.metric("observer_instance_errors_total", instance="sources.tail")
    assert not errors_logged(daemon)
    record(
        "bad_input",
        rejected_cases=len(REJECTED),
        accepted_odd_cases=len(ACCEPTED) + 1,
        tailed_bad_lines_skipped=int(skipped),
    )
