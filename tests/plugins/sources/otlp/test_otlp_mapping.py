"""The mapping and the two decoders as pure functions: both encodings of the same spans
give the same ops, and the edge cases of the table (contract §13.1)."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from observer_plugins.sources.otlp import otlpjson, protobuf
from observer_plugins.sources.otlp.mapping import (
    Mapping,
    Span,
    SpanValue,
    Unmappable,
    derive_sig_hash,
    map_span,
)
from observer_plugins.sources.otlp.wire import InvalidBody, TooLarge, inflate, status_protobuf
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from otlp_helpers import SPAN_ID, START_NS, TRACE_ID, json_request, json_span

from observer_core import UNSET

ATTRIBUTES: dict[str, Any] = {
    "gen_ai.operation.name": "chat",
    "gen_ai.system": "openai",
    "gen_ai.request.model": "m",
    "gen_ai.usage.prompt_tokens": 3,
    "gen_ai.request.temperature": 0.5,
    "gen_ai.response.finish_reasons": ["stop", "length"],
    "gen_ai.agent.id": "agent-7",
    "ignored.flag": True,
}


def protobuf_body(request: dict[str, Any]) -> bytes:
    """The OTLP JSON ``request`` in protobuf, built with the generated classes."""
    message = ExportTraceServiceRequest()
    for resource_json in request["resourceSpans"]:
        resource = message.resource_spans.add()
        for pair in resource_json["resource"]["attributes"]:
            resource.resource.attributes.add(key=pair["key"]).value.string_value = pair["value"][
                "stringValue"
            ]
        for scope_json in resource_json["scopeSpans"]:
            scope = resource.scope_spans.add()
            for span_json in scope_json["spans"]:
                span = scope.spans.add()
                span.trace_id = bytes.fromhex(span_json["traceId"])
                span.span_id = bytes.fromhex(span_json["spanId"])
                span.name = span_json["name"]
                span.start_time_unix_nano = int(span_json["startTimeUnixNano"])
                span.end_time_unix_nano = int(span_json["endTimeUnixNano"])
                for pair in span_json["attributes"]:
                    set_value(span.attributes.add(key=pair["key"]).value, pair["value"])
                if "status" in span_json:
                    span.status.code = span_json["status"].get("code", 0)
                    span.status.message = span_json["status"].get("message", "")
    return message.SerializeToString()


def set_value(target: Any, value: dict[str, Any]) -> None:
    if "stringValue" in value:
        target.string_value = value["stringValue"]
    elif "intValue" in value:
        target.int_value = int(value["intValue"])
    elif "doubleValue" in value:
        target.double_value = value["doubleValue"]
    elif "boolValue" in value:
        target.bool_value = value["boolValue"]
    else:
        for item in value["arrayValue"]["values"]:
            set_value(target.array_value.values.add(), item)


def test_both_encodings_decode_to_the_same_spans_and_ops() -> None:
    request = json_request(
        json_span("chat m", ATTRIBUTES),
        json_span("failed", ATTRIBUTES, span_id="00000000000000ff", status={"code": 2}),
    )
    mapping = Mapping()
    from_json = otlpjson.CODEC.decode(json.dumps(request).encode(), mapping.wanted)
    from_protobuf = protobuf.CODEC.decode(protobuf_body(request), mapping.wanted)
    assert from_json == from_protobuf
    [(service, spans)] = from_protobuf
    assert service == "agent-a"
    assert "ignored.flag" not in spans[0].attributes  # only what the mapping reads is kept
    ops = [map_span(span, service, mapping) for span in spans]
    assert ops[0] is not None and ops[1] is not None
    assert ops[0].output_summary == "3 → ? tokens"
    assert ops[0].staffer_id == "agent-7"
    assert ops[1].success is False and ops[1].error is UNSET  # no message, no error.type
    assert ops[1].output_summary == "3 → ? tokens"  # usage first, even for a failure


def span(**attributes: SpanValue) -> Span:
    return Span("s", TRACE_ID, SPAN_ID, START_NS, START_NS + 2_000_000, 0, "", attributes)


@pytest.mark.parametrize(
    ("attributes", "genai"),
    [
        ({"gen_ai.operation.name": "chat"}, True),
        ({"gen_ai.provider.name": "x"}, True),
        ({"gen_ai.system": "x"}, True),
        ({"openinference.span.kind": "EMBEDDING"}, True),
        ({"openinference.span.kind": "CHAIN"}, False),
        ({"gen_ai.request.model": "m"}, False),  # a model alone does not make a GenAI span
    ],
)
def test_what_is_a_genai_span(attributes: dict[str, SpanValue], genai: bool) -> None:
    assert (map_span(span(**attributes), None, Mapping()) is not None) is genai


def test_token_counts_are_whole_numbers() -> None:
    base: dict[str, SpanValue] = {"gen_ai.operation.name": "chat"}
    op = map_span(span(**base, **{"gen_ai.usage.output_tokens": 4.0}), None, Mapping())
    assert op is not None and op.attributes == {"gen_ai.usage.output_tokens": 4, **ids()}
    for bad in (1.5, -1, "x", True, ["1"]):
        with pytest.raises(Unmappable, match=r"gen_ai\.usage\.output_tokens"):
            map_span(span(**base, **{"gen_ai.usage.output_tokens": bad}), None, Mapping())


def test_values_that_are_not_plain_strings_or_counts_take_the_general_path() -> None:
    """The mapping reads strings and whole numbers inline; every other value goes through
    the rules for any value (numbers and bools as written, older names, fallbacks)."""
    attributes: dict[str, SpanValue] = {
        "gen_ai.operation.name": 7,
        "gen_ai.request.model": "",
        "llm.model_name": True,
        "gen_ai.provider.name": 0,
        "gen_ai.system": "ignored: the provider is set",
        "gen_ai.response.model": 1.5,
        "gen_ai.usage.prompt_tokens": "12",
        "gen_ai.usage.output_tokens": 3.0,
        "gen_ai.agent.name": "",
        "gen_ai.agent.id": 42,
        "observer.sig_hash": False,
    }
    op = map_span(span(**attributes), "svc", Mapping())
    assert op is not None
    assert (op.endpoint, op.output_summary, op.staffer_id, op.sig_hash) == (
        "7 true",
        "12 → 3 tokens",
        "42",
        "false",
    )
    assert op.attributes == {
        "gen_ai.provider.name": "0",
        "gen_ai.request.model": "true",
        "gen_ai.response.model": "1.5",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 3,
        **ids(),
    }
    override = map_span(
        span(team=["a"], **{"gen_ai.system": "x"}), None, Mapping(staffer_attribute="team")
    )
    assert override is not None and override.staffer_id is UNSET


@pytest.mark.parametrize(
    ("trace_id", "span_id", "wrong"),
    [
        ("g" * 32, SPAN_ID, "trace_id"),
        (TRACE_ID.upper(), SPAN_ID, "trace_id"),
        (TRACE_ID, SPAN_ID[:15] + "z", "span_id"),
        (TRACE_ID[:30], SPAN_ID + "ab", "trace_id"),  # 48 hex digits in all, split wrong
        ("0" * 32, SPAN_ID, "trace_id"),
        (TRACE_ID, "0" * 16, "span_id"),
    ],
)
def test_a_bad_id_is_named(trace_id: str, span_id: str, wrong: str) -> None:
    bad = Span("s", trace_id, span_id, START_NS, START_NS, 0, "", {"gen_ai.system": "x"})
    with pytest.raises(Unmappable, match=f"^{wrong} "):
        map_span(bad, None, Mapping())


def ids() -> dict[str, str]:
    return {"trace_id": TRACE_ID, "span_id": SPAN_ID}


def test_timestamp_and_duration() -> None:
    op = map_span(span(**{"gen_ai.system": "x"}), None, Mapping())
    assert op is not None
    assert op.timestamp == "2026-01-01T00:00:00.123Z" and op.duration_ms == 2.0


def test_long_fields_are_refused_only_when_checked() -> None:
    long = span(**{"gen_ai.system": "x" * 200})
    with pytest.raises(Unmappable, match="max_field_bytes"):
        map_span(long, None, Mapping(max_field_bytes=100))
    assert map_span(long, None, Mapping(max_field_bytes=100), check_sizes=False) is not None


def test_derived_sig_hash_is_stable_and_depends_on_all_three() -> None:
    first = derive_sig_hash("a", "chat m", "Timeout")
    assert first == derive_sig_hash("a", "chat m", "Timeout") and len(first) == 16
    assert len({first, derive_sig_hash("b", "chat m", "Timeout")}) == 2
    assert len({first, derive_sig_hash("a", "chat m", "Other")}) == 2


def test_inflate_stops_at_the_bound() -> None:
    assert inflate(gzip.compress(b"a" * 100) + gzip.compress(b"b"), 101) == b"a" * 100 + b"b"
    with pytest.raises(TooLarge):
        inflate(gzip.compress(b"a" * 102), 101)
    with pytest.raises(InvalidBody, match="cut short"):
        inflate(gzip.compress(b"a" * 100)[:-12], 1000)


def test_status_protobuf_is_a_google_rpc_status() -> None:
    from google.rpc import status_pb2

    message = "é" * 100  # a length over 127: a two-byte varint
    decoded = status_pb2.Status.FromString(status_protobuf(14, message))
    assert (decoded.code, decoded.message) == (14, message)
