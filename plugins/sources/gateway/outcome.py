"""How one gateway call becomes an op (CONTRACT §6), shared by the Python API and the proxy.

- ``success``: HTTP 2xx and a JSON body whose ``error`` is absent or null (the
  proxy also counts a 2xx reply that is not JSON as a success);
- ``error``: the body's ``error`` (written as JSON when it is not a string), else
  ``"HTTP {status}"`` for a non-2xx, else the transport error;
- ``output_summary``: :func:`summarize` of the body, the first 100 characters
  of a body that is not JSON, or ``"ERROR: {error}"`` on failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from observer_core import UNSET, Op, now_timestamp

from .summarize import js_stringify, summarize

__all__ = ["Outcome", "make_op", "parse_json", "text_outcome"]

SOURCE = "mcp"
TEXT_CHARS = 100
FIELD_CHARS = 2000
"""Free text in an op (error, endpoint, description) is cut to this many characters,
well under the daemon's ``max_field_bytes``, so one long message cannot get a batch refused."""


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not JSON")


def parse_json(body: bytes) -> tuple[bool, Any]:
    """``(True, value)`` when ``body`` is one JSON value, else ``(False, None)``.

    Strict as ``JSON.parse``: ``NaN`` and ``Infinity`` are not JSON.
    """
    try:
        return True, json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, _NotJson
        return False, None


def _clip(text: str) -> str:
    return text[:FIELD_CHARS]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a call came to: ``success``, ``output_summary`` and ``error`` (None when none)."""

    success: bool
    output_summary: str
    error: str | None = None

    @classmethod
    def failed(cls, error: str) -> Outcome:
        error = _clip(error)
        return cls(False, f"ERROR: {error}", error)

    @classmethod
    def of_json(cls, status: int, data: Any) -> Outcome:
        """A reply whose body is the JSON value ``data``."""
        if isinstance(data, dict) and data.get("error") is not None:
            error = data["error"]
            return cls.failed(error if isinstance(error, str) else js_stringify(error, FIELD_CHARS))
        if not 200 <= status < 300:
            return cls.failed(f"HTTP {status}")
        return cls(True, summarize(data))

    @classmethod
    def of_text(cls, status: int, text: str) -> Outcome:
        """A reply whose body is not JSON (an SSE stream, text): ``text`` is its beginning."""
        if not 200 <= status < 300:
            return cls.failed(f"HTTP {status}")
        return cls(True, text[:TEXT_CHARS])

    @classmethod
    def of_body(cls, status: int, body: bytes) -> Outcome:
        """A complete body: JSON when it parses as JSON, else text."""
        is_json, data = parse_json(body)
        if is_json:
            return cls.of_json(status, data)
        return text_outcome(status, body)


def text_outcome(status: int, body: bytes) -> Outcome:
    """A complete body that is not JSON: summarised by its first characters."""
    return Outcome.of_text(status, body[: TEXT_CHARS * 4].decode("utf-8", "replace"))


def make_op(
    endpoint: str,
    input_summary: str,
    duration_ms: float,
    outcome: Outcome,
    attributes: dict[str, str | int | float | bool] | None = None,
) -> Op:
    """The op of one call that ended now."""
    return Op(
        timestamp=now_timestamp(),
        endpoint=_clip(endpoint),
        input_summary=_clip(input_summary),
        success=outcome.success,
        duration_ms=round(max(duration_ms, 0.0), 3),
        output_summary=outcome.output_summary,
        error=UNSET if outcome.error is None else outcome.error,
        source=SOURCE,
        attributes=attributes if attributes else UNSET,
    )
