"""Spans of a canonically encoded request, read with few Python objects.

Reading a parsed ``ExportTraceServiceRequest`` through its classes costs a Python object
for every attribute, value and oneof of every span (~8 µs a span of 13 attributes,
against 0.6 µs for upb's parse). Here the same bytes are parsed a second time as a
*view* of the request whose ``Span.attributes`` (field 9) is a ``map<string, bytes>``
(a map entry is wire-compatible with ``KeyValue``: key = 1, value = 2): upb files the
attributes by key in C, the wanted keys are taken out with one set intersection, and
each value is read from its ``AnyValue`` bytes here.

The view keeps the last entry of a key, and a value's bytes as sent (not merged with an
earlier value field of the same ``KeyValue``); the classes keep the last attribute of a
key that has a scalar or array value, and merge. So :func:`read` is used only on a
request that upb would write back byte for byte (:mod:`.protobuf` checks that: no field
repeated within a message, nothing out of order), and it returns None, for the classes
to read the request, when a wanted key's value is anything but a scalar or an array.
"""

from __future__ import annotations

from collections.abc import Callable
from struct import Struct
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from .mapping import Span, SpanValue

__all__ = ["read", "service_name"]

_DOUBLE = Struct("<d").unpack_from
_STRING, _BOOL, _INT, _DOUBLE_TAG, _ARRAY = 0x0A, 0x10, 0x18, 0x21, 0x2A


def _view() -> Callable[[bytes], Any]:
    """``ExportTraceServiceRequest`` under its own name, in a pool of its own, with
    ``Span.attributes`` as ``map<string, bytes>``; every other field as it is."""
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        for module in (common_pb2, resource_pb2, trace_pb2, trace_service_pb2)
    ]
    span = next(message for message in files[2].message_type if message.name == "Span")
    entry = span.nested_type.add(name="AttributesEntry")
    entry.options.map_entry = True
    label = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    entry.field.add(
        name="key",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=label,
        json_name="key",
    )
    entry.field.add(
        name="value",
        number=2,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
        label=label,
        json_name="value",
    )
    attributes = next(field for field in span.field if field.number == 9)
    attributes.type_name = f".{files[2].package}.Span.AttributesEntry"
    pool = descriptor_pool.DescriptorPool()
    for file in files:
        pool.Add(file)
    name = trace_service_pb2.ExportTraceServiceRequest.DESCRIPTOR.full_name
    parse: Callable[[bytes], Any] = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(name)
    ).FromString
    return parse


_VIEW = _view()


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _scalar(data: bytes, pos: int, end: int) -> str | int | float | bool | None:
    """The value of the canonical one-field ``AnyValue`` in ``data[pos:end]`` when it is
    a string, bool, int or double; else None."""
    tag = data[pos]
    if tag == _STRING:
        if data[pos + 1] < 0x80:
            return data[pos + 2 : end].decode()
        return data[_varint(data, pos + 1)[1] : end].decode()
    if tag == _INT:
        value = _varint(data, pos + 1)[0]
        return value - (1 << 64) if value >> 63 else value
    if tag == _DOUBLE_TAG:
        number: float = _DOUBLE(data, pos + 1)[0]
        return number
    if tag == _BOOL:
        return data[pos + 1] != 0
    return None


def _value(data: bytes) -> SpanValue | None:
    """A wanted attribute's value from its canonical ``AnyValue`` bytes; None for an
    empty one, bytes, a key-value list or a string index."""
    if not data:
        return None
    if data[0] != _ARRAY:
        return _scalar(data, 0, len(data))
    items: list[str | int | float | bool] = []
    pos = _varint(data, 1)[1]
    end = len(data)
    while pos < end:  # each item: values = 1, an AnyValue
        length, pos = _varint(data, pos + 1)
        if length:
            item = _scalar(data, pos, pos + length)
            if item is not None:  # as the classes: other kinds of item are left out
                items.append(item)
        pos += length
    return items


def service_name(resource: Any) -> str | None:
    """The resource's last ``service.name`` attribute, when that is a non-empty string."""
    name = None
    for pair in resource.attributes:
        if pair.key == "service.name":
            name = pair.value.string_value or None
    return name


_CACHE_ENTRIES = 4096
"""Values kept by their bytes: a model, provider or agent name repeats in every span."""
_CACHE_BYTES = 128
"""Values longer than this (as encoded) are not kept."""
_cache: dict[bytes, str | int | float | bool] = {}


def read(body: bytes, wanted: frozenset[str]) -> list[tuple[str | None, list[Span]]] | None:
    """The spans of the canonically encoded request ``body`` (checked by the caller),
    each with the ``wanted`` attributes; None when the classes must read it."""
    out: list[tuple[str | None, list[Span]]] = []
    keep = wanted.intersection
    cache = _cache
    known = cache.get
    for resource_spans in _VIEW(body).resource_spans:
        spans: list[Span] = []
        append = spans.append
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                encoded = span.attributes
                attributes: dict[str, SpanValue] = {}
                for key in keep(encoded):
                    data = encoded[key]
                    value = known(data)
                    if value is None:
                        found = _value(data)
                        if found is None:
                            return None
                        attributes[key] = found
                        if not isinstance(found, list) and len(data) <= _CACHE_BYTES:
                            if len(cache) >= _CACHE_ENTRIES:
                                cache.clear()
                            cache[data] = found
                    else:
                        attributes[key] = value
                status = span.status
                append(
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
        out.append((service_name(resource_spans.resource), spans))
    return out
