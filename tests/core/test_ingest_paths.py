"""The decoder's fast paths give the same ops and the same errors as the slow ones."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from observer_core import UNSET, EventDecoder, InvalidEvent, Op


def error_of(decoder: EventDecoder, body: bytes) -> str:
    with pytest.raises(InvalidEvent) as caught:
        decoder.decode_lines(body)
    return str(caught.value)


def test_a_field_error_names_its_line_counting_blank_lines() -> None:
    decoder = EventDecoder(max_field_bytes=20)
    body = b'{}\n\n  \n{"city": "' + b"x" * 21 + b'"}\n{}\n'
    assert error_of(decoder, body) == "line 4: city: string longer than max_field_bytes (20)"


def test_a_type_error_names_its_line() -> None:
    body = b'{}\n\n{"count": "3"}\n'
    assert error_of(EventDecoder(), body) == "line 3: count: Expected `int`, got `str`"


def test_a_body_within_the_limit_skips_no_check_that_matters() -> None:
    # A field at the limit passes; one byte more fails, whether alone or in a batch.
    decoder = EventDecoder(max_field_bytes=40)
    at_limit = b'{"role": "' + b"r" * 40 + b'"}'
    assert decoder.decode(at_limit).role == "r" * 40
    over = b'{"role": "' + "é".encode() * 21 + b'"}'
    with pytest.raises(InvalidEvent, match="role: string longer"):
        decoder.decode(over)


def test_lines_decode_to_the_same_ops_as_single_events() -> None:
    decoder = EventDecoder()
    ts = b'"timestamp": "2026-01-01T00:00:00Z"'
    lines = [b'{"source": "a", "count": 2, "success": true, %s}' % ts, b'{"error": "e", %s}' % ts]
    ops = decoder.decode_lines(b"\n".join(lines) + b"\n\n")
    assert ops == [decoder.decode(line) for line in lines]
    assert ops[1].rescue_attempted is False and ops[1].staffer_id is UNSET
    assert ops[1].output_summary == "e"


def test_rows_leave_rescue_flags_unset() -> None:
    row = (
        b'{"timestamp": "2026-01-01T00:00:00.000Z", "endpoint": "e", "input_summary": "i",'
        b' "success": true, "duration_ms": 1, "output_summary": "o", "source": "s"}'
    )
    op = EventDecoder(require_all=True).decode(row)
    assert op.rescue_attempted is UNSET and op.count is UNSET


COMPLETE = (
    '{"timestamp": "%s", "endpoint": "e", "input_summary": "i", "success": true,'
    ' "duration_ms": 1, "output_summary": "o", "source": "s"}'
)
"""An event with every required field: the batch fast path takes it if its timestamp passes."""


PARTS = (range(1, 10000), range(1, 13), range(1, 29), range(24), range(60), range(60), range(1000))
"""Year, month, day, hour, minute, second, millisecond: values valid on any date."""
WRONG = [(0, 0), (1, 0), (1, 13), (2, 0), (2, 29), (2, 30), (2, 31), (2, 32), (3, 24), (4, 60)]
WRONG += [(5, 60), (5, 99)]
"""(part, value): one part set to a value that may be out of range (day 31 in April...)."""
valid_parts = st.tuples(*(st.integers(values.start, values.stop - 1) for values in PARTS))


def stamp(parts: tuple[int, ...]) -> str:
    return "{:0>4}-{:0>2}-{:0>2}T{:0>2}:{:0>2}:{:0>2}.{:0>3}Z".format(*parts)


def with_wrong(parts: tuple[int, ...], wrong: tuple[int, int]) -> str:
    index, value = wrong
    return stamp((*parts[:index], value, *parts[index + 1 :]))


stamps = st.one_of(
    valid_parts.map(stamp),
    valid_parts.map(stamp),
    st.builds(with_wrong, valid_parts, st.sampled_from(WRONG)),
    st.sampled_from(
        [
            "2024-02-29T23:59:59.999Z",  # a leap day
            "2026-02-29T00:00:00.000Z",
            "0000-01-01T00:00:00.000Z",
            "2026-01-01T00:00:00.000z",
            "2026-01-01 00:00:00.000Z",
            "2026-01-01T00:00:00.000Z\n2026",
            "2026-01-0\u0661T00:00:00.000Z",  # a digit, but not an ASCII one
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:00:00.000+00:00",
        ]
    ),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(stamps, min_size=1, max_size=6))
@example(["2026-01-01T10:00:00.000Z", "2026-01-02T24:00:00.000Z"])  # hours differ: looked up
@example(["2026-01-01T10:00:00.000Z", "2026-02-30T10:00:00.000Z"])  # each of its own
@example(["2026-01-01T10:00:00.000Z", "2026-01-01T10:59:59.999Z"])
def test_a_batch_of_timestamps_is_judged_as_each_alone_would_be(batch: list[str]) -> None:
    # The batch check (a few C calls over all timestamps) must accept exactly what the
    # general path, one event at a time, accepts; and leave each timestamp as it was.
    decoder = EventDecoder()
    lines = [(COMPLETE % stamp.replace("\n", "\\n")).encode() for stamp in batch]
    expected: list[Op] | str = []
    for number, line in enumerate(lines, 1):
        try:
            expected.append(decoder.convert(json.loads(line)))
        except InvalidEvent as exc:
            expected = f"line {number}: {exc}"
            break
    try:
        got: list[Op] | str = decoder.decode_lines(b"\n".join(lines))
    except InvalidEvent as exc:
        got = str(exc)
    assert got == expected
    if isinstance(got, list) and len(got) == 1:
        assert decoder.decode(lines[0]) == got[0]


@pytest.mark.parametrize(
    "raised",
    [
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),  # msgspec < 0.23
        msgspec.DecodeError("Invalid UTF-8 encoded string"),  # msgspec >= 0.23
    ],
)
def test_bad_utf8_reads_the_same_whatever_msgspec_raised(raised: Exception) -> None:
    assert str(InvalidEvent.unreadable(raised)) == "invalid JSON: a string is not valid UTF-8"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("entry", "body"),
    [
        ("decode", b'{"endpoint": "\xff\xfe"}'),
        ("decode_lines", b'{}\n{"endpoint": "\xc0\xaf"}\n'),
        ("decode_array", b'[{}, {"role": "\xed\xa0\x80"}]'),
    ],
)
def test_every_entry_point_words_bad_utf8_alike(entry: str, body: bytes) -> None:
    with pytest.raises(InvalidEvent, match=r"invalid JSON: a string is not valid UTF-8$"):
        getattr(EventDecoder(), entry)(body)
