"""Token usage on every model call (contract §13.2), end to end: a real daemon with a
gateway proxy in front of an OpenAI-style upstream, the real ``openai`` SDK as the
client, and ``/metrics`` and ``/stats`` read over HTTP. Each test uses its own paths
and models, so it finds its own ops and samples."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from gateway_upstream import (
    OPENAI_USAGE,
    Exchange,
    Proxies,
    Seen,
    Upstream,
    daemon_config,
    openai_route,
)

from observer_core.testing import DaemonFactory, free_port, wait_for

MESSAGES: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    upstream = Upstream()
    port = free_port()
    factory = DaemonFactory(tmp_path_factory.mktemp("gateway-tokens"))
    daemon = factory.start(
        daemon_config(
            f"""
            [sources.gateway]
            url = "{upstream.url}"
            listen = "127.0.0.1:{port}"
            health_check = false
            """
        )
    )
    try:
        yield Proxies(daemon, upstream, {"gateway": port})
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.logs()
    finally:
        factory.close()
        upstream.close()


def sdk(proxies: Proxies, prefix: str) -> openai.OpenAI:
    """An OpenAI client whose calls go through the proxy to ``{prefix}/v1/...``."""
    return openai.OpenAI(base_url=f"{proxies.url()}{prefix}/v1", api_key="sk-test", max_retries=0)


def usage_attributes(asked: str, replied: str, prompt: int, completion: int) -> dict[str, Any]:
    return {
        "http_status": 200,
        "gen_ai.request.model": asked,
        "gen_ai.response.model": replied,
        "gen_ai.usage.input_tokens": prompt,
        "gen_ai.usage.output_tokens": completion,
    }


def test_reply_usage_is_in_the_op(proxies: Proxies) -> None:
    proxies.upstream.routes["/plain/v1/chat/completions"] = openai_route("hi", "m-plain-0613")
    completion = sdk(proxies, "/plain").chat.completions.create(model="m-plain", messages=MESSAGES)
    assert completion.usage is not None
    op = proxies.op("/plain/v1/chat/completions")
    assert op["attributes"] == usage_attributes(
        "m-plain",
        "m-plain-0613",
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    assert op["output_summary"].startswith('{"id":"chatcmpl-1"')  # the summary is unchanged


def test_streamed_usage_comes_from_the_last_chunk(proxies: Proxies) -> None:
    proxies.upstream.routes["/stream/v1/chat/completions"] = openai_route(
        "a streamed answer of several words", "m-stream-0613"
    )
    stream = sdk(proxies, "/stream").chat.completions.create(
        model="m-stream", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "a streamed answer of several words "  # reached the client unchanged
    usage = chunks[-1].usage
    assert usage is not None
    op = proxies.op("/stream/v1/chat/completions")
    assert op["attributes"] == usage_attributes(
        "m-stream", "m-stream-0613", usage.prompt_tokens, usage.completion_tokens
    )


def test_stream_without_usage_records_the_models(proxies: Proxies) -> None:
    proxies.upstream.routes["/nousage/v1/chat/completions"] = openai_route("hi", "m-n-0613")
    stream = sdk(proxies, "/nousage").chat.completions.create(
        model="m-n", messages=MESSAGES, stream=True
    )
    assert [chunk.usage for chunk in stream] == [None]
    op = proxies.op("/nousage/v1/chat/completions")
    assert op["attributes"] == {
        "http_status": 200,
        "gen_ai.request.model": "m-n",
        "gen_ai.response.model": "m-n-0613",
    }


def test_a_request_body_over_1_mib_is_forwarded_but_not_read(proxies: Proxies) -> None:
    def route(exchange: Exchange, seen: Seen) -> None:
        exchange.send_json(200, {"size": len(seen.body), "usage": OPENAI_USAGE})

    proxies.upstream.routes["/large"] = route
    body = json.dumps({"model": "m-large", "pad": "x" * (1 << 20)}).encode()
    reply, data = proxies.request("POST", "/large", body, {"Content-Type": "application/json"})
    assert (reply.status, json.loads(data)["size"]) == (200, len(body))
    (seen,) = proxies.upstream.received("/large")
    assert seen.body == body
    attributes = proxies.op("/large")["attributes"]
    assert "gen_ai.request.model" not in attributes
    assert attributes["gen_ai.usage.input_tokens"] == OPENAI_USAGE["prompt_tokens"]


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


@pytest.mark.parametrize(
    ("padding", "expected"),
    [
        (60 << 10, (999, 998)),  # under 64 KiB: read, and the later usage wins
        (70 << 10, (3, 2)),  # over 64 KiB: skipped
    ],
)
def test_large_event_is_forwarded_unchanged_and_read_only_up_to_64_kib(
    proxies: Proxies, padding: int, expected: tuple[int, int]
) -> None:
    path = f"/big{padding}"
    later = {"prompt_tokens": 999, "completion_tokens": 998}
    big = _event({"model": "m-big", "pad": "x" * padding, "choices": [], "usage": later})
    body = _event({"model": "m-big", "usage": OPENAI_USAGE}) + big + b"data: [DONE]\n\n"

    def route(exchange: Exchange, seen: Seen) -> None:
        exchange.start_chunked(200, "text/event-stream")
        for start in range(0, len(body), 5000):  # the big event comes in pieces
            exchange.chunk(body[start : start + 5000])
        exchange.end_chunked()

    proxies.upstream.routes[path] = route
    reply, data = proxies.request("POST", path, b"{}", {"Content-Type": "application/json"})
    assert reply.status == 200
    assert data == body
    attributes = proxies.op(path)["attributes"]
    found = (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"])
    assert found == expected


def test_metrics_and_stats_count_tokens_by_model(proxies: Proxies) -> None:
    proxies.upstream.routes["/counted/v1/chat/completions"] = openai_route("hi", "m-count-0613")
    client = sdk(proxies, "/counted")
    client.chat.completions.create(model="m-count", messages=MESSAGES)
    stream = client.chat.completions.create(
        model="m-count", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    list(stream)
    daemon = proxies.daemon
    labels = {"source": "mcp", "model": "m-count-0613"}
    calls = "observer_gen_ai_calls_total"
    wait_for(lambda: daemon.metric(calls, outcome="success", **labels) == 2, what="two calls")
    tokens = "observer_gen_ai_tokens_total"
    assert daemon.metric(tokens, type="input", **labels) == 2 * OPENAI_USAGE["prompt_tokens"]
    assert daemon.metric(tokens, type="output", **labels) == 2 * OPENAI_USAGE["completion_tokens"]
    assert daemon.metric(calls, outcome="failure", **labels) is None
    stats = httpx.get(f"{daemon.url}/stats").json()["tokens_by_model"]
    assert stats["m-count-0613"] == {"calls": 2, "input_tokens": 6, "output_tokens": 4}


def _op(model: str, number: int, **attributes: Any) -> dict[str, Any]:
    return {
        "timestamp": "2026-01-01T00:00:00.000Z",
        "endpoint": f"/events-model-{number}",
        "input_summary": "call",
        "success": True,
        "duration_ms": 1,
        "output_summary": "ok",
        "source": "agent",
        "attributes": {"gen_ai.request.model": model, **attributes},
    }


def test_a_batch_is_summed_per_model_and_outcome(proxies: Proxies) -> None:
    """(Runs before the test that fills the 64 model labels.)"""
    daemon = proxies.daemon
    counts = [(5, 1), (7, None), (None, 2), (None, None)]
    ops = [
        _op(
            "batch-model",
            number,
            **{
                key: value
                for key, value in (
                    ("gen_ai.usage.input_tokens", prompt),
                    ("gen_ai.usage.output_tokens", completion),
                )
                if value is not None
            },
        )
        for number, (prompt, completion) in enumerate(counts)
    ]
    ops.append({**_op("batch-model", 9, **{"gen_ai.usage.input_tokens": 100}), "success": False})
    daemon.post_events(ops)
    labels = {"source": "agent", "model": "batch-model"}
    calls = "observer_gen_ai_calls_total"
    wait_for(lambda: daemon.metric(calls, outcome="success", **labels) == 4, what="4 calls")
    assert daemon.metric(calls, outcome="failure", **labels) == 1
    assert daemon.metric("observer_gen_ai_tokens_total", type="input", **labels) == 112
    assert daemon.metric("observer_gen_ai_tokens_total", type="output", **labels) == 3


def test_any_source_is_counted_with_bounded_model_labels(proxies: Proxies) -> None:
    """Ops from ``/events`` count too; a model label is cut to 128 bytes and at most 64
    models get their own label (SECURITY §11.3)."""
    daemon = proxies.daemon
    long_model = "é" * 100  # 200 bytes
    ops = [_op(long_model, 0, **{"gen_ai.usage.input_tokens": 5})]
    ops += [_op(f"many-{n}", n, **{"gen_ai.usage.output_tokens": 1}) for n in range(1, 71)]
    ops.append({**_op("failing", 71), "success": False, "error": "boom"})
    ops = [{**op, "source": "spans"} for op in ops]
    daemon.post_events(ops)
    calls = "observer_gen_ai_calls_total"
    cut = "é" * 64  # 128 bytes
    wait_for(
        lambda: daemon.metric(calls, source="spans", model=cut, outcome="success") == 1,
        what="the long model's call, its label cut",
    )
    input_tokens = {"source": "spans", "model": cut, "type": "input"}
    assert daemon.metric("observer_gen_ai_tokens_total", **input_tokens) == 5
    text = httpx.get(f"{daemon.url}/metrics").text
    models = {
        line.split('model="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith(calls + "{")
    }
    assert len(models) == 65 and "other" in models  # 64 models, and the rest
    counted = daemon.metric(calls, source="spans", model="other", outcome="success") or 0
    failed = daemon.metric(calls, source="spans", model="other", outcome="failure") or 0
    assert counted + failed + sum(
        daemon.metric(calls, source="spans", model=model, outcome="success") or 0
        for model in models - {"other"}
    ) == len(ops)
    stats = httpx.get(f"{daemon.url}/stats").json()["tokens_by_model"]
    assert len(stats) == 64 and "other" in stats  # the 63 models that used the most tokens
    assert stats[cut] == {"calls": 1, "input_tokens": 5, "output_tokens": 0}
