"""The ``application/json`` encoding (OTLP's JSON: lowerCamelCase keys, ids as hex
strings, 64-bit integers as strings or numbers, enums as numbers), decoded with msgspec.

It needs no protobuf classes: OTLP's JSON differs from protobuf's own JSON mapping (hex,
not base64, ids), so ``google.protobuf.json_format`` would not read it as it is anyway.
"""

from __future__ import annotations

from collections.abc import Collection

import msgspec

from .mapping import Span, SpanValue
from .wire import Codec, InvalidBody, ResourceSpans

__all__ = ["CODEC"]


class _AnyValue(msgspec.Struct, rename="camel"):
    string_value: str | None = None
    bool_value: bool | None = None
    int_value: int | str | None = None
    double_value: float | str | None = None
    array_value: _ArrayValue | None = None


class _ArrayValue(msgspec.Struct):
    values: list[_AnyValue] = []


class _KeyValue(msgspec.Struct):
    key: str
    value: _AnyValue | None = None


class _Status(msgspec.Struct):
    code: int | str = 0
    message: str = ""


class _Span(msgspec.Struct, rename="camel"):
    trace_id: str = ""
    span_id: str = ""
    name: str = ""
    start_time_unix_nano: int | str = 0
    end_time_unix_nano: int | str = 0
    attributes: list[_KeyValue] = []
    status: _Status | None = None


class _ScopeSpans(msgspec.Struct):
    spans: list[_Span] = []


class _Resource(msgspec.Struct):
    attributes: list[_KeyValue] = []


class _ResourceSpans(msgspec.Struct, rename="camel"):
    resource: _Resource | None = None
    scope_spans: list[_ScopeSpans] = []


class _Request(msgspec.Struct, rename="camel"):
    resource_spans: list[_ResourceSpans] = []


_decoder = msgspec.json.Decoder(_Request)
_STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


def _int64(value: int | str, where: str) -> int:
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except ValueError:
        raise InvalidBody(f"{where}: expected an integer, got {value[:40]!r}") from None


def _scalar(value: _AnyValue, where: str) -> str | int | float | bool | None:
    if value.string_value is not None:
        return value.string_value
    if value.int_value is not None:
        return _int64(value.int_value, where)
    if value.double_value is not None:
        try:
            return float(value.double_value)
        except ValueError:
            raise InvalidBody(f"{where}: expected a number") from None
    return value.bool_value


def _value(value: _AnyValue, where: str) -> SpanValue | None:
    if value.array_value is not None:
        items = (_scalar(item, where) for item in value.array_value.values)
        return [item for item in items if item is not None]
    return _scalar(value, where)


def _status_code(code: int | str) -> int:
    if isinstance(code, int):
        return code
    if code in _STATUS_NAMES:
        return _STATUS_NAMES[code]
    raise InvalidBody(f"status.code: unknown status code {code[:40]!r}")


def decode(body: bytes, wanted: Collection[str]) -> list[ResourceSpans]:
    """An OTLP JSON ``ExportTraceServiceRequest`` as neutral spans."""
    try:
        request = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidBody(f"body is not an OTLP JSON ExportTraceServiceRequest: {exc}") from None
    out: list[ResourceSpans] = []
    for resource_spans in request.resource_spans:
        service_name = None
        for pair in resource_spans.resource.attributes if resource_spans.resource else ():
            if pair.key == "service.name" and pair.value and pair.value.string_value:
                service_name = pair.value.string_value
        spans = []
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes: dict[str, SpanValue] = {}
                for pair in span.attributes:
                    if pair.key in wanted and pair.value is not None:
                        value = _value(pair.value, f"attribute {pair.key[:40]}")
                        if value is not None:
                            attributes[pair.key] = value
                status = span.status or _Status()
                spans.append(
                    Span(
                        span.name,
                        span.trace_id.lower(),
                        span.span_id.lower(),
                        _int64(span.start_time_unix_nano, "startTimeUnixNano"),
                        _int64(span.end_time_unix_nano, "endTimeUnixNano"),
                        _status_code(status.code),
                        status.message,
                        attributes,
                    )
                )
        out.append((service_name, spans))
    return out


_encode = msgspec.json.Encoder().encode


def response(rejected: int, message: str) -> bytes:
    """An ``ExportTraceServiceResponse`` in OTLP JSON (``rejectedSpans`` an int64 string)."""
    if not rejected:
        return b"{}"
    partial = {"rejectedSpans": str(rejected), "errorMessage": message}
    return _encode({"partialSuccess": partial})


def status(code: int, message: str) -> bytes:
    """A ``google.rpc.Status`` in JSON."""
    return _encode({"code": code, "message": message})


CODEC = Codec("application/json", decode, response, status)
