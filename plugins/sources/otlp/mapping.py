"""Spans to ops (contract §13.1): pure functions over an encoding-neutral span.

The protobuf and JSON decoders both produce :class:`Span` values (ids as lower-case hex,
times in nanoseconds, only the attributes in :attr:`Mapping.wanted`), so the rules of the
mapping table live here once. :func:`map_span` returns an :class:`Op`, ``None`` for a
span that is not a GenAI span (counted as ignored), or raises :class:`Unmappable`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final, TypeAlias

import msgspec

from observer_core import UNSET, Op
from observer_core.genai import INPUT_TOKENS, OUTPUT_TOKENS, REQUEST_MODEL, RESPONSE_MODEL

__all__ = [
    "SIZE_MARGIN",
    "STATUS_ERROR",
    "Mapping",
    "Span",
    "SpanValue",
    "Unmappable",
    "map_span",
]

SpanValue: TypeAlias = "str | int | float | bool | list[str | int | float | bool]"
"""An attribute value as the decoders give it: a scalar, or an array of scalars."""

SIZE_MARGIN: Final = 64
"""What the mapping adds to a span's strings at most (``"ERROR: "``, a space)."""

STATUS_ERROR: Final = 2
"""``Status.code`` of a failed span (``STATUS_CODE_ERROR``)."""

# Attributes read by the mapping table, under every name a span may use.
OPERATION: Final = "gen_ai.operation.name"
PROVIDER: Final = "gen_ai.provider.name"
SYSTEM: Final = "gen_ai.system"  # the older name of gen_ai.provider.name
PROMPT_TOKENS: Final = "gen_ai.usage.prompt_tokens"  # older names of the two above
COMPLETION_TOKENS: Final = "gen_ai.usage.completion_tokens"
FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
OI_KIND: Final = "openinference.span.kind"
OI_MODEL: Final = "llm.model_name"
OI_PROMPT_TOKENS: Final = "llm.token_count.prompt"
OI_COMPLETION_TOKENS: Final = "llm.token_count.completion"
ERROR_TYPE: Final = "error.type"
SIG_HASH: Final = "observer.sig_hash"
STAFFER_ATTRIBUTES: Final = ("gen_ai.agent.name", "gen_ai.agent.id", "enduser.id")

_READ: Final = frozenset(
    {
        OPERATION,
        PROVIDER,
        SYSTEM,
        REQUEST_MODEL,
        RESPONSE_MODEL,
        INPUT_TOKENS,
        OUTPUT_TOKENS,
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
        FINISH_REASONS,
        OI_KIND,
        OI_MODEL,
        OI_PROMPT_TOKENS,
        OI_COMPLETION_TOKENS,
        ERROR_TYPE,
        SIG_HASH,
        *STAFFER_ATTRIBUTES,
    }
)
_GENAI_MARKERS: Final = (OPERATION, PROVIDER, SYSTEM)
_OI_GENAI_KINDS: Final = frozenset({"LLM", "EMBEDDING"})
_HEX: Final = re.compile(r"[0-9a-f]*").fullmatch
_IDS: Final = re.compile(r"[0-9a-f]{48}").fullmatch
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16


class Unmappable(ValueError):
    """A span that cannot become an op; ``str()`` says why (partial_success.error_message)."""


class Span(msgspec.Struct, gc=False):
    """One span, whatever its encoding. Ids are lower-case hex as sent (checked by the
    mapping); ``status_code`` is OTLP's (0 unset, 1 ok, 2 error). A Struct, not a
    dataclass: made for every span, in a third of the time (``gc=False``: it holds
    strings, numbers and a dict of them, no cycle)."""

    name: str
    trace_id: str
    span_id: str
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str
    attributes: dict[str, SpanValue]


@dataclass(frozen=True, slots=True)
class Mapping:
    """The source's mapping keys, and the field size limit of ``[observer]``."""

    all_spans: bool = False
    source: str | None = None
    staffer_attribute: str | None = None
    derive_sig_hash: bool = False
    max_field_bytes: int = 65536
    wanted: frozenset[str] = field(init=False)
    """The span attributes the mapping reads: decoders may drop every other one."""

    def __post_init__(self) -> None:
        extra = {self.staffer_attribute} if self.staffer_attribute else set()
        object.__setattr__(self, "wanted", _READ | extra)


def is_genai(attributes: dict[str, SpanValue]) -> bool:
    """A GenAI span: a ``gen_ai.operation.name``, ``gen_ai.provider.name`` or
    ``gen_ai.system`` attribute, or an OpenInference ``LLM`` / ``EMBEDDING`` span."""
    for key in _GENAI_MARKERS:
        if key in attributes:
            return True
    return attributes.get(OI_KIND) in _OI_GENAI_KINDS


def map_span(
    span: Span, service_name: str | None, mapping: Mapping, check_sizes: bool = True
) -> Op | None:
    """The op of one span (the table of §13.1); None when it is not a GenAI span and
    ``all_spans`` is off. Raises :class:`Unmappable` naming the problem.

    ``check_sizes`` may be False when the request body was shorter than
    ``max_field_bytes`` less :data:`SIZE_MARGIN`: no field can then be too long."""
    attrs = span.attributes
    get = attrs.get
    if not mapping.all_spans and OPERATION not in attrs and not is_genai(attrs):
        return None
    trace_id, span_id = span.trace_id, span.span_id
    ids = trace_id + span_id
    # One regex over both ids; _check_ids says which one is wrong.
    if len(trace_id) != 32 or len(span_id) != 16 or not _IDS(ids):
        _check_ids(span)
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        _check_ids(span)
    start_ns = span.start_ns
    if start_ns <= 0:
        raise Unmappable("start_time_unix_nano is not set")
    if span.end_ns < start_ns:
        raise Unmappable("end_time_unix_nano is before start_time_unix_nano")

    # This runs for every span: the usual case (a string, a whole number) is read inline,
    # anything else by the helper that handles every case.
    operation = get(OPERATION, "")
    if type(operation) is not str:
        operation = _text(operation)
    request_model = get(REQUEST_MODEL, "")
    if type(request_model) is not str:
        request_model = _text(request_model)
    if not request_model:
        request_model = _text(get(OI_MODEL))
    endpoint = f"{operation} {request_model}" if operation and request_model else span.name
    success = span.status_code != STATUS_ERROR
    error = None
    if not success:
        error = span.status_message or _text(get(ERROR_TYPE))
    input_tokens = get(INPUT_TOKENS)
    if type(input_tokens) is not int or input_tokens < 0:
        input_tokens = _tokens(attrs, INPUT_TOKENS, PROMPT_TOKENS, OI_PROMPT_TOKENS)
    output_tokens = get(OUTPUT_TOKENS)
    if type(output_tokens) is not int or output_tokens < 0:
        output_tokens = _tokens(attrs, OUTPUT_TOKENS, COMPLETION_TOKENS, OI_COMPLETION_TOKENS)
    if input_tokens is not None and output_tokens is not None:
        output_summary = f"{input_tokens} → {output_tokens} tokens"
    else:
        output_summary = _output_summary(attrs, input_tokens, output_tokens, error, success)
    source = mapping.source or service_name or "otlp"
    staffer = get(mapping.staffer_attribute or STAFFER_ATTRIBUTES[0], "")
    if type(staffer) is not str or not staffer:
        staffer = _staffer(attrs, mapping.staffer_attribute)
    sig_hash = get(SIG_HASH, "")
    if type(sig_hash) is not str:
        sig_hash = _text(sig_hash)
    if not sig_hash and mapping.derive_sig_hash and not success:
        error_type = _text(get(ERROR_TYPE))
        if error_type:
            sig_hash = derive_sig_hash(source, endpoint, error_type)
    attributes = _attributes(attrs, request_model, input_tokens, output_tokens)
    attributes["trace_id"] = trace_id
    attributes["span_id"] = span_id
    # One constructor call with every field: UNSET is what an omitted field is.
    op = Op(
        timestamp=_timestamp(start_ns),
        endpoint=endpoint,
        input_summary=span.name,
        success=success,
        duration_ms=round((span.end_ns - start_ns) / 1e6, 3),
        output_summary=output_summary,
        error=error or UNSET,
        source=source,
        staffer_id=staffer or UNSET,
        sig_hash=sig_hash or UNSET,
        id=ids,
        attributes=attributes,
    )
    if check_sizes:
        _check_sizes(op, mapping.max_field_bytes)
    return op


def derive_sig_hash(source: str, endpoint: str, error_type: str) -> str:
    """A stable digest of a failure's source, endpoint and ``error.type``: 16 hex digits
    of the SHA-256 of the three, joined by newlines."""
    text = f"{source}\n{endpoint}\n{error_type}".encode()
    return hashlib.sha256(text).hexdigest()[:16]


def _check_ids(span: Span) -> None:
    """Raise :class:`Unmappable` naming the id that is not hex of its length, or zero."""
    trace_id, span_id = span.trace_id, span.span_id
    if len(trace_id) != 32 or not _HEX(trace_id) or trace_id == _ZERO_TRACE:
        raise Unmappable(f"trace_id {trace_id[:40]!r} is not 16 bytes of hex (not all zero)")
    if len(span_id) != 16 or not _HEX(span_id) or span_id == _ZERO_SPAN:
        raise Unmappable(f"span_id {span_id[:40]!r} is not 8 bytes of hex (not all zero)")


def _text(value: SpanValue | None) -> str:
    """A string attribute as text ("" when absent); a number or bool as written."""
    if type(value) is str:  # the usual case first: this runs several times a span
        return value
    if value is None or isinstance(value, list):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _tokens(attrs: dict[str, SpanValue], *names: str) -> int | None:
    """The first of ``names`` present, as a whole number of tokens (None when absent)."""
    for name in names:
        value = attrs.get(name)
        if value is None:
            continue
        if type(value) is int and value >= 0:  # the usual case, without the checks below
            return value
        if isinstance(value, bool | list):
            raise Unmappable(f"{name}: expected a token count, got {value!r:.40}")
        try:
            count = int(value) if not isinstance(value, float) or value.is_integer() else -1
        except ValueError:
            raise Unmappable(f"{name}: expected a token count, got {value!r:.40}") from None
        if count < 0:
            raise Unmappable(f"{name}: expected a token count, got {value!r:.40}")
        return count
    return None


def _output_summary(
    attrs: dict[str, SpanValue],
    input_tokens: int | None,
    output_tokens: int | None,
    error: str | None,
    success: bool,
) -> str:
    if input_tokens is not None or output_tokens is not None:
        shown = ["?" if count is None else str(count) for count in (input_tokens, output_tokens)]
        return f"{shown[0]} → {shown[1]} tokens"
    reasons = attrs.get(FINISH_REASONS)
    if isinstance(reasons, list) and reasons:
        return ", ".join(map(str, reasons))
    if isinstance(reasons, str) and reasons:
        return reasons
    if success:
        return "ok"
    return f"ERROR: {error}" if error else "ERROR"


def _staffer(attrs: dict[str, SpanValue], override: str | None) -> str:
    for name in (override,) if override else STAFFER_ATTRIBUTES:
        value = _text(attrs.get(name))
        if value:
            return value
    return ""


def _attributes(
    attrs: dict[str, SpanValue],
    request_model: str,
    input_tokens: int | None,
    output_tokens: int | None,
) -> dict[str, str | int | float | bool]:
    """The op's attributes, under the current names only."""
    out: dict[str, str | int | float | bool] = {}
    provider = attrs.get(PROVIDER, "")
    if type(provider) is not str:
        provider = _text(provider)
    if not provider:
        provider = attrs.get(SYSTEM, "")
        if type(provider) is not str:
            provider = _text(provider)
    if provider:
        out[PROVIDER] = provider
    if request_model:
        out[REQUEST_MODEL] = request_model
    response_model = attrs.get(RESPONSE_MODEL, "")
    if type(response_model) is not str:
        response_model = _text(response_model)
    if response_model:
        out[RESPONSE_MODEL] = response_model
    if input_tokens is not None:
        out[INPUT_TOKENS] = input_tokens
    if output_tokens is not None:
        out[OUTPUT_TOKENS] = output_tokens
    return out


@lru_cache(maxsize=256)
def _second(seconds: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.`` of a Unix second (spans of one batch share a few)."""
    try:
        moment = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise Unmappable("start_time_unix_nano is out of range") from None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.")


def _timestamp(nanos: int) -> str:
    """A Unix time in nanoseconds as the record's timestamp (UTC, milliseconds)."""
    seconds, rest = divmod(nanos, 1_000_000_000)
    return _second(seconds) + _MILLIS[rest // 1_000_000]


_MILLIS: Final = tuple(f"{millis:03d}Z" for millis in range(1000))
"""The end of a timestamp for each millisecond, made once rather than formatted each time."""


def _check_sizes(op: Op, limit: int) -> None:
    """Refuse a string longer than ``max_field_bytes``, as an event's would be (§1)."""
    for name in ("endpoint", "input_summary", "output_summary", "error", "source", "staffer_id"):
        _check_size(name, getattr(op, name), limit)
    _check_size("sig_hash", op.sig_hash, limit)
    for key, value in (op.attributes or {}).items():
        _check_size(f"attributes.{key}", value, limit)


def _check_size(name: str, value: object, limit: int) -> None:
    if isinstance(value, str) and len(value) * 4 > limit and len(value.encode()) > limit:
        raise Unmappable(f"{name}: string longer than max_field_bytes ({limit})")
