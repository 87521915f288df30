"""The diagnosis analyzer against a real model (llama.cpp's OpenAI-compatible server).

Needs ``LLAMA_URL`` (``bash ci/llama-server.sh start`` prints it): the
``llama_url`` fixture skips without it locally and fails in CI. Model output
is not deterministic, so this checks the structure of what reaches the
gateway's ``/log`` and that the text is not empty, never its wording.
"""

from __future__ import annotations

import pytest

from observer_core.testing import wait_for

pytestmark = pytest.mark.llm


def test_a_real_model_diagnoses_failures(observer_daemon, stub_server, llama_url):
    gateway = stub_server()
    daemon = observer_daemon.start(
        f"""
        [observer]
        cycle_secs = 0.5
        state_dir = "state"
        [sources.http]
        port = {{port}}
        [analyzers.diagnosis]
        provider = "openai"
        url = "{llama_url}"
        model = "smollm2"
        max_tokens = 64
        temperature = 0.2
        timeout_secs = 120
        [sinks.gateway_log]
        url = "{gateway.url}"
        """
    )
    daemon.post_events(
        [
            {
                "endpoint": "/search",
                "input_summary": f"query {number}",
                "success": False,
                "error": "timeout after 30s",
                "source": "mcp",
            }
            for number in range(3)
        ]
    )
    wait_for(lambda: gateway.received("/log"), timeout=150, what="a diagnosis from the model")
    [entry] = [request.json() for request in gateway.received("/log")]
    assert set(entry) == {"operation", "approach", "result", "context"}
    assert entry["operation"] == "error_analysis: 3 failures"
    assert entry["approach"] == "LLM-analyzed error patterns"
    assert isinstance(entry["result"], str) and entry["result"].strip()
    assert len(entry["result"]) <= 500
    assert entry["context"] == "\n".join(
        f"[/search] query {number}: timeout after 30s" for number in range(3)
    )
    assert daemon.metric("observer_diagnoses_total", instance="analyzers.diagnosis") == 1
    assert daemon.stop() == 0
