"""An OpenAI SDK client instrumented by a real GenAI instrumentation package
(``opentelemetry-instrumentation-openai-v2``), exporting with the real OTLP/HTTP exporter
(protobuf, gzip) to the otlp source: the op carries the model and the token counts the
model server reported (contract §13.3).

Against a stub OpenAI-compatible server always, and against the real llama.cpp server
(``ci/llama-server.sh start``) when ``LLAMA_URL`` is set (marked ``llm``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from otlp_helpers import OtlpDaemon

from observer_core.testing import StubReply, StubServer, wait_for

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1767225600,
    "model": "stub-model-v1",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 17, "completion_tokens": 2, "total_tokens": 19},
}


@pytest.fixture
def tracer_provider(otlp: OtlpDaemon) -> Iterator[TracerProvider]:
    """A provider exporting every span at once to the otlp source; the OpenAI SDK
    instrumented to use it (uninstrumented afterwards)."""
    provider = TracerProvider(resource=Resource.create({"service.name": "quiz-agent"}))
    exporter = OTLPSpanExporter(endpoint=otlp.traces, compression=Compression.Gzip, timeout=10)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield provider
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def ask(base_url: str, model: str) -> Any:
    """One chat completion through the (instrumented) OpenAI SDK."""
    client = openai.OpenAI(base_url=base_url, api_key="not-needed", timeout=120, max_retries=0)
    try:
        return client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=8,
            temperature=0,
        )
    finally:
        client.close()


def the_op(otlp: OtlpDaemon) -> dict[str, Any]:
    [op] = wait_for(otlp.ops, timeout=10, what="the op of the model call")
    return op


def test_instrumented_openai_call_against_a_stub_model_server(
    otlp: OtlpDaemon, tracer_provider: TracerProvider, stub_server: Any
) -> None:
    model_server: StubServer = stub_server()
    model_server.replies["/v1/chat/completions"] = StubReply(body=COMPLETION)
    ask(f"{model_server.url}/v1", "stub-model")
    op = the_op(otlp)
    assert op["endpoint"] == "chat stub-model"
    assert op["source"] == "quiz-agent" and op["success"] is True
    assert op["output_summary"] == "17 → 2 tokens"
    attributes = op["attributes"]
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "stub-model"
    assert attributes["gen_ai.response.model"] == "stub-model-v1"
    assert attributes["gen_ai.usage.input_tokens"] == 17
    assert attributes["gen_ai.usage.output_tokens"] == 2


@pytest.mark.llm
def test_instrumented_openai_call_against_the_real_model_server(
    otlp: OtlpDaemon, tracer_provider: TracerProvider, llama_url: str
) -> None:
    reply = ask(f"{llama_url.rstrip('/')}/v1", "smollm2")
    op = the_op(otlp)
    assert op["endpoint"] == "chat smollm2" and op["success"] is True
    attributes = op["attributes"]
    assert attributes["gen_ai.response.model"] == reply.model
    assert attributes["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    assert op["output_summary"] == (
        f"{reply.usage.prompt_tokens} → {reply.usage.completion_tokens} tokens"
    )
