"""``summarize`` and the op of a call (CONTRACT §6), rule by rule, as tables.

JSON text must be what JavaScript's ``JSON.stringify`` writes after
``JSON.parse``; when ``node`` is installed, that is checked against node itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from observer_plugins.sources.gateway.outcome import Outcome, make_op, parse_json
from observer_plugins.sources.gateway.summarize import js_number, js_stringify, summarize

LONG = "x" * 150


@pytest.mark.parametrize(
    ("data", "summary"),
    [
        # 1. a sql_matches key, whatever its value
        ({"sql_matches": 3, "vector_reranked": 2}, "hybrid: 3 sql → 2 results"),
        ({"sql_matches": None}, "hybrid: null sql → ? results"),
        ({"sql_matches": 0, "vector_reranked": 1.0}, "hybrid: 0 sql → 1 results"),
        ({"sql_matches": "7", "vector_reranked": [1, 2]}, 'hybrid: "7" sql → [1,2] results'),
        ({"vector_reranked": 5, "sql_matches": {"a": 1}}, 'hybrid: {"a":1} sql → 5 results'),
        ({"sql_matches": 1, "rows": [1], "answer": "a"}, "hybrid: 1 sql → ? results"),
        # 2. rows is a list (even empty)
        ({"rows": [1, 2, 3]}, "3 rows"),
        ({"rows": []}, "0 rows"),
        ({"rows": [1, 2], "row_count": 40}, "40 rows"),
        ({"rows": [1, 2], "row_count": 40.0}, "40 rows"),
        ({"rows": [1, 2], "row_count": 2.5}, "2.5 rows"),
        ({"rows": [1, 2], "row_count": 0}, "2 rows"),
        ({"rows": [1, 2], "row_count": None}, "2 rows"),
        ({"rows": [1, 2], "row_count": "9"}, "2 rows"),
        ({"rows": [1, 2], "row_count": True}, "2 rows"),
        ({"rows": [1], "answer": "a"}, "1 rows"),
        # 3. answer is a non-empty string
        ({"answer": "yes"}, "answer: yes..."),
        ({"answer": LONG}, "answer: " + "x" * 80 + "..."),
        ({"answer": "😀" * 90}, "answer: " + "😀" * 80 + "..."),
        ({"answer": "", "sources": [1]}, "1 sources"),
        ({"answer": 42, "sources": []}, "0 sources"),
        # 4. sources is a list
        ({"sources": ["a", "b"]}, "2 sources"),
        ({"sources": "ab"}, '{"sources":"ab"}'),
        ({"rows": {"a": 1}}, '{"rows":{"a":1}}'),
        # 5. the first 100 characters of the compact JSON
        ({"ok": True, "n": 1.0, "s": "é\n"}, '{"ok":true,"n":1,"s":"é\\n"}'),
        ({"b": 1, "10": 2, "2": 3, "01": 4}, '{"2":3,"10":2,"b":1,"01":4}'),
        ({"text": LONG}, ('{"text":"' + LONG)[:100]),
        ([1, "two", None], '[1,"two",null]'),
        ("plain", '"plain"'),
        (None, "null"),
        (1e21, "1e+21"),
        ({}, "{}"),
    ],
)
def test_summarize(data: Any, summary: str) -> None:
    assert summarize(data) == summary


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (-2.0, "-2"),
        (1.5, "1.5"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1.5e300, "1.5e+300"),
        (123456789.125, "123456789.125"),
        (0.000001, "0.000001"),
        (0.0000012, "0.0000012"),
        (1e-7, "1e-7"),
        (-2.5e-8, "-2.5e-8"),
        (5e-324, "5e-324"),
        (2**53, "9007199254740992"),
        (2**53 + 1, "9007199254740992"),  # a double, as JSON.parse reads it
        (10**21, "1e+21"),
        (10**400, "null"),  # Infinity once parsed
        (float("nan"), "null"),
        (float("-inf"), "null"),
    ],
)
def test_numbers_as_javascript_writes_them(number: int | float, text: str) -> None:
    assert js_number(number) == text


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ('a"b\\c', '"a\\"b\\\\c"'),
        ("\b\f\n\r\t", '"\\b\\f\\n\\r\\t"'),
        ("\x00\x1f\x7f", '"\\u0000\\u001f\x7f"'),
        ("é€😀 / \u2028", '"é€😀 / \u2028"'),
        ("\ud800", '"\\ud800"'),  # a lone surrogate, as JSON.parse keeps it
    ],
)
def test_strings_as_javascript_writes_them(text: str, written: str) -> None:
    assert js_stringify(text) == written


def test_stringify_stops_at_the_limit() -> None:
    deep: Any = "end"
    for _ in range(5000):  # deeper than the recursion limit: only the start is written
        deep = [deep]
    assert js_stringify(deep, 100) == "[" * 100
    assert js_stringify({"a": "x" * 10**6}, 10) == '{"a":"xxxx'


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, b'{"rows":[1]}', Outcome(True, "1 rows")),
        (201, b'{"error":null,"answer":"a"}', Outcome(True, "answer: a...")),
        (200, b'{"error":"bad"}', Outcome(False, "ERROR: bad", "bad")),
        (200, b'{"error":""}', Outcome(False, "ERROR: ", "")),
        (200, b'{"error":{"code":1.0}}', Outcome(False, 'ERROR: {"code":1}', '{"code":1}')),
        (200, b'{"error":false}', Outcome(False, "ERROR: false", "false")),
        (503, b'{"rows":[]}', Outcome(False, "ERROR: HTTP 503", "HTTP 503")),
        (503, b'{"error":"down"}', Outcome(False, "ERROR: down", "down")),
        (200, b"data: 1\n\n", Outcome(True, "data: 1\n\n")),
        (200, b"NaN", Outcome(True, "NaN")),  # not JSON (as JSON.parse says)
        (404, b"<html>", Outcome(False, "ERROR: HTTP 404", "HTTP 404")),
        (200, b"", Outcome(True, "")),
        (200, b"[1,2]", Outcome(True, "[1,2]")),
    ],
)
def test_outcome_of_a_body(status: int, body: bytes, outcome: Outcome) -> None:
    assert Outcome.of_body(status, body) == outcome


def test_long_error_is_cut() -> None:
    outcome = Outcome.of_json(500, {"error": "e" * 10000})
    assert outcome.error == "e" * 2000
    assert outcome.output_summary == "ERROR: " + "e" * 2000


def test_op_fields() -> None:
    op = make_op("/search", "find", 12.34567, Outcome(True, "1 rows"), {"http_status": 200})
    assert (op.endpoint, op.input_summary, op.success, op.duration_ms) == (
        "/search",
        "find",
        True,
        12.346,
    )
    assert (op.output_summary, op.source, op.attributes) == ("1 rows", "mcp", {"http_status": 200})
    assert len(op.timestamp) == 24 and op.timestamp.endswith("Z")
    failed = make_op("/x", "d", -1, Outcome.failed("boom"))
    assert (failed.error, failed.duration_ms, failed.output_summary) == ("boom", 0, "ERROR: boom")


def test_parse_json_refuses_what_json_parse_refuses() -> None:
    assert parse_json(b'{"a": 1}') == (True, {"a": 1})
    for body in (b"NaN", b"[Infinity]", b"{", b"\xff", b"[" * 100000):
        assert parse_json(body) == (False, None)


# -- against node itself ----------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=4) | st.integers(0, 2**33).map(str), children, max_size=4
        )
    ),
    max_leaves=12,
)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@settings(max_examples=5, deadline=None)
@given(st.lists(_json, min_size=60, max_size=60))
def test_stringify_matches_node(values: list[Any]) -> None:
    texts = [json.dumps(value) for value in values]  # the JSON a gateway would send
    script = (
        "const lines = require('fs').readFileSync(0, 'utf8').split('\\n');"
        "console.log(JSON.stringify(lines.map(t => JSON.stringify(JSON.parse(t)))));"
    )
    node = subprocess.run(
        ["node", "-e", script], input="\n".join(texts), capture_output=True, text=True, check=True
    )
    expected = json.loads(node.stdout)
    assert [js_stringify(json.loads(text)) for text in texts] == expected
