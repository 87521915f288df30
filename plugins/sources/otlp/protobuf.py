"""The ``application/x-protobuf`` encoding, with the classes of ``opentelemetry-proto``.

Imported only when an ``otlp`` source starts: the package comes with the ``[otlp]`` extra.
A request is read by :mod:`.pbfast`, at a fraction of the cost of reading it through
the classes' objects, with the same result (:func:`decode_classes` is the reference).
"""

from __future__ import annotations

from collections.abc import Collection

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from . import pbfast
from .mapping import SpanValue
from .wire import Codec, InvalidBody, ResourceSpans, status_protobuf

__all__ = ["CODEC", "decode", "decode_classes"]

_PARSE = ExportTraceServiceRequest.FromString


def _parse(body: bytes) -> ExportTraceServiceRequest:
    try:
        request: ExportTraceServiceRequest = _PARSE(body)
    except DecodeError as exc:
        raise InvalidBody(f"body is not a protobuf ExportTraceServiceRequest: {exc}") from None
    return request


def decode_classes(body: bytes, wanted: Collection[str]) -> list[ResourceSpans]:
    """An ``ExportTraceServiceRequest`` as neutral spans, read through the classes' objects
    (the reference :func:`decode` is tested against)."""
    out: list[ResourceSpans] = []
    for resource_spans in _parse(body).resource_spans:
        spans = []
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes: dict[str, SpanValue] = {}
                for pair in span.attributes:
                    if pair.key in wanted:
                        value = pbfast.wanted_value(pair.value)
                        if value is not None:
                            attributes[pair.key] = value
                spans.append(pbfast.span_of(span, attributes))
        out.append((pbfast.service_name(resource_spans.resource), spans))
    return out


def decode(body: bytes, wanted: Collection[str]) -> list[ResourceSpans]:
    """An ``ExportTraceServiceRequest`` as neutral spans (ids as hex), as
    :func:`decode_classes` gives them, read by :func:`.pbfast.read`."""
    keys = wanted if isinstance(wanted, frozenset) else frozenset(wanted)
    try:
        return pbfast.read(pbfast.parse(body), keys)
    except DecodeError:  # the classes say what is wrong first (this raises InvalidBody)
        return decode_classes(body, wanted)


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
