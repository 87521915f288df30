"""Token usage through the gateway proxy against a real model server (contract §13.2):
the real ``openai`` SDK calls llama.cpp's OpenAI-compatible server through the proxy,
and the op's model and token counts are what the server reported.

Needs ``LLAMA_URL`` (``bash ci/llama-server.sh start`` prints it): the ``llama_url``
fixture skips without it locally and fails in CI.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest
from gateway_upstream import daemon_config, the_op

from observer_core.testing import Daemon, DaemonFactory, free_port, wait_for

pytestmark = pytest.mark.llm

MESSAGES: Any = [{"role": "user", "content": "Name one colour."}]
TIMEOUT_SECS = 120


def _proxy(observer_daemon: DaemonFactory, llama_url: str) -> tuple[Daemon, openai.OpenAI]:
    port = free_port()
    daemon = observer_daemon.start(
        daemon_config(
            f"""
            [sources.gateway]
            url = "{llama_url}"
            listen = "127.0.0.1:{port}"
            health_check = false
            timeout_secs = {TIMEOUT_SECS}
            """
        )
    )
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key="sk-none",
        max_retries=0,
        timeout=TIMEOUT_SECS,
    )
    return daemon, client


def _tokens(op: dict[str, Any]) -> tuple[Any, Any]:
    attributes = op["attributes"]
    return (
        attributes.get("gen_ai.usage.input_tokens"),
        attributes.get("gen_ai.usage.output_tokens"),
    )


def test_a_real_reply_usage_is_in_the_op_and_metrics(observer_daemon, llama_url):
    daemon, client = _proxy(observer_daemon, llama_url)
    completion = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=8)
    assert completion.usage is not None
    op = the_op(daemon, "/v1/chat/completions")
    assert op["attributes"]["gen_ai.request.model"] == "smollm2"
    assert op["attributes"]["gen_ai.response.model"] == completion.model
    reported = (completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert _tokens(op) == reported
    labels = {"source": "mcp", "model": completion.model}
    wait_for(
        lambda: (
            daemon.metric("observer_gen_ai_tokens_total", type="input", **labels) == reported[0]
        ),
        what="the input tokens in /metrics",
    )
    assert daemon.metric("observer_gen_ai_tokens_total", type="output", **labels) == reported[1]


def test_a_real_stream_usage_is_in_the_op(observer_daemon, llama_url):
    """Streamed with ``include_usage``: the op's counts are those of the stream's last
    chunk. (llama-cpp-python's server may ignore ``stream_options`` and report no usage in
    a stream; then the op must carry no token counts either, and still the models.)"""
    daemon, client = _proxy(observer_daemon, llama_url)
    stream = client.chat.completions.create(
        model="smollm2",
        messages=MESSAGES,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks
    usage = next((chunk.usage for chunk in reversed(chunks) if chunk.usage), None)
    reported = (usage.prompt_tokens, usage.completion_tokens) if usage else (None, None)
    op = the_op(daemon, "/v1/chat/completions")
    assert op["success"] is True
    assert op["attributes"]["gen_ai.request.model"] == "smollm2"
    assert op["attributes"]["gen_ai.response.model"] == chunks[-1].model
    assert _tokens(op) == reported
