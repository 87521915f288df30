"""The otlp source over OTLP/HTTP JSON and its error answers: the real daemon over loopback."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import httpx
import pytest
from otlp_helpers import SPAN_ID, TRACE_ID, OtlpDaemon, json_request, json_span

JSON = {"Content-Type": "application/json"}
PROTOBUF = {"Content-Type": "application/x-protobuf"}

CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": "gpt-4o-2024-08-06",
    "gen_ai.usage.input_tokens": 12,
    "gen_ai.usage.output_tokens": 30,
    "gen_ai.agent.name": "planner",
    "http.method": "POST",
}

MAX_BATCH_EVENTS = 10_000  # the otlp source's default max_batch_events


def post(otlp: OtlpDaemon, body: object, headers: dict[str, str] = JSON) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(otlp.traces, content=content, headers=headers, timeout=10)


class TestJsonMapping:
    def test_genai_span_becomes_one_op_with_the_table_fields(self, otlp: OtlpDaemon) -> None:
        reply = post(otlp, json_request(json_span("chat gpt-4o", CHAT)))
        assert reply.status_code == 200
        assert reply.headers["content-type"] == "application/json"
        assert reply.json() == {}
        # A lone export is committed at once (Emitter.commit_now) and counted as accepted.
        assert otlp.daemon.metric("observer_commits_total", path="now") == 1
        assert otlp.spans("accepted") == 1
        [op] = otlp.ops()
        assert op == {
            "timestamp": "2026-01-01T00:00:00.123Z",
            "endpoint": "chat gpt-4o",
            "input_summary": "chat gpt-4o",
            "success": True,
            "duration_ms": 1500.0,
            "output_summary": "12 → 30 tokens",
            "source": "agent-a",
            "staffer_id": "planner",
            "id": TRACE_ID + SPAN_ID,
            "attributes": {
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.usage.input_tokens": 12,
                "gen_ai.usage.output_tokens": 30,
                "trace_id": TRACE_ID,
                "span_id": SPAN_ID,
            },
        }

    def test_older_attribute_names_map_to_the_current_ones(self, otlp: OtlpDaemon) -> None:
        old = {
            "gen_ai.system": "anthropic",
            "gen_ai.request.model": "claude",
            "gen_ai.usage.prompt_tokens": "7",  # a string count is still a number
            "gen_ai.usage.completion_tokens": 9,
            "enduser.id": "u-1",
        }
        assert post(otlp, json_request(json_span("call", old), service=None)).status_code == 200
        [op] = otlp.ops()
        assert op["endpoint"] == "call"  # no gen_ai.operation.name: the span name
        assert op["source"] == "otlp"  # no service.name
        assert op["staffer_id"] == "u-1"
        attributes = op["attributes"]
        assert attributes["gen_ai.provider.name"] == "anthropic"
        assert attributes["gen_ai.usage.input_tokens"] == 7
        assert attributes["gen_ai.usage.output_tokens"] == 9
        assert not any(key in attributes for key in ("gen_ai.system", "gen_ai.usage.prompt_tokens"))

    def test_openinference_llm_span(self, otlp: OtlpDaemon) -> None:
        span = {
            "openinference.span.kind": "LLM",
            "llm.model_name": "llama-3",
            "llm.token_count.prompt": 5,
            "llm.token_count.completion": 6,
        }
        post(otlp, json_request(json_span("ChatCompletion", span)))
        [op] = otlp.ops()
        assert op["output_summary"] == "5 → 6 tokens"
        assert op["attributes"]["gen_ai.request.model"] == "llama-3"

    def test_failure_uses_status_message_and_finish_reasons_when_no_usage(
        self, otlp: OtlpDaemon
    ) -> None:
        failed = json_span(
            "chat m",
            {"gen_ai.operation.name": "chat", "error.type": "timeout"},
            span_id="0000000000000001",
            status={"code": 2, "message": "upstream timed out"},
        )
        stopped = json_span(
            "chat m",
            {"gen_ai.operation.name": "chat", "gen_ai.response.finish_reasons": ["stop"]},
            span_id="0000000000000002",
        )
        no_message = json_span(
            "chat m",
            {"gen_ai.operation.name": "chat", "error.type": "RateLimitError"},
            span_id="0000000000000003",
            status={"code": "STATUS_CODE_ERROR"},
        )
        post(otlp, json_request(failed, stopped, no_message))
        first, second, third = otlp.ops()
        assert first["success"] is False and first["error"] == "upstream timed out"
        assert first["output_summary"] == "ERROR: upstream timed out"
        assert "sig_hash" not in first  # derive_sig_hash is off by default
        assert second["success"] is True and second["output_summary"] == "stop"
        assert third["error"] == "RateLimitError"

    def test_non_genai_spans_are_ignored_not_rejected(self, otlp: OtlpDaemon) -> None:
        plain = json_span("GET /health", {"http.method": "GET"}, span_id="00000000000000aa")
        reply = post(otlp, json_request(plain, json_span("chat", CHAT)))
        assert reply.json() == {}  # no partial_success: ignoring is not rejecting
        assert [op["input_summary"] for op in otlp.ops()] == ["chat"]
        assert otlp.spans("ignored") == 1
        assert otlp.spans("accepted") == 1
        assert otlp.spans("rejected") == 0

    def test_mapping_keys(self, start_otlp) -> None:  # type: ignore[no-untyped-def]
        otlp = start_otlp(
            'all_spans = true\nsource = "fleet"\nstaffer_attribute = "user.id"\n'
            "derive_sig_hash = true"
        )
        plain = json_span("GET /x", {"user.id": "u9"}, span_id="00000000000000aa")
        failed = json_span(
            "chat",
            {"gen_ai.operation.name": "chat", "error.type": "Boom", "gen_ai.agent.name": "a"},
            status={"code": 2},
        )
        tagged = json_span(
            "chat",
            {"gen_ai.operation.name": "chat", "observer.sig_hash": "given"},
            span_id="00000000000000bb",
            status={"code": 2},
        )
        post(otlp, json_request(plain, failed, tagged))
        plain_op, failed_op, tagged_op = otlp.ops()
        assert plain_op["source"] == "fleet" and plain_op["staffer_id"] == "u9"
        assert plain_op["output_summary"] == "ok"
        assert "staffer_id" not in failed_op  # staffer_attribute replaces the default chain
        assert len(failed_op["sig_hash"]) == 16
        assert tagged_op["sig_hash"] == "given"


class TestPartialSuccess:
    def test_unmappable_spans_are_rejected_the_rest_accepted(self, otlp: OtlpDaemon) -> None:
        bad_id = json_span("chat", CHAT, span_id="xyz")
        backwards = json_span("chat", CHAT, span_id="00000000000000cc", duration_ns=-5)
        bad_tokens = json_span(
            "chat", {**CHAT, "gen_ai.usage.input_tokens": "many"}, span_id="00000000000000dd"
        )
        huge = json_span("x" * 3000, CHAT, span_id="00000000000000ee")
        reply = post(
            otlp, json_request(bad_id, json_span("chat", CHAT), backwards, bad_tokens, huge)
        )
        assert reply.status_code == 200
        partial = reply.json()["partialSuccess"]
        assert partial["rejectedSpans"] == "4"
        message = partial["errorMessage"]
        assert "span_id 'xyz'" in message and "end_time_unix_nano" in message
        assert "gen_ai.usage.input_tokens" in message and "and 1 more" in message
        assert len(otlp.ops()) == 1
        assert otlp.spans("rejected") == 4

    def test_partial_success_in_protobuf(self, otlp: OtlpDaemon) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as service
        from opentelemetry.proto.trace.v1 import trace_pb2

        request = service.ExportTraceServiceRequest()
        span = request.resource_spans.add().scope_spans.add().spans.add()
        span.name = "chat"
        span.trace_id = bytes(16)  # all zero: invalid
        span.span_id = bytes.fromhex(SPAN_ID)
        span.start_time_unix_nano = 1
        span.end_time_unix_nano = 2
        span.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
        span.status.code = trace_pb2.Status.STATUS_CODE_OK
        reply = post(otlp, request.SerializeToString(), PROTOBUF)
        assert reply.status_code == 200
        assert reply.headers["content-type"] == "application/x-protobuf"
        answer = service.ExportTraceServiceResponse.FromString(reply.content)
        assert answer.partial_success.rejected_spans == 1
        assert "trace_id" in answer.partial_success.error_message
        assert otlp.ops() == []


def status_of(reply: httpx.Response) -> tuple[int, str]:
    """The (code, message) of a google.rpc.Status answer, in either encoding."""
    if reply.headers["content-type"] == "application/json":
        body = reply.json()
        return body["code"], body["message"]
    from google.rpc import status_pb2

    status = status_pb2.Status.FromString(reply.content)
    return status.code, status.message


class TestErrors:
    @pytest.mark.parametrize("headers", [JSON, PROTOBUF], ids=["json", "protobuf"])
    def test_undecodable_body_is_400_as_a_status_in_the_request_encoding(
        self, otlp: OtlpDaemon, headers: dict[str, str]
    ) -> None:
        reply = post(otlp, b"\xff\xff not it", headers)
        assert reply.status_code == 400
        assert reply.headers["content-type"] == headers["Content-Type"]
        code, message = status_of(reply)
        assert code == 3 and "ExportTraceServiceRequest" in message

    def test_bad_gzip_is_400(self, otlp: OtlpDaemon) -> None:
        reply = post(otlp, b"not gzip", {**JSON, "Content-Encoding": "gzip"})
        assert reply.status_code == 400 and "gzip" in status_of(reply)[1]

    def test_other_content_type_is_415(self, otlp: OtlpDaemon) -> None:
        reply = post(otlp, b"{}", {"Content-Type": "text/plain"})
        assert reply.status_code == 415
        assert "application/x-protobuf" in status_of(reply)[1]
        zstd = post(otlp, b"{}", {**JSON, "Content-Encoding": "zstd"})
        assert zstd.status_code == 415 and "zstd" in status_of(zstd)[1]

    @pytest.mark.parametrize("path", ["/v1/metrics", "/v1/logs", "/events"])
    def test_other_signals_are_404(self, otlp: OtlpDaemon, path: str) -> None:
        reply = httpx.post(f"{otlp.url}{path}", content=b"{}", headers=JSON)
        assert reply.status_code == 404 and status_of(reply)[0] == 5

    def test_get_is_405(self, otlp: OtlpDaemon) -> None:
        reply = httpx.get(otlp.traces)
        assert reply.status_code == 405 and reply.headers["allow"] == "POST"

    def test_body_over_max_body_bytes_is_413_unread(self, start_otlp) -> None:  # type: ignore[no-untyped-def]
        otlp = start_otlp("max_body_bytes = 1000")
        reply = post(otlp, b"x" * 2000, PROTOBUF)
        assert reply.status_code == 413
        assert "max_body_bytes" in status_of(reply)[1]

    def test_gzip_bomb_is_413_without_inflating_it_whole(self, start_otlp) -> None:  # type: ignore[no-untyped-def]
        otlp = start_otlp("max_decompressed_bytes = 1048576")
        squeezer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        zeros = bytes(1 << 20)
        bomb = b"".join(squeezer.compress(zeros) for _ in range(512)) + squeezer.flush()
        assert len(bomb) < 1 << 20  # 512 MiB inflated, under 1 MiB on the wire
        before = peak_rss(otlp)
        reply = post(otlp, bomb, {**PROTOBUF, "Content-Encoding": "gzip"})
        assert reply.status_code == 413
        assert "max_decompressed_bytes" in status_of(reply)[1]
        assert peak_rss(otlp) - before < 64 << 20  # it never held the 512 MiB
        # Under the bound, the same encoding is taken.
        small = gzip.compress(json.dumps(json_request(json_span("chat", CHAT))).encode())
        assert post(otlp, small, {**JSON, "Content-Encoding": "gzip"}).status_code == 200

    def test_more_spans_than_one_request_may_bring_is_413_not_503(self, otlp: OtlpDaemon) -> None:
        spans = [
            json_span("chat", CHAT, span_id=f"{number + 1:016x}")
            for number in range(MAX_BATCH_EVENTS + 1)
        ]
        gzipped = {**JSON, "Content-Encoding": "gzip"}
        body = gzip.compress(json.dumps(json_request(*spans)).encode())
        reply = post(otlp, body, gzipped)
        assert reply.status_code == 413  # a retry could never succeed: not 503
        assert str(MAX_BATCH_EVENTS) in status_of(reply)[1]
        assert otlp.ops() == []
        body = gzip.compress(json.dumps(json_request(*spans[:-1])).encode())
        assert post(otlp, body, gzipped).status_code == 200

    def test_token_is_required_when_set(self, start_otlp) -> None:  # type: ignore[no-untyped-def]
        otlp = start_otlp('token = "s3cret"')
        body = json_request(json_span("chat", CHAT))
        assert post(otlp, body).status_code == 401
        wrong = post(otlp, body, {**JSON, "Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and status_of(wrong)[0] == 16
        assert otlp.ops() == []
        right = post(otlp, body, {**JSON, "Authorization": "Bearer s3cret"})
        assert right.status_code == 200 and len(otlp.ops()) == 1

    def test_failing_sink_is_503_with_retry_after(self, start_otlp) -> None:  # type: ignore[no-untyped-def]
        otlp = start_otlp(path="/dev/full")
        reply = post(otlp, json_request(json_span("chat", CHAT)))
        assert reply.status_code == 503
        assert int(reply.headers["retry-after"]) >= 1
        assert status_of(reply)[0] == 14
        assert httpx.get(f"{otlp.daemon.url}/health").json()["ops_in_ring"] == 0


def peak_rss(otlp: OtlpDaemon) -> int:
    """The daemon's peak resident memory so far (VmHWM), in bytes."""
    status = Path(f"/proc/{otlp.daemon.process.pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024
