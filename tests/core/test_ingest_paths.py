"""The decoder's fast paths give the same ops and the same errors as the slow ones."""

from __future__ import annotations

import pytest

from observer_core import UNSET, EventDecoder, InvalidEvent


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
