"""Spans of an ``ExportTraceServiceRequest``, read with few Python objects.

Reading a parsed request through its classes costs a Python object for every attribute,
value and oneof of every span (~8 µs a span of 13 attributes, against 0.6 µs for upb's
parse). Here the body is parsed as a *view* of the request, in a pool of its own and
under the same names (a bad body fails with the same words), in which
``Span.attributes`` (field 9) is ``repeated bytes``: each attribute stays the encoded
``KeyValue`` it was sent as. What the classes make of an encoded ``KeyValue`` depends
only on its bytes, so it is worked out once, by the classes themselves, and kept by
those bytes: a span's attributes are then looked up with C loops (``map``, ``filter``,
``dict``) and no Python code runs per attribute. Attributes of a span repeat (model,
provider, operation, agent, token counts in a small range); one seen for the first time
(a response id) costs one parse of its ``KeyValue``.

Every field but the attributes is parsed, and so checked, by the view as by the classes;
each ``KeyValue`` is checked by the classes the first time its bytes are seen, and one
that fails sends the whole body to the classes, for their error. So the spans, and the
400s, are the classes' own (``test_otlp_pbfast.py`` checks that on generated, hand-made
and fuzzed bodies).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat
from typing import Any, TypeAlias

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from .mapping import Span, SpanValue

__all__ = ["parse", "read", "service_name", "span_of", "wanted_value"]

Pair: TypeAlias = "tuple[str, SpanValue] | tuple[()]"
"""A wanted attribute as (key, value); ``()`` for one the mapping does not read."""

_SCALARS = frozenset({"string_value", "int_value", "double_value", "bool_value"})


def _view() -> Callable[[bytes], Any]:
    """The view's ``ExportTraceServiceRequest.FromString``: ``Span.attributes`` is
    ``repeated bytes``, every other field as it is."""
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        for module in (common_pb2, resource_pb2, trace_pb2, trace_service_pb2)
    ]
    span = next(message for message in files[2].message_type if message.name == "Span")
    attributes = next(field for field in span.field if field.number == 9)
    attributes.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
    attributes.ClearField("type_name")
    pool = descriptor_pool.DescriptorPool()
    for file in files:
        pool.Add(file)
    name = trace_service_pb2.ExportTraceServiceRequest.DESCRIPTOR.full_name
    parse: Callable[[bytes], Any] = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(name)
    ).FromString
    return parse


parse = _view()
"""Parse a body as the view (raises ``DecodeError`` as the classes would)."""


def wanted_value(value: AnyValue) -> SpanValue | None:
    """An attribute's value as the mapping reads it: a scalar, or the scalars of an array
    (nested arrays, bytes and key-value lists left out); None for any other kind."""
    kind = value.WhichOneof("value")
    if kind in _SCALARS:
        scalar: SpanValue = getattr(value, kind)
        return scalar
    if kind != "array_value":
        return None
    items = []
    for item in value.array_value.values:
        kind = item.WhichOneof("value")
        if kind in _SCALARS:
            items.append(getattr(item, kind))
    return items


def service_name(resource: Any) -> str | None:
    """The resource's last ``service.name`` attribute, when that is a non-empty string."""
    name = None
    for pair in resource.attributes:
        if pair.key == "service.name":
            name = pair.value.string_value or None
    return name


_CACHE_ENTRIES = 4096
"""Encoded attributes kept (for each set of wanted keys); then the cache starts again."""
_CACHE_BYTES = 256
"""Longer encoded attributes (a prompt, say) are worked out each time, not kept."""
_caches: dict[frozenset[str], dict[bytes, Pair]] = {}
"""What each encoded attribute is, by wanted keys; a list value is shared by the spans
that have it (read-only: the mapping only reads)."""
_MISSING: Any = object()
"""What a cache lookup gives for bytes not seen yet (None and () are results)."""


def _pair(encoded: bytes, wanted: frozenset[str], cache: dict[bytes, Pair]) -> Pair:
    """What the classes make of one encoded ``KeyValue`` (raises ``DecodeError``)."""
    pair = KeyValue.FromString(encoded)
    found: Pair = ()
    if pair.key in wanted:
        value = wanted_value(pair.value)
        if value is not None:
            found = (pair.key, value)
    if len(encoded) <= _CACHE_BYTES:
        if len(cache) >= _CACHE_ENTRIES:
            cache.clear()
        cache[encoded] = found
    return found


def span_of(span: Any, attributes: dict[str, SpanValue]) -> Span:
    """A decoded ``Span`` message (either decoder's) as a :class:`Span` with ``attributes``."""
    status = span.status
    return Span(
        span.name,
        span.trace_id.hex(),
        span.span_id.hex(),
        span.start_time_unix_nano,
        span.end_time_unix_nano,
        status.code,
        status.message,
        attributes,
    )


def read(request: Any, wanted: frozenset[str]) -> list[tuple[str | None, list[Span]]]:
    """The spans of a request :func:`parse` gave, each with the ``wanted`` attributes.
    Raises ``DecodeError`` for an attribute the classes refuse."""
    out: list[tuple[str | None, list[Span]]] = []
    cache = _caches.get(wanted)
    if cache is None:
        cache = _caches[wanted] = {}
    known = cache.get
    missing = repeat(_MISSING)
    for resource_spans in request.resource_spans:
        spans: list[Span] = []
        append = spans.append
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                encoded = span.attributes
                pairs = list(map(known, encoded, missing))
                misses = pairs.count(_MISSING)  # usually one at most (a response id)
                if misses:
                    at = 0
                    for _ in range(misses):
                        at = pairs.index(_MISSING, at)
                        pairs[at] = _pair(encoded[at], wanted, cache)
                # A later pair of a key wins; () pairs are left out, as the
                # classes leave out an attribute with no scalar or array value.
                append(span_of(span, dict(filter(None, pairs))))  # type: ignore[arg-type]
        out.append((service_name(resource_spans.resource), spans))
    return out
