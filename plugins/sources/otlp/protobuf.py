"""The ``application/x-protobuf`` encoding, with the classes of ``opentelemetry-proto``.

Imported only when an ``otlp`` source starts: the package comes with the ``[otlp]`` extra.
"""

from __future__ import annotations

from collections.abc import Collection

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from .mapping import Span, SpanValue
from .wire import Codec, InvalidBody, ResourceSpans, status_protobuf

__all__ = ["CODEC"]

_SCALARS = frozenset({"string_value", "int_value", "double_value", "bool_value"})


def _array(value: AnyValue) -> list[str | int | float | bool]:
    """The scalars of an ``array_value`` (nested arrays, bytes and key-value lists skipped)."""
    items = []
    for item in value.array_value.values:
        kind = item.WhichOneof("value")
        if kind in _SCALARS:
            items.append(getattr(item, kind))
    return items


def decode(body: bytes, wanted: Collection[str]) -> list[ResourceSpans]:
    """An ``ExportTraceServiceRequest`` as neutral spans (ids as hex)."""
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise InvalidBody(f"body is not a protobuf ExportTraceServiceRequest: {exc}") from None
    out: list[ResourceSpans] = []
    for resource_spans in request.resource_spans:
        service_name = None
        for pair in resource_spans.resource.attributes:
            if pair.key == "service.name":
                service_name = pair.value.string_value or None
        spans = []
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes: dict[str, SpanValue] = {}
                for pair in span.attributes:
                    key = pair.key
                    if key in wanted:  # inline: this runs for every attribute of every span
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
        out.append((service_name, spans))
    return out


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
