"""The row formats this plugin registers (``op``, ``overseer_correction``) and how lines decode.

A row format, as registered through ``observer_register_row_formats``, is a
callable taking one parsed JSON row and returning an :class:`~observer_core.Op`
(raising ``ValueError`` naming the field when the row does not map). The tail
turns each into a :class:`LineFormat`, which decodes raw line bytes: a whole
block of lines at once when every line maps (the fast path), else line by line
so the bad ones can be skipped and reported. A format may offer its own
``line_format(max_field_bytes)`` for a faster block decoder, as ``op`` does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Protocol

import msgspec
from msgspec import Meta

from observer_core import (
    EventDecoder,
    InvalidEvent,
    Op,
    now_timestamp,
    parse_timestamp,
    split_lines,
)

__all__ = [
    "CORRECTION_SUMMARY_CHARS",
    "LineFormat",
    "OpFormat",
    "line_format_for",
    "overseer_correction",
]

CORRECTION_SUMMARY_CHARS = 200


class LineFormat(Protocol):
    """Decodes lines of a file (bytes, without their newline) into ops."""

    def decode_block(self, block: bytes) -> list[Op] | None:
        """Every op of ``block`` (whole lines, each ending with a newline; empty
        ones ignored), or ``None`` to have the lines decoded one by one (when
        one does not map, or needs more than the fast path)."""

    def decode_line(self, line: bytes) -> Op:
        """One line's op; raises ``ValueError`` naming the problem when it does not map."""


def _lines_of(block: bytes) -> list[bytes]:
    """The lines of ``block`` without their newlines (``block`` ends with one).

    Not ``Decoder.decode_lines``: that reads whitespace-separated values, so a
    value spread over two lines, or two values on one line, would pass as ops.
    A line holding only spaces fails to decode and takes the line-by-line path,
    where blank lines are ignored.
    """
    lines = block.split(b"\n")
    lines.pop()
    return lines


_UNDECODABLE = (msgspec.MsgspecError, UnicodeDecodeError, RecursionError)
"""What msgspec raises on a bad line: its own errors, a string not UTF-8, deep nesting."""


class OpFormat:
    """The ``op`` format: each row is an op as in CONTRACT §1, with the required fields present.

    Decoded by :class:`~observer_core.EventDecoder`, the authority on what an op is:
    a block of complete rows takes its fast path (straight into ops, then a few
    checks over the whole block); otherwise the lines are decoded one by one.
    """

    def __init__(self, max_field_bytes: int = 65536) -> None:
        self._events = EventDecoder(max_field_bytes=max_field_bytes, require_all=True)

    def __call__(self, row: Any) -> Op:
        return self._events.convert(row)

    def line_format(self, max_field_bytes: int) -> OpFormat:
        return OpFormat(max_field_bytes)

    def decode_block(self, block: bytes) -> list[Op] | None:
        return self._events.decode_complete(split_lines(block))

    def decode_line(self, line: bytes) -> Op:
        return self._events.decode(line)


class _MappedLines:
    """A :class:`LineFormat` for any row format: parse the JSON, then map the row."""

    def __init__(self, name: str, mapper: Callable[[Any], Op]) -> None:
        self._name = name
        self._map = mapper
        self._json = msgspec.json.Decoder()

    def decode_block(self, block: bytes) -> list[Op] | None:
        decode, mapper = self._json.decode, self._map
        try:
            ops = [mapper(decode(line)) for line in _lines_of(block) if line]
        except Exception:  # any bad row sends the block down the line-by-line path
            return None
        return ops if all(isinstance(op, Op) for op in ops) else None

    def decode_line(self, line: bytes) -> Op:
        try:
            row = self._json.decode(line)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise InvalidEvent.unreadable(exc) from None
        op = self._map(row)
        if not isinstance(op, Op):
            raise InvalidEvent(f"row format {self._name!r} returned {type(op).__name__}, not an Op")
        return op


def line_format_for(name: str, mapper: Callable[[Any], Op], max_field_bytes: int) -> LineFormat:
    """The line decoder for a registered row format (its own fast one when it offers it)."""
    make = getattr(mapper, "line_format", None)
    if callable(make):
        made: LineFormat = make(max_field_bytes)
        return made
    return _MappedLines(name, mapper)


# -- overseer_correction --------------------------------------------------------


class _Usage(msgspec.Struct):
    latency_ms: Annotated[int, Meta(ge=0)] | Annotated[float, Meta(ge=0)] | None = None


class _CorrectionRow(msgspec.Struct):
    """A row of the gateway's overseer corrections file; ``null`` means absent."""

    created_at: str | None = None
    model: str | None = None
    task_class: str | None = None
    reason: str | None = None
    usage: _Usage | None = None
    correction: str | None = None
    sig_hash: str | None = None
    applied_at_turn: int | None = None


_MSGSPEC_AT = re.compile(r"^(.*?) - at `\$\.?([^`]*)`$", re.S)


def _field_error(exc: msgspec.ValidationError) -> InvalidEvent:
    """msgspec's ``Expected `str`, got `int` - at `$.model``` as ``model: Expected `str`, ...``."""
    found = _MSGSPEC_AT.match(str(exc))
    if found is None:
        return InvalidEvent(str(exc))
    message, path = found.groups()
    return InvalidEvent(f"{path}: {message.replace(' | null', '')}")


def overseer_correction(row: Any) -> Op:
    """Map one row of the overseer corrections file to an op (CONTRACT §6).

    ``model``, ``task_class``, ``reason``, ``correction``, ``sig_hash`` and
    ``created_at`` must be strings, ``applied_at_turn`` an integer and
    ``usage.latency_ms`` a number ≥ 0, each when present; ``null`` is absent.
    """
    try:
        parsed = msgspec.convert(row, _CorrectionRow)
    except msgspec.ValidationError as exc:
        raise _field_error(exc) from None
    timestamp = now_timestamp()
    if parsed.created_at is not None:
        try:
            timestamp = parse_timestamp(parsed.created_at)
        except ValueError as exc:
            raise InvalidEvent(f"created_at: {exc}") from None
    latency = parsed.usage.latency_ms if parsed.usage is not None else None
    copied = {
        name: value
        for name in ("sig_hash", "task_class", "correction", "applied_at_turn")
        if (value := getattr(parsed, name)) is not None
    }
    return Op(
        timestamp=timestamp,
        endpoint=f"overseer:{_or(parsed.model, 'gpt-oss:120b')}",
        input_summary=f"{_or(parsed.task_class, '?')}: {_or(parsed.reason, 'escalation')}",
        success=True,
        duration_ms=latency if latency is not None else 0,
        output_summary=_or(parsed.correction, "")[:CORRECTION_SUMMARY_CHARS],
        source="overseer_correction",
        **copied,
    )


def _or(value: str | None, default: str) -> str:
    return default if value is None else value
