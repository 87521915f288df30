"""The ``application/x-protobuf`` encoding, with the classes of ``opentelemetry-proto``.

Imported only when an ``otlp`` source starts: the package comes with the ``[otlp]`` extra.
The classes parse (and so check) every request. A request in the canonical encoding
(what upb itself writes, as SDKs do) is then read by :mod:`.pbfast`, at a fraction of
the cost of reading it through the classes' objects; any other is read through them
(:func:`decode_classes`, the reference both are tested against).
"""

from __future__ import annotations

from collections.abc import Collection

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from . import pbfast
from .mapping import Span, SpanValue
from .wire import Codec, InvalidBody, ResourceSpans, status_protobuf

__all__ = ["CODEC", "decode", "decode_classes"]

_SCALARS = frozenset({"string_value", "int_value", "double_value", "bool_value"})
_PARSE = ExportTraceServiceRequest.FromString


def _array(value: AnyValue) -> list[str | int | float | bool]:
    """The scalars of an ``array_value`` (nested arrays, bytes and key-value lists skipped)."""
    items = []
    for item in value.array_value.values:
        kind = item.WhichOneof("value")
        if kind in _SCALARS:
            items.append(getattr(item, kind))
    return items


def _parse(body: bytes) -> ExportTraceServiceRequest:
    try:
        request: ExportTraceServiceRequest = _PARSE(body)
    except DecodeError as exc:
        raise InvalidBody(f"body is not a protobuf ExportTraceServiceRequest: {exc}") from None
    return request


def _read(request: ExportTraceServiceRequest, wanted: Collection[str]) -> list[ResourceSpans]:
    """The spans of a parsed request, read through the classes' objects."""
    out: list[ResourceSpans] = []
    for resource_spans in request.resource_spans:
        spans = []
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes: dict[str, SpanValue] = {}
                for pair in span.attributes:
                    key = pair.key
                    if key in wanted:
                        value = pair.value
                        kind = value.WhichOneof("value")
                        if kind in _SCALARS:
                            attributes[key] = getattr(value, kind)
                        elif kind == "array_value":
                            attributes[key] = _array(value)
                status = span.status
                spans.append(
                    Span(
                        span.name,
                        span.trace_id.hex(),
                        span.span_id.hex(),
                        span.start_time_unix_nano,
                        span.end_time_unix_nano,
                        status.code,
                        status.message,
                        attributes,
                    )
                )
        out.append((pbfast.service_name(resource_spans.resource), spans))
    return out


def decode_classes(body: bytes, wanted: Collection[str]) -> list[ResourceSpans]:
    """An ``ExportTraceServiceRequest`` as neutral spans, read through the classes."""
    return _read(_parse(body), wanted)


def decode(body: bytes, wanted: Collection[str]) -> list[ResourceSpans]:
    """An ``ExportTraceServiceRequest`` as neutral spans (ids as hex): what
    :func:`decode_classes` gives, by :func:`.pbfast.read` when the encoding allows."""
    request = _parse(body)
    if request.SerializeToString() == body:
        keys = wanted if isinstance(wanted, frozenset) else frozenset(wanted)
        spans = pbfast.read(body, keys)
        if spans is not None:
            return spans
    return _read(request, wanted)


_EMPTY_RESPONSE: bytes = ExportTraceServiceResponse().SerializeToString()


def response(rejected: int, message: str) -> bytes:
    """An ``ExportTraceServiceResponse``; ``partial_success`` only when spans were rejected."""
    if not rejected:
        return _EMPTY_RESPONSE
    answer = ExportTraceServiceResponse()
    answer.partial_success.rejected_spans = rejected
    answer.partial_success.error_message = message
    encoded: bytes = answer.SerializeToString()
    return encoded


CODEC = Codec("application/x-protobuf", decode, response, status_protobuf)
