"""The reference's ``summarize``, with its JavaScript meaning spelled out (CONTRACT §6).

The input is a parsed JSON value (``dict``, ``list``, ``str``, ``int``, ``float``,
``bool`` or ``None``, as ``json.loads`` gives it). JSON text is written as
JavaScript's ``JSON.stringify`` writes a value that ``JSON.parse`` read:

- no spaces after ``,`` and ``:``; non-ASCII kept; ``"``, ``\\`` and control
  characters escaped (``\\n``, ``\\u001f``...), lone surrogates as ``\\udXXX``;
- numbers are doubles: ``1.0`` is ``1``, ``1e21`` is ``1e+21``, ``1e-7`` is
  ``1e-7``, integers beyond 2**53 lose precision as they would in JavaScript,
  NaN and the infinities are ``null``;
- object keys that are array indices ("0", "7", ...) come first, ascending, as
  JavaScript orders them; the others keep their order.

Lengths count Unicode code points.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

__all__ = ["js_number", "js_stringify", "summarize"]

_ANSWER_CHARS = 80
_JSON_CHARS = 100
_VALUE_CHARS = 2000  # a value written inside a summary (sql_matches...) is cut here
_MAX_SAFE_INTEGER = 2**53
_MAX_ARRAY_INDEX = 2**32 - 2
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\ud800-\udfff]')


def summarize(data: Any) -> str:
    """The ``output_summary`` of a successful call that answered ``data`` (rules 1-5)."""
    if isinstance(data, dict):
        if "sql_matches" in data:
            matches = _value(data, "sql_matches")
            return f"hybrid: {matches} sql → {_value(data, 'vector_reranked')} results"
        rows = data.get("rows")
        if isinstance(rows, list):
            count = data.get("row_count")
            if isinstance(count, int | float) and not isinstance(count, bool) and count != 0:
                return f"{js_number(count)} rows"
            return f"{len(rows)} rows"
        answer = data.get("answer")
        if isinstance(answer, str) and answer:
            return f"answer: {answer[:_ANSWER_CHARS]}..."
        sources = data.get("sources")
        if isinstance(sources, list):
            return f"{len(sources)} sources"
    return js_stringify(data, _JSON_CHARS)


def js_stringify(value: Any, limit: int | None = None) -> str:
    """``JSON.stringify(value)``, cut to its first ``limit`` code points when given.

    With a limit, writing stops as soon as the limit is reached, so a huge value
    costs no more than its first ``limit`` characters.
    """
    if limit is None:
        return "".join(_parts(value))
    pieces: list[str] = []
    size = 0
    for piece in _parts(value):
        pieces.append(piece)
        size += len(piece)
        if size >= limit:
            break
    return "".join(pieces)[:limit]


def js_number(value: int | float) -> str:
    """A JSON number as JavaScript writes it once parsed into a double."""
    if isinstance(value, int):
        if -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
            return str(value)
        try:
            value = float(value)
        except OverflowError:  # JSON.parse gives Infinity, which JSON.stringify writes null
            return "null"
    if not math.isfinite(value):
        return "null"
    if value == 0:
        return "0"  # and -0 too
    sign = "-" if value < 0 else ""
    _, digit_tuple, exponent = Decimal(repr(abs(value))).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    return sign + _place_point(digits, exponent + len(digits))


def _place_point(digits: str, point: int) -> str:
    """ECMAScript Number::toString: ``0.digits × 10**point``, written plainly or in e-notation."""
    count = len(digits)
    if count <= point <= 21:
        return digits + "0" * (point - count)
    if 0 < point <= 21:
        return f"{digits[:point]}.{digits[point:]}"
    if -6 < point <= 0:
        return f"0.{'0' * -point}{digits}"
    power = point - 1
    mantissa = digits if count == 1 else f"{digits[0]}.{digits[1:]}"
    return f"{mantissa}e{'+' if power >= 0 else '-'}{abs(power)}"


def _value(data: dict[str, Any], key: str) -> str:
    return js_stringify(data[key], _VALUE_CHARS) if key in data else "?"


def _quote(text: str) -> str:
    return '"' + _NEEDS_ESCAPE.sub(_escape, text) + '"'


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _ESCAPES.get(char) or f"\\u{ord(char):04x}"


def _is_array_index(key: str) -> bool:
    if key == "0":
        return True
    return key.isascii() and key.isdigit() and key[0] != "0" and int(key) <= _MAX_ARRAY_INDEX


def _js_order(obj: dict[str, Any]) -> list[tuple[str, Any]]:
    """Keys in JavaScript's property order: array indices ascending, then the rest."""
    indices = [key for key in obj if _is_array_index(key)]
    if not indices:
        return list(obj.items())
    indices.sort(key=int)
    rest = [(key, value) for key, value in obj.items() if not _is_array_index(key)]
    return [(key, obj[key]) for key in indices] + rest


def _parts(value: Any) -> Iterator[str]:
    if value is None or value is True or value is False:
        yield "null" if value is None else ("true" if value else "false")
    elif isinstance(value, str):
        yield _quote(value)
    elif isinstance(value, int | float):
        yield js_number(value)
    elif isinstance(value, list | tuple):
        yield "["
        for index, item in enumerate(value):
            if index:
                yield ","
            yield from _parts(item)
        yield "]"
    elif isinstance(value, dict):
        yield "{"
        for index, (key, item) in enumerate(_js_order(value)):
            yield f",{_quote(str(key))}:" if index else f"{_quote(str(key))}:"
            yield from _parts(item)
        yield "}"
    else:
        raise TypeError(f"not a JSON value: {type(value).__name__}")
