"""The records observer-core moves: observed ops and the findings analyzers emit.

An :class:`Op` is one observed operation (CONTRACT §1). Unset optional fields
are :data:`UNSET` and are omitted from JSON output, never written as ``null``.
A :class:`Finding` is what an analyzer emits: a kind and its payload (§2).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any, Final, TypeAlias

import msgspec
from msgspec import UNSET, Meta, UnsetType

__all__ = [
    "UNSET",
    "AttributeValue",
    "Finding",
    "Op",
    "Record",
    "UnsetType",
    "format_timestamp",
    "is_failure",
    "now_timestamp",
    "parse_timestamp",
]

AttributeValue: TypeAlias = str | int | float | bool


MAX_ID_CHARS: Final = 128
MAX_ATTRIBUTES: Final = 64


class Op(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False, forbid_unknown_fields=True):
    """One observed operation. Field names and order are the wire format.

    The ``Meta`` constraints are the contract's input rules: msgspec checks them when
    it decodes an op from JSON, not when a plugin builds one. ``gc=False``: an op holds
    only strings, numbers and a dict of them, so it cannot be part of a reference cycle,
    and the garbage collector need not track the thousands in the ring.
    ``forbid_unknown_fields``: JSON with a field an op lacks leaves the decoder's fast
    path (straight into Op) for the general one, which ignores the field and counts it
    (:class:`~observer_core.ingest.EventDecoder`); a clean event pays nothing for that.
    """

    timestamp: str
    endpoint: str
    input_summary: str
    success: bool
    duration_ms: Annotated[int, Meta(ge=0)] | Annotated[float, Meta(ge=0)]
    output_summary: str
    error: str | UnsetType = UNSET
    source: Annotated[str, Meta(min_length=1)]
    staffer_id: str | UnsetType = UNSET
    sig_hash: str | UnsetType = UNSET
    event_kind: str | UnsetType = UNSET
    role: str | UnsetType = UNSET
    city: str | UnsetType = UNSET
    state: str | UnsetType = UNSET
    count: int | UnsetType = UNSET
    rescue_attempted: bool | UnsetType = UNSET
    rescue_succeeded: bool | UnsetType = UNSET
    task_class: str | UnsetType = UNSET
    correction: str | UnsetType = UNSET
    applied_at_turn: int | UnsetType = UNSET
    id: Annotated[str, Meta(max_length=MAX_ID_CHARS)] | UnsetType = UNSET
    attributes: (
        Annotated[dict[str, AttributeValue], Meta(max_length=MAX_ATTRIBUTES)] | UnsetType
    ) = UNSET


class Finding(msgspec.Struct, frozen=True):
    """What an analyzer emits: a registered ``kind`` and its JSON-encodable ``data``."""

    kind: str
    data: Any


Record: TypeAlias = Op | Finding


def is_failure(op: Op) -> bool:
    """A failed op, unless its client left (``attributes.client_left``, SECURITY §11.5):
    a user pressing Stop is not the gateway failing."""
    if op.success:
        return False
    return op.attributes is UNSET or op.attributes.get("client_left") is not True


def format_timestamp(moment: datetime) -> str:
    """Write ``moment`` as JavaScript's ``toISOString`` does: UTC, milliseconds, ``Z``."""
    utc = moment.astimezone(UTC) if moment.tzinfo is not None else moment
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
        f"{utc.second:02d}.{utc.microsecond // 1000:03d}Z"
    )


_second: tuple[int, str] = (-1, "")
"""The last whole second :func:`now_timestamp` formatted, and its text up to the dot."""


def now_timestamp() -> str:
    """The current time in the record's timestamp format (the second's text is cached)."""
    global _second
    now = time.time()
    second = int(now)
    cached, prefix = _second
    if second != cached:
        prefix = format_timestamp(datetime.fromtimestamp(second, UTC))[:-4]
        _second = (second, prefix)
    return f"{prefix}{int((now - second) * 1000):03d}Z"


def parse_timestamp(text: str) -> str:
    """Check an RFC 3339 timestamp and return it in the record's format.

    No offset means UTC; another offset is converted to UTC. Raises
    ``ValueError`` naming the problem when ``text`` is not a timestamp or cannot
    be expressed in UTC.
    """
    if len(text) < 19 or text[10] not in "Tt ":
        raise ValueError("expected an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00.000Z")
    candidate = text[:-1] + "+00:00" if text[-1] in "Zz" else text
    try:
        moment = datetime.fromisoformat(candidate)
    except ValueError:
        raise ValueError("expected an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00.000Z") from None
    if moment.tzinfo is not None:
        try:
            moment = moment.astimezone(UTC)
        except OverflowError:
            raise ValueError("timestamp is out of range once converted to UTC") from None
    return format_timestamp(moment)
