"""Logging setup for the daemon: text or JSON lines on stderr.

Every line is rendered by :func:`render_message`, whatever logged it (CONTRACT §11.4): a
``str`` argument is cut to :data:`MAX_ARG_CHARS` characters (other objects, an exception
say, to as many of their ``str``/``repr``), control characters (newline, ESC, ...) are
escaped, URL passwords masked, and the whole message cut to :data:`MAX_MESSAGE_CHARS`. So a
client string can neither forge a line nor make one unbounded, and no call site can forget.
A traceback keeps its lines, but each exception's own message in it is treated the same.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from .records import format_timestamp
from .redact import redact_text

__all__ = [
    "MAX_ARG_CHARS",
    "MAX_MESSAGE_CHARS",
    "escape_controls",
    "render_message",
    "setup_logging",
]

MAX_ARG_CHARS = 200
"""An interpolated argument of a log line is cut to this many characters (before escaping)."""
MAX_MESSAGE_CHARS = 4096
"""A whole log message (escaped) is cut to this many characters."""
_CUT_MARK = "…"
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_PLAIN = (int, float, bool, type(None))


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control character (C0, DEL, C1, line/paragraph separators)
    written as an escape: ``\\n``, ``\\x1b``, ``\\u2028``."""
    return _CONTROL.sub(_escaped, text)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + _CUT_MARK


class _Cut:
    """An argument that is not a plain value, shown through a cut ``str`` / ``repr``."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return _cut(str(self.value), MAX_ARG_CHARS)

    def __repr__(self) -> str:
        return _cut(repr(self.value), MAX_ARG_CHARS)


def _bounded(arg: object) -> object:
    if isinstance(arg, str):
        return _cut(arg, MAX_ARG_CHARS)
    if isinstance(arg, _PLAIN):
        return arg
    return _Cut(arg)


def render_message(record: logging.LogRecord) -> str:
    """The record's message, bounded and escaped as the module says."""
    args: Any = record.args
    if isinstance(args, tuple):
        args = tuple(map(_bounded, args))
    elif isinstance(args, Mapping):
        args = {key: _bounded(value) for key, value in args.items()}
    message = str(record.msg)
    if args:
        try:
            message = message % args
        except (TypeError, ValueError):
            message = f"{message} {args!r}"
    message = escape_controls(redact_text(message))
    return _cut(message, MAX_MESSAGE_CHARS)


class _BoundedFormatter(logging.Formatter):
    def formatException(self, ei: Any) -> str:
        """The traceback, each exception's message (which may quote a client) bounded and
        escaped like a message: the frames' lines are ours, the messages may not be."""
        value = ei[1]
        if not isinstance(value, BaseException):
            return super().formatException(ei)
        described = traceback.TracebackException.from_exception(value)
        pending, seen = [described], set()
        while pending:
            item = pending.pop()
            if id(item) in seen:
                continue
            seen.add(id(item))
            text = getattr(item, "_str", None)
            if isinstance(text, str):
                bounded = escape_controls(redact_text(_cut(text, MAX_MESSAGE_CHARS)))
                setattr(item, "_str", bounded)  # noqa: B010 (private: no public setter)
            chained = (item.__cause__, item.__context__, *(getattr(item, "exceptions", None) or ()))
            pending.extend(link for link in chained if link is not None)
        return "".join(described.format()).rstrip("\n")


class _TextFormatter(_BoundedFormatter):
    def format(self, record: logging.LogRecord) -> str:
        moment = format_timestamp(datetime.fromtimestamp(record.created, UTC))
        line = f"{moment} {record.levelname:<7} {record.name}: {render_message(record)}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(_BoundedFormatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": format_timestamp(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": render_message(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry).decode()


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Send every log record at ``level`` or above to stderr in ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(max(root.level, logging.WARNING))
    logging.getLogger("httpcore").setLevel(max(root.level, logging.WARNING))
