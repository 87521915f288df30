"""The fast protobuf reader (``pbfast``) against the generated classes: the same spans
(or the same 400) for generated requests with every kind of value, for encodings no
SDK writes (repeated fields, unknown fields, merged values), and for fuzzed bodies
(bad UTF-8, cut short, bytes changed), whatever the cache of attributes holds."""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import pytest
from msgspec.structs import astuple
from observer_plugins.sources.otlp import pbfast, protobuf
from observer_plugins.sources.otlp.mapping import Mapping
from observer_plugins.sources.otlp.wire import InvalidBody
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

WANTED = Mapping(staffer_attribute="team").wanted
KEYS = [*sorted(WANTED)[:8], "team", "service.name", "other", "gen_ai.response.id", ""]


def normal(decoded: object) -> str:
    """Decoded spans as text: attributes in key order (the order the mapping never reads),
    NaN equal to itself and -0.0 told from 0.0 (repr does both)."""
    if isinstance(decoded, list):
        return repr(
            [
                (
                    service,
                    [(*astuple(span)[:-1], sorted(span.attributes.items())) for span in spans],
                )
                for service, spans in decoded
            ]
        )
    return repr(decoded)


def same(left: object, right: object) -> bool:
    return normal(left) == normal(right)


def random_value(rng: random.Random, target: AnyValue, depth: int = 0) -> None:
    """Set one of AnyValue's kinds at random (or none: an empty AnyValue)."""
    kind = rng.randrange(10 if depth < 2 else 6)
    if kind == 0:
        target.string_value = rng.choice(["", "chat", "gpt-4o", "é✓" * rng.randrange(80)])
    elif kind == 1:
        target.int_value = rng.choice([0, 1, 7, 300, -1, -(2**63), 2**63 - 1, rng.randrange(10**6)])
    elif kind == 2:
        target.double_value = rng.choice([0.0, -0.0, 0.5, 1e300, math.inf, math.nan, 12.0])
    elif kind == 3:
        target.bool_value = rng.random() < 0.5
    elif kind == 4:
        target.bytes_value = rng.randbytes(rng.randrange(4))
    elif kind == 5:
        pass  # an empty AnyValue
    elif kind in (6, 7):
        target.array_value.SetInParent()
        for _ in range(rng.randrange(4)):
            random_value(rng, target.array_value.values.add(), depth + 1)
    elif kind == 8:
        target.kvlist_value.values.add(key="k").value.string_value = "v"
    else:
        target.string_value_strindex = rng.randrange(5)


def random_request(rng: random.Random) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for _ in range(rng.randrange(1, 3)):
        resource_spans = request.resource_spans.add()
        for _ in range(rng.randrange(3)):
            pair = resource_spans.resource.attributes.add(key=rng.choice(["service.name", "x"]))
            random_value(rng, pair.value)
        for _ in range(rng.randrange(1, 3)):
            scope = resource_spans.scope_spans.add()
            scope.scope.name = "scope"
            for _ in range(rng.randrange(4)):
                span = scope.spans.add()
                span.trace_id = rng.randbytes(rng.choice([16, 16, 3, 0]))
                span.span_id = rng.randbytes(rng.choice([8, 8, 0]))
                span.name = rng.choice(["", "chat m", "ü" * 200])
                span.start_time_unix_nano = rng.randrange(2**64)
                span.end_time_unix_nano = rng.randrange(2**64)
                span.kind = rng.randrange(5)
                span.flags = rng.randrange(2**32)
                if rng.random() < 0.5:
                    span.status.code = rng.choice([0, 1, 2, 7, -3])
                    span.status.message = rng.choice(["", "boom"])
                for _ in range(rng.randrange(12)):
                    random_value(rng, span.attributes.add(key=rng.choice(KEYS)).value)
                span.events.add(name="event").attributes.add(key="gen_ai.system")
    return request


def test_generated_requests_read_as_the_classes_read_them() -> None:
    rng = random.Random(22)
    for _ in range(400):
        body = random_request(rng).SerializeToString()
        expected = protobuf.decode_classes(body, WANTED)
        assert same(protobuf.decode(body, WANTED), expected)
        assert same(pbfast.read(pbfast.parse(body), WANTED), expected)  # not by falling back


def test_an_sdk_request_is_read_by_the_fast_path() -> None:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 8, "chat m"
    for key, value in (("gen_ai.system", "openai"), ("gen_ai.request.model", "m" * 300)):
        span.attributes.add(key=key).value.string_value = value
    span.attributes.add(key="gen_ai.usage.input_tokens").value.int_value = 2**40
    reasons = span.attributes.add(key="gen_ai.response.finish_reasons").value.array_value
    reasons.values.add().string_value = "stop"
    reasons.values.add().int_value = -5
    body = request.SerializeToString()
    read = pbfast.read(pbfast.parse(body), WANTED)
    assert read == protobuf.decode_classes(body, WANTED)
    assert read[0][1][0].attributes == {
        "gen_ai.system": "openai",
        "gen_ai.request.model": "m" * 300,
        "gen_ai.usage.input_tokens": 2**40,
        "gen_ai.response.finish_reasons": ["stop", -5],
    }


def test_the_cache_of_attributes_is_bounded_and_kept_apart_by_wanted_keys() -> None:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    for number in range(5000):  # each attribute seen once, as a response id is
        span.attributes.add(key="gen_ai.response.id").value.string_value = str(number)
    span.attributes.add(key="team").value.string_value = "a"
    body = request.SerializeToString()
    others = frozenset({"gen_ai.system"})
    assert pbfast.read(pbfast.parse(body), WANTED)[0][1][0].attributes == {"team": "a"}
    assert pbfast.read(pbfast.parse(body), others)[0][1][0].attributes == {}
    assert 0 < len(pbfast._caches[WANTED]) <= pbfast._CACHE_ENTRIES


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def field(number: int, payload: bytes | int, wire_type: int = 2) -> bytes:
    """One field: length-delimited ``payload``, or a varint (wire type 0)."""
    tag = varint(number << 3 | wire_type)
    if isinstance(payload, int):
        return tag + varint(payload)
    return tag + varint(len(payload)) + payload


def request_of(*span_fields: bytes) -> bytes:
    span = b"".join(span_fields)
    return field(1, field(2, field(2, span)))


IDS = field(1, b"\x01" * 16) + field(2, b"\x02" * 8) + varint(7 << 3 | 1) + struct.pack("<Q", 5)
ARRAY = [field(5, field(1, field(1, b"a")))]
CASES: dict[str, list[bytes]] = {
    # Merged by the classes: two arrays in one KeyValue's two value fields become one.
    "two value fields, arrays": [
        field(9, field(1, b"gen_ai.response.finish_reasons") + field(2, ARRAY[0]) * 2)
    ],
    # A later value field without a kind leaves the earlier one.
    "value then empty value": [
        field(9, field(1, b"gen_ai.system") + field(2, field(1, b"x")) + field(2, b""))
    ],
    # The classes keep the last attribute of a key that has a scalar value.
    "key again, empty": [
        field(9, field(1, b"gen_ai.system") + field(2, field(1, b"x"))),
        field(9, field(1, b"gen_ai.system") + field(2, b"")),
    ],
    "key again, bytes": [
        field(9, field(1, b"gen_ai.system") + field(2, field(1, b"x"))),
        field(9, field(1, b"gen_ai.system") + field(2, field(7, b"\x00"))),
    ],
    "value before key, unknown field": [
        field(9, field(2, field(3, 7, 0)) + field(1, b"gen_ai.usage.input_tokens") + field(9, 1, 0))
    ],
    "key twice in one KeyValue": [
        field(9, field(1, b"other") + field(2, field(1, b"x")) + field(1, b"gen_ai.system"))
    ],
    "string and int in one AnyValue": [
        field(9, field(1, b"gen_ai.system") + field(2, field(1, b"x") + field(3, 4, 0)))
    ],
    "status twice, name twice, unknown group": [
        field(15, field(2, b"first") + field(3, 2, 0)),
        field(15, field(3, 1, 0)),
        field(5, b"a"),
        field(5, b"b"),
        varint(99 << 3 | 3) + field(1, 5, 0) + varint(99 << 3 | 4),
    ],
    "attributes after status, fields out of order": [
        field(15, field(3, 2, 0)),
        field(9, field(1, b"gen_ai.system") + field(2, field(1, b"y"))),
        field(5, b"name"),
    ],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_encodings_no_sdk_writes_read_as_the_classes_read_them(case: str) -> None:
    body = request_of(IDS, *CASES[case])
    expected = protobuf.decode_classes(body, WANTED)
    assert expected[0][1], "the case must decode to a span"
    assert same(protobuf.decode(body, WANTED), expected)


def outcome(decode: Any, body: bytes) -> object:
    try:
        return decode(body, WANTED)
    except InvalidBody as exc:
        return ("400", str(exc))


def test_fuzzed_bodies_read_or_refused_as_the_classes_do() -> None:
    rng = random.Random(2222)
    seeds = [random_request(rng).SerializeToString() for _ in range(40)]
    seeds += [request_of(IDS, *case) for case in CASES.values()]
    refused = 0
    for _ in range(3000):
        body = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(body) + 1)
            action = rng.randrange(4)
            if action == 0 and body:
                body[min(at, len(body) - 1)] = rng.randrange(256)
            elif action == 1:
                body[at:at] = rng.randbytes(rng.randrange(1, 4))
            elif action == 2:
                del body[at : at + rng.randrange(1, 4)]
            else:
                del body[at:]  # truncated
        expected = outcome(protobuf.decode_classes, bytes(body))
        refused += isinstance(expected, tuple)
        assert same(outcome(protobuf.decode, bytes(body)), expected)
    assert 100 < refused < 2900  # both the refusals and the reads were exercised
