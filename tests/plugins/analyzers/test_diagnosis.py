"""The diagnosis analyzer against stub LLMs (lakehouse, ollama, openai) and a stub gateway."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from observer_plugins.analyzers.diagnosis import DEFAULT_PROMPT

from observer_core.testing import RecordedRequest, StubReply, wait_for

INSTANCE = "analyzers.diagnosis"


def config(llm_url: str, gateway_url: str, extra: str = "") -> str:
    return f"""
[observer]
cycle_secs = 0.2
state_dir = "state"
[sources.http]
port = {{port}}
[analyzers.diagnosis]
url = "{llm_url}"
{extra}
[sinks.gateway_log]
url = "{gateway_url}"
"""


def failure(number: int, error: str | None = "boom") -> dict[str, Any]:
    event: dict[str, Any] = {
        "endpoint": f"/tool/{number}",
        "input_summary": f"input {number}",
        "success": False,
        "source": "mcp",
    }
    if error is not None:
        event["error"] = f"{error} {number}"
    return event


def line(number: int, error: str | None = "boom") -> str:
    return f"[/tool/{number}] input {number}: {f'{error} {number}' if error else '?'}"


def test_diagnoses_each_new_failure_once(observer_daemon, stub_server):
    llm, gateway = stub_server(), stub_server()
    llm.replies["/ai/generate"] = StubReply(body={"text": "Retry with a smaller page."})
    daemon = observer_daemon.start(config(llm.url, gateway.url))

    daemon.post_events(
        [failure(1), {"success": True, "endpoint": "/ok", "source": "mcp"}, failure(2, None)]
    )
    wait_for(lambda: gateway.received("/log"), what="the diagnosis at /log")
    lines = f"{line(1)}\n{line(2, None)}"
    assert [request.json() for request in llm.received("/ai/generate")] == [
        {
            "prompt": DEFAULT_PROMPT.replace("{errors}", lines),
            "model": "qwen2.5",
            "max_tokens": 400,
            "temperature": 0.2,
        }
    ]
    assert [request.json() for request in gateway.received("/log")] == [
        {
            "operation": "error_analysis: 2 failures",
            "approach": "LLM-analyzed error patterns",
            "result": "Retry with a smaller page.",
            "context": lines,
        }
    ]

    daemon.wait_cycles(4)
    assert len(llm.received("/ai/generate")) == 1, "diagnosed again without new failures"

    llm.replies["/ai/generate"] = StubReply(body={"text": "é" * 700})
    daemon.post_events([failure(number) for number in range(3, 14)])
    wait_for(lambda: len(gateway.received("/log")) == 2, what="a second diagnosis")
    last_ten = "\n".join(line(number) for number in range(4, 14))
    assert llm.received("/ai/generate")[1].json()["prompt"] == DEFAULT_PROMPT.replace(
        "{errors}", last_ten
    )
    assert gateway.received("/log")[1].json() == {
        "operation": "error_analysis: 13 failures",
        "approach": "LLM-analyzed error patterns",
        "result": "é" * 500,
        "context": last_ten[:500],
    }
    daemon.wait_cycles(3)
    assert len(llm.received("/ai/generate")) == 2
    assert daemon.metric("observer_diagnoses_total", instance=INSTANCE) == 2
    assert daemon.stop() == 0


def test_ops_whose_client_left_are_not_failures(observer_daemon, stub_server):
    llm, gateway = stub_server(), stub_server()
    llm.replies["/ai/generate"] = StubReply(body={"text": "Look at /tool/3."})
    daemon = observer_daemon.start(config(llm.url, gateway.url))
    left = [{**failure(number), "attributes": {"client_left": True}} for number in (1, 2)]
    daemon.post_events(left)
    daemon.wait_cycles(3)
    assert llm.received("/ai/generate") == [], "diagnosed ops whose client left"

    daemon.post_events([failure(3)])
    wait_for(lambda: gateway.received("/log"), what="the diagnosis at /log")
    [request] = llm.received("/ai/generate")
    assert request.json()["prompt"] == DEFAULT_PROMPT.replace("{errors}", line(3))
    assert gateway.received("/log")[0].json()["operation"] == "error_analysis: 1 failures"


OLLAMA = {
    "path": "/api/generate",
    "reply": {"model": "m", "response": "Check the index.", "done": True},
    "request": lambda prompt: {
        "model": "qwen2.5",
        "prompt": prompt,
        "stream": False,
        "options": {"num_predict": 64, "temperature": 0.5},
    },
}
OPENAI = {
    "path": "/v1/chat/completions",
    "reply": {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Check the index."},
                "finish_reason": "stop",
            }
        ],
    },
    "request": lambda prompt: {
        "model": "qwen2.5",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 64,
        "temperature": 0.5,
    },
}


@pytest.mark.parametrize(
    ("provider", "shape", "suffix"),
    [("ollama", OLLAMA, ""), ("openai", OPENAI, ""), ("openai", OPENAI, "/v1/")],
    ids=["ollama", "openai", "openai-url-with-v1"],
)
def test_provider_request_shapes(observer_daemon, stub_server, provider, shape, suffix):
    llm, gateway = stub_server(), stub_server()
    llm.replies[shape["path"]] = StubReply(body=shape["reply"])
    extra = f'provider = "{provider}"\nmax_tokens = 64\ntemperature = 0.5'
    daemon = observer_daemon.start(config(llm.url + suffix, gateway.url, extra))
    daemon.post_events([failure(1)])
    wait_for(lambda: gateway.received("/log"), what="the diagnosis at /log")
    prompt = DEFAULT_PROMPT.replace("{errors}", line(1))
    assert [request.path for request in llm.requests] == [shape["path"]]
    assert llm.requests[0].json() == shape["request"](prompt)
    assert llm.requests[0].headers["content-type"] == "application/json"
    assert "authorization" not in llm.requests[0].headers
    assert gateway.received("/log")[0].json()["result"] == "Check the index."


def test_api_key_is_sent_and_never_logged(observer_daemon, stub_server):
    secret = "sk-test-SECRET-4242"
    llm, gateway = stub_server(), stub_server()
    llm.replies["/v1/chat/completions"] = StubReply(body=OPENAI["reply"])
    extra = 'provider = "openai"\napi_key_env = "DIAGNOSIS_TEST_KEY"'
    daemon = observer_daemon.start(
        config(llm.url, gateway.url, extra),
        args=("--log-level", "debug"),
        env={"DIAGNOSIS_TEST_KEY": secret},
    )
    daemon.post_events([failure(1)])
    wait_for(lambda: gateway.received("/log"), what="the diagnosis at /log")
    assert llm.requests[0].headers["authorization"] == f"Bearer {secret}"
    assert "authorization" not in gateway.received("/log")[0].headers
    assert daemon.stop() == 0
    assert secret not in daemon.logs() + daemon.stdout()
    resolved = observer_daemon.run("check", "--resolved", "--config", str(daemon.config_path))
    assert secret not in resolved.stdout + resolved.stderr


def test_missing_api_key_variable_stops_the_start(observer_daemon, stub_server):
    extra = 'provider = "openai"\napi_key_env = "DIAGNOSIS_TEST_KEY_NOT_SET_ANYWHERE"'
    nowhere = "http://127.0.0.1:9"
    daemon = observer_daemon.start(config(nowhere, nowhere, extra), wait=False)
    assert daemon.process.wait(15) == 1
    assert "[analyzers.diagnosis] cannot start" in daemon.logs()
    assert "DIAGNOSIS_TEST_KEY_NOT_SET_ANYWHERE is not set" in daemon.logs()


BAD_ANSWERS = {
    "garbage": (StubReply(body=b"<html>502 Bad Gateway</html>"), "garbage"),
    "not-json-text-field": (StubReply(body={"text": 42}), "garbage"),
    "no-text": (StubReply(body={"error": "model not loaded"}), "garbage"),
    "empty": (StubReply(body={"text": "  \n"}), "empty"),
    "http-500": (StubReply(status=500, body={"error": "oom"}), "http_error"),
    "disconnect": (StubReply(disconnect=True), "unreachable"),
    "timeout": (StubReply(body={"text": "too late"}, delay=1.5), "timeout"),
}


@pytest.mark.parametrize("case", BAD_ANSWERS, ids=list(BAD_ANSWERS))
def test_bad_answer_emits_nothing_is_counted_and_retried(observer_daemon, stub_server, case):
    bad, reason = BAD_ANSWERS[case]
    llm, gateway = stub_server(), stub_server()
    calls: list[RecordedRequest] = []

    def answer(request: RecordedRequest) -> StubReply:
        calls.append(request)
        return bad if len(calls) == 1 else StubReply(body={"text": "Fixed."})

    llm.replies["/ai/generate"] = answer
    daemon = observer_daemon.start(config(llm.url, gateway.url, "timeout_secs = 0.5"))
    daemon.post_events([failure(1), failure(2)])
    wait_for(lambda: gateway.received("/log"), what="the diagnosis after the retry")
    prompts = [request.json()["prompt"] for request in llm.received("/ai/generate")]
    assert len(prompts) == 2 and prompts[0] == prompts[1], "the same failures are retried"
    assert [request.json()["result"] for request in gateway.received("/log")] == ["Fixed."]
    assert daemon.metric("observer_diagnosis_failures_total", instance=INSTANCE, reason=reason) == 1
    assert f"no diagnosis ({reason})" in daemon.logs()
    daemon.wait_cycles(3)
    assert len(llm.received("/ai/generate")) == 2
    assert len(gateway.received("/log")) == 1


def test_slow_model_runs_beside_the_cycle_one_call_at_a_time(observer_daemon, stub_server):
    llm, gateway = stub_server(), stub_server()
    llm.replies["/ai/generate"] = StubReply(body={"text": "Slow answer."}, delay=3.0)
    daemon = observer_daemon.start(config(llm.url, gateway.url))
    daemon.post_events([failure(1)])
    wait_for(lambda: llm.received("/ai/generate"), what="the first call")
    daemon.post_events([failure(2)])
    daemon.wait_cycles(5, timeout=2.5)  # cycles keep coming while the model thinks
    assert len(llm.received("/ai/generate")) == 1, "a second call while one is in flight"
    assert not gateway.received("/log")
    llm.replies["/ai/generate"] = StubReply(body={"text": "Quick answer."})
    wait_for(lambda: len(gateway.received("/log")) == 2, what="both diagnoses")
    assert [request.json()["result"] for request in gateway.received("/log")] == [
        "Slow answer.",
        "Quick answer.",
    ]
    assert llm.received("/ai/generate")[1].json()["prompt"].count("[/tool/") == 2


@pytest.mark.parametrize(
    ("provider", "path", "reply", "counted"),
    [
        (
            "openai",
            OPENAI["path"],
            {
                **OPENAI["reply"],
                "model": "qwen2.5-7b-instruct",
                "usage": {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160},
            },
            ("qwen2.5-7b-instruct", 120, 40),
        ),
        (
            "ollama",
            OLLAMA["path"],
            {**OLLAMA["reply"], "prompt_eval_count": 90, "eval_count": 30},
            ("m", 90, 30),
        ),
        (
            "openai",
            OPENAI["path"],
            {**OPENAI["reply"], "usage": {"prompt_tokens": 7}},
            ("qwen2.5", 7, None),
        ),
        ("lakehouse", "/ai/generate", {"text": "Check the index."}, None),
    ],
    ids=["openai", "ollama", "openai-no-model-in-reply", "lakehouse-reports-no-usage"],
)
def test_own_model_calls_are_counted(observer_daemon, stub_server, provider, path, reply, counted):
    """What the observer itself spends (contract §13.2): source ``observer``, the reply's
    model (else the one asked for); a reply without usage counts nothing."""
    llm, gateway = stub_server(), stub_server()
    llm.replies[path] = StubReply(body=reply)
    daemon = observer_daemon.start(config(llm.url, gateway.url, f'provider = "{provider}"'))
    daemon.post_events([failure(1)])
    wait_for(lambda: gateway.received("/log"), what="the diagnosis at /log")
    if counted is None:
        assert "observer_gen_ai" not in httpx.get(f"{daemon.url}/metrics").text
        return
    model, prompt, completion = counted
    labels = {"source": "observer", "model": model}
    assert daemon.metric("observer_gen_ai_calls_total", outcome="success", **labels) == 1
    tokens = "observer_gen_ai_tokens_total"
    assert daemon.metric(tokens, type="input", **labels) == prompt
    assert daemon.metric(tokens, type="output", **labels) == completion
    assert daemon.stop() == 0
