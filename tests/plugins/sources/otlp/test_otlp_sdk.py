"""The otlp source fed by the real OpenTelemetry Python SDK and its OTLP/HTTP exporter
(protobuf, gzip): the real daemon over loopback."""

from __future__ import annotations

from typing import Any

import requests
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode
from otlp_helpers import OtlpDaemon
from requests.structures import CaseInsensitiveDict


class RecordingSession(requests.Session):
    """A requests session that remembers the headers of what it sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[CaseInsensitiveDict[str]] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.sent.append(CaseInsensitiveDict(request.headers))
        return super().send(request, **kwargs)


def make_spans() -> list[ReadableSpan]:
    """Three finished spans of service ``travel-agent``: a chat call with the current GenAI
    attribute names, a failed one with the older names, and a plain HTTP span."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "travel-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("invoke_agent planner"):
        with tracer.start_as_current_span("chat gpt-4o-mini") as chat:
            chat.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                    "gen_ai.usage.input_tokens": 120,
                    "gen_ai.usage.output_tokens": 42,
                    "gen_ai.response.finish_reasons": ["stop"],
                    "gen_ai.agent.name": "planner",
                }
            )
        with tracer.start_as_current_span("completion") as old:
            old.set_attributes(
                {
                    "gen_ai.system": "openai",
                    "gen_ai.request.model": "davinci",
                    "gen_ai.usage.prompt_tokens": 10,
                    "gen_ai.usage.completion_tokens": 3,
                    "error.type": "RateLimitError",
                }
            )
            old.set_status(Status(StatusCode.ERROR, "429 Too Many Requests"))
        with tracer.start_as_current_span("GET /weather") as plain:
            plain.set_attribute("http.request.method", "GET")
    provider.shutdown()
    return list(memory.get_finished_spans())


def test_sdk_exporter_protobuf_gzip_ops_written_before_the_answer(otlp: OtlpDaemon) -> None:
    spans = make_spans()
    session = RecordingSession()
    exporter = OTLPSpanExporter(
        endpoint=otlp.traces, compression=Compression.Gzip, session=session, timeout=10
    )
    result = exporter.export(spans)
    ops = otlp.ops()  # read as soon as the answer came: acknowledged means written
    exporter.shutdown()

    assert result is SpanExportResult.SUCCESS
    [headers] = session.sent
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["Content-Encoding"] == "gzip"
    by_name = {span.name: span for span in spans}
    chat, old = ops  # the agent span and the HTTP span are not GenAI spans
    context = by_name["chat gpt-4o-mini"].context
    assert context is not None
    assert chat["id"] == f"{context.trace_id:032x}{context.span_id:016x}"
    assert chat["endpoint"] == "chat gpt-4o-mini"
    assert chat["source"] == "travel-agent" and chat["staffer_id"] == "planner"
    assert chat["success"] is True and chat["output_summary"] == "120 → 42 tokens"
    assert chat["attributes"] == {
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 42,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
    }
    assert old["endpoint"] == "completion"
    assert old["success"] is False and old["error"] == "429 Too Many Requests"
    assert old["attributes"]["gen_ai.provider.name"] == "openai"
    assert old["attributes"]["gen_ai.usage.input_tokens"] == 10
    assert old["attributes"]["gen_ai.usage.output_tokens"] == 3
    span = by_name["completion"]
    assert span.start_time is not None and span.end_time is not None
    assert old["duration_ms"] == round((span.end_time - span.start_time) / 1e6, 3)
    assert otlp.spans("ignored") == 2 and otlp.spans("accepted") == 2


def test_an_exporter_retry_of_the_same_spans_carries_the_same_ids(otlp: OtlpDaemon) -> None:
    spans = make_spans()
    exporter = OTLPSpanExporter(endpoint=otlp.traces, timeout=10)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    first, second = otlp.ops()[:2], otlp.ops()[2:]
    assert [op["id"] for op in first] == [op["id"] for op in second]
