"""The gateway source's Python API (ObservedGateway, AsyncObservedGateway), end to end:
a real daemon receives the ops, a stub plays the gateway."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_upstream import Upstream, daemon_config, recorded_ops, the_op
from observer_plugins.sources.gateway import AsyncObservedGateway, ObservedGateway, OpRecorder

from observer_core.testing import (
    Daemon,
    DaemonFactory,
    StubReply,
    StubServer,
    free_port,
    wait_for,
)

EXAMPLE = Path(__file__).parents[3] / "examples" / "gateway_client.py"
CONFIG = daemon_config()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    factory = DaemonFactory(tmp_path_factory.mktemp("gateway-client"))
    try:
        yield factory.start(CONFIG)
    finally:
        factory.close()


@pytest.fixture(scope="module")
def gateway() -> Iterator[StubServer]:
    stub = StubServer()
    try:
        yield stub
    finally:
        stub.close()


def test_call_returns_the_json_unchanged_and_records_it(
    daemon: Daemon, gateway: StubServer
) -> None:
    reply = {"rows": [{"id": 1}, {"id": 2}], "row_count": 2, "extra": [1.5, None, "é"]}
    gateway.replies["/sync/search"] = StubReply(body=reply)
    with ObservedGateway(gateway.url, observer_url=daemon.url) as client:
        assert client.call("/sync/search", {"q": "welders"}, "search welders") == reply
    assert gateway.received("/sync/search")[0].json() == {"q": "welders"}
    op = the_op(daemon, "/sync/search")
    assert op["input_summary"] == "search welders"
    assert (op["success"], op["output_summary"], op["source"]) == (True, "2 rows", "mcp")
    assert "error" not in op and op["duration_ms"] >= 0


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [(200, {"error": "no index"}, "no index"), (500, {"detail": "boom"}, "HTTP 500")],
)
def test_failed_reply_is_returned_and_recorded(
    daemon: Daemon, gateway: StubServer, status: int, body: Any, error: str
) -> None:
    endpoint = f"/sync/fail-{status}"
    gateway.replies[endpoint] = StubReply(status=status, body=body)
    with ObservedGateway(gateway.url, observer_url=daemon.url) as client:
        assert client.call(endpoint, {}, "try") == body
    op = the_op(daemon, endpoint)
    assert (op["success"], op["error"], op["output_summary"]) == (False, error, f"ERROR: {error}")


def test_transport_error_is_reraised_after_recording(daemon: Daemon) -> None:
    client = ObservedGateway(f"http://127.0.0.1:{free_port()}", observer_url=daemon.url)
    with client, pytest.raises(httpx.ConnectError):
        client.call("/sync/unreachable", {}, "nobody home")
    op = the_op(daemon, "/sync/unreachable")
    assert op["success"] is False
    assert op["output_summary"] == f"ERROR: {op['error']}"


def test_reply_that_is_not_json_raises_as_httpx_would(daemon: Daemon, gateway: StubServer) -> None:
    gateway.replies["/sync/html"] = StubReply(body=b"<html>oops</html>")
    client = ObservedGateway(gateway.url, observer_url=daemon.url)
    with client, pytest.raises(json.JSONDecodeError):
        client.call("/sync/html", {}, "html")
    op = the_op(daemon, "/sync/html")
    assert (op["success"], op["error"]) == (False, "HTTP 200 reply is not JSON")


@pytest.mark.anyio
async def test_async_call(daemon: Daemon, gateway: StubServer) -> None:
    reply = {"answer": "forty-two", "sources": [1]}
    gateway.replies["/async/ask"] = StubReply(body=reply)
    gateway.replies["/async/hybrid"] = StubReply(body={"sql_matches": 4, "vector_reranked": 2})
    async with AsyncObservedGateway(gateway.url, observer_url=daemon.url) as client:
        assert await client.call("/async/ask", {"question": "?"}, "ask") == reply
        await client.call("/async/hybrid", {}, "hybrid search")
        with pytest.raises(httpx.ConnectError):
            await AsyncObservedGateway(
                f"http://127.0.0.1:{free_port()}", recorder=client.recorder
            ).call("/async/down", {}, "down")
    assert the_op(daemon, "/async/ask")["output_summary"] == "answer: forty-two..."
    assert the_op(daemon, "/async/hybrid")["output_summary"] == "hybrid: 4 sql → 2 results"
    assert the_op(daemon, "/async/down")["success"] is False


CHAT_REPLY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "m-0613",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
}


@pytest.mark.anyio
async def test_calls_record_the_model_and_token_usage(daemon: Daemon, gateway: StubServer) -> None:
    gateway.replies["/usage/sync"] = StubReply(body=CHAT_REPLY)
    gateway.replies["/usage/async"] = StubReply(body=CHAT_REPLY)
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with ObservedGateway(gateway.url, observer_url=daemon.url) as client:
        assert client.call("/usage/sync", request, "chat") == CHAT_REPLY
        with pytest.raises(httpx.ConnectError):  # a call that failed still names its model
            ObservedGateway(f"http://127.0.0.1:{free_port()}", recorder=client.recorder).call(
                "/usage/down", request, "chat"
            )
    async with AsyncObservedGateway(gateway.url, observer_url=daemon.url) as client:
        assert await client.call("/usage/async", request, "chat") == CHAT_REPLY
    usage = {
        "gen_ai.request.model": "m",
        "gen_ai.response.model": "m-0613",
        "gen_ai.usage.input_tokens": 11,
        "gen_ai.usage.output_tokens": 4,
    }
    assert the_op(daemon, "/usage/sync")["attributes"] == usage
    assert the_op(daemon, "/usage/async")["attributes"] == usage
    assert the_op(daemon, "/usage/down")["attributes"] == {"gen_ai.request.model": "m"}
    labels = {"source": "mcp", "model": "m-0613"}
    wait_for(
        lambda: daemon.metric("observer_gen_ai_tokens_total", type="input", **labels) == 22,
        what="the two calls' input tokens in /metrics",
    )


@pytest.fixture
def elsewhere() -> Iterator[Upstream]:
    """Another host a crafted path could try to reach."""
    stub = Upstream()
    try:
        yield stub
    finally:
        stub.close()


def _not_origin_form(elsewhere: Upstream) -> list[str]:
    authority = f"127.0.0.1:{elsewhere.port}"
    return [
        f"@{authority}/steal",  # joined to the base URL: the base becomes a user name
        f"{elsewhere.url}/steal",
        f"//{authority}/steal",
        "steal",
        "",
        "/frag#ment",
        "/sp ace",
        "/new\nline",
        "/back\\slash",
    ]


def test_call_refuses_a_path_that_is_not_origin_form(
    daemon: Daemon, gateway: StubServer, elsewhere: Upstream
) -> None:
    sent_before = len(gateway.requests)
    with ObservedGateway(gateway.url, observer_url=daemon.url) as client:
        for endpoint in _not_origin_form(elsewhere):
            with pytest.raises(ValueError, match="origin-form path") as caught:
                client.call(endpoint, {}, "crafted")
            assert repr(endpoint) in str(caught.value)
        assert len(gateway.requests) == sent_before  # nothing was sent
        client.call("/ok/@me", {}, "an @ inside a path is fine")
    assert elsewhere.seen == []
    assert gateway.received("/ok/@me")


@pytest.mark.anyio
async def test_async_call_refuses_a_path_that_is_not_origin_form(
    daemon: Daemon, gateway: StubServer, elsewhere: Upstream
) -> None:
    sent_before = len(gateway.requests)
    async with AsyncObservedGateway(gateway.url, observer_url=daemon.url) as client:
        for endpoint in _not_origin_form(elsewhere):
            with pytest.raises(ValueError, match="origin-form path"):
                await client.call(endpoint, {}, "crafted")
    assert elsewhere.seen == []
    assert len(gateway.requests) == sent_before


def _time_calls(call: Any, count: int = 100) -> float:
    started = time.perf_counter()
    for _ in range(count):
        call()
    return time.perf_counter() - started


def test_hung_observer_neither_raises_nor_slows_calls() -> None:
    fast = Upstream()  # answers in one write: ~0.5 ms a call (stub_server's take 40 ms)
    with socket.socket() as hung:  # takes connections, never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(1000)
        recorder = OpRecorder(f"http://127.0.0.1:{hung.getsockname()[1]}", flush_timeout=0.5)
        try:
            with httpx.Client() as plain:

                def direct() -> None:
                    plain.post(f"{fast.url}/fast", json={}).json()

                baseline = min(_time_calls(direct) for _ in range(3))
            with ObservedGateway(fast.url, recorder=recorder) as client:
                observed = min(
                    _time_calls(lambda: client.call("/fast", {}, "fast")) for _ in range(3)
                )
            recorder.close()
        finally:
            fast.close()
    # Waiting on the hung observer would cost seconds per call; allow for a busy machine.
    assert observed < baseline * 3 + 0.25, (observed, baseline)
    assert (recorder.dropped, recorder.sent) == (300, 0)  # none delivered, all counted


def test_full_buffer_drops_the_oldest_and_counts(gateway: StubServer) -> None:
    gateway.replies["/down/many"] = StubReply(body={})
    client = ObservedGateway(
        gateway.url, observer_url=f"http://127.0.0.1:{free_port()}", buffer_size=5
    )
    for _ in range(20):
        client.call("/down/many", {}, "many")
    assert 15 <= client.dropped <= 20
    assert client.recorder.pending <= 5
    client.close()
    assert client.dropped == 20


def test_observer_that_comes_up_later_gets_the_buffered_ops(
    observer_daemon: DaemonFactory, gateway: StubServer
) -> None:
    gateway.replies["/later"] = StubReply(body={})
    port = free_port()
    with ObservedGateway(gateway.url, observer_url=f"http://127.0.0.1:{port}") as client:
        for _ in range(3):
            client.call("/later", {}, "early call")
        daemon = observer_daemon.start(CONFIG, port=port)
        wait_for(lambda: client.recorder.sent == 3, what="the retried ops")
    assert len(recorded_ops(daemon, "/later")) == 3
    assert client.dropped == 0


def test_environment_and_token(
    observer_daemon: DaemonFactory, gateway: StubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = observer_daemon.start(daemon_config(http='token = "s3cret"'))
    gateway.replies["/env"] = StubReply(body={})
    monkeypatch.setenv("GATEWAY_URL", gateway.url)
    monkeypatch.setenv("OBSERVER_URL", daemon.url)
    monkeypatch.setenv("OBSERVER_TOKEN", "wrong")
    with ObservedGateway() as refused:
        refused.call("/env", {}, "refused")
    assert refused.dropped == 1  # a 401 is not retried
    monkeypatch.setenv("OBSERVER_TOKEN", "s3cret")
    with ObservedGateway() as client:
        client.call("/env", {}, "accepted")
    assert [op["input_summary"] for op in recorded_ops(daemon, "/env")] == ["accepted"]


def test_example_runs(daemon: Daemon, gateway: StubServer) -> None:
    gateway.replies["/search"] = StubReply(body={"rows": [1, 2, 3]})
    gateway.replies["/ask"] = StubReply(body={"answer": "in Ohio: 3"})
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "example query"],
        env={**os.environ, "GATEWAY_URL": gateway.url, "OBSERVER_URL": daemon.url},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "search: {'rows': [1, 2, 3]}" in result.stdout
    assert the_op(daemon, "/search")["input_summary"] == "search: example query"
    assert the_op(daemon, "/ask")["output_summary"] == "answer: in Ohio: 3..."
