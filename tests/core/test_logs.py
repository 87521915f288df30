"""The one renderer of log lines (CONTRACT §11.4), in-process: what each part of a record
becomes. (test_hostile_bounds.py checks the same against a running daemon.)"""

from __future__ import annotations

import json
import logging
import sys

import pytest

from observer_core.logs import MAX_MESSAGE_CHARS, _JsonFormatter, _TextFormatter

FORGED = "\n2026-01-01T00:00:00.000Z INFO    observer_core: shutdown complete\x1b[2J"


def record(msg: str, *args: object, error: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(error), error, error.__traceback__) if error is not None else None
    return logging.LogRecord("t", logging.ERROR, __file__, 1, msg, args or None, exc_info)


def raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as caught:
        return caught


@pytest.mark.parametrize("formatter", [_TextFormatter(), _JsonFormatter()], ids=["text", "json"])
def test_arguments_are_cut_and_escaped_messages_bounded(formatter: logging.Formatter) -> None:
    def message(rec: logging.LogRecord) -> str:
        line = formatter.format(rec)
        return json.loads(line)["message"] if line.startswith("{") else line.split(": ", 1)[1]

    assert message(record("sig=%s n=%d", "x" * 500 + FORGED, 7)) == "sig=" + "x" * 199 + "… n=7"
    assert message(record("sig=%s", "a" + FORGED)) == (
        "sig=a\\n2026-01-01T00:00:00.000Z INFO    observer_core: shutdown complete\\x1b[2J"
    )
    assert message(record("%r", ValueError("v" * 500))).endswith("v…")
    assert len(message(record("p" * 10_000))) == MAX_MESSAGE_CHARS
    assert message(record("to %s", "http://u:hunter2@h/")) == "to http://u:********@h/"
    assert message(record("%(a)s", {"a": "b" * 300})) == "b" * 199 + "…"
    assert message(record("no placeholder", "arg")) == "no placeholder ('arg',)"


def test_a_traceback_keeps_its_lines_but_not_a_forged_one() -> None:
    cause = raised(KeyError("k" + FORGED))
    error = raised(ValueError("bad " + "y" * 5000 + FORGED))
    error.__cause__ = cause
    text = _TextFormatter().format(record("failed", error=error))
    lines = text.splitlines()
    assert lines[0].endswith(" ERROR   t: failed")
    assert "Traceback (most recent call last):" in lines
    assert not any(line.startswith("2026-01-01T") for line in lines)
    assert "\x1b" not in text and max(map(len, lines)) <= MAX_MESSAGE_CHARS + 20
    assert lines[-1].startswith("ValueError: bad yyy") and lines[-1].endswith("…")
    assert any(line.startswith("KeyError: ") and "\\x1b[2J" in line for line in lines)
    entry = json.loads(_JsonFormatter().format(record("failed", error=error)))
    assert "\n2026-01-01T" not in entry["exception"] and "\x1b" not in entry["exception"]
    assert sys.exc_info() == (None, None, None)
