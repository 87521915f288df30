"""The gateway source's reverse proxy, end to end: a real daemon, a real upstream, real clients.

One daemon serves the module, with three proxies: ``gateway`` (the upstream,
``/skip`` excluded), ``slow`` (the upstream, ``timeout_secs = 0.5``) and
``down`` (a port nothing listens on). Each test uses its own paths, so it
finds its own ops in ``ops.jsonl``.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from gateway_upstream import (
    WAIT_SECS,
    Exchange,
    Proxies,
    Seen,
    Upstream,
    daemon_config,
    openai_route,
    sse_events,
)

from observer_core.testing import DaemonFactory, free_port, wait_for


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxies]:
    upstream = Upstream()
    ports = {name: free_port() for name in ("gateway", "slow", "down")}
    factory = DaemonFactory(tmp_path_factory.mktemp("gateway-proxy"))
    daemon = factory.start(
        daemon_config(
            f"""
            [sources.gateway]
            url = "{upstream.url}"
            listen = "127.0.0.1:{ports["gateway"]}"
            exclude_paths = ["/health", "/skip"]

            [sources.slow]
            plugin = "gateway"
            url = "{upstream.url}"
            listen = "127.0.0.1:{ports["slow"]}"
            timeout_secs = 0.5
            health_check = false

            [sources.down]
            plugin = "gateway"
            url = "http://127.0.0.1:{free_port()}"
            listen = "127.0.0.1:{ports["down"]}"
            """
        )
    )
    try:
        yield Proxies(daemon, upstream, ports)
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.logs()
    finally:
        factory.close()
        upstream.close()


def test_request_arrives_unchanged(proxies: Proxies) -> None:
    proxies.request(
        "GET",
        "/echo/a%20b?x=1&y=%2F&z",
        headers={
            "User-Agent": "agent/1.0",
            "X-Custom": "kept",
            "Authorization": "Bearer secret",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "dropped",
        },
    )
    (seen,) = proxies.upstream.received("/echo/a%20b")
    assert seen.method == "GET"
    assert seen.target == "/echo/a%20b?x=1&y=%2F&z"
    assert seen.header("user-agent") == "agent/1.0"
    assert seen.header("x-custom") == "kept"
    assert seen.header("authorization") == "Bearer secret"
    assert seen.header("host") == f"127.0.0.1:{proxies.upstream.port}"
    assert seen.header("x-hop") is None  # named by Connection: hop-by-hop
    assert seen.header("accept-encoding") == "identity"  # as http.client sent it
    assert seen.header("accept") is None  # the client sent none: none is added


def test_post_and_reply_unchanged_and_recorded(proxies: Proxies) -> None:
    body = b'{"q": "welders", "bytes": "\xc3\xa9"}'
    reply_body = json.dumps({"rows": [1, 2], "row_count": 40}).encode()

    def route(exchange: Exchange, seen: Seen) -> None:
        exchange.send_bytes(
            201,
            reply_body,
            [("Content-Type", "application/json"), ("X-Reply", "yes"), ("Set-Cookie", "a=1")],
        )

    proxies.upstream.routes["/search"] = route
    reply, data = proxies.request(
        "POST", "/search?limit=5", body, {"Content-Type": "application/json", "X-Trace": "t1"}
    )
    (seen,) = proxies.upstream.received("/search")
    assert (seen.method, seen.target, seen.body) == ("POST", "/search?limit=5", body)
    assert seen.header("content-type") == "application/json"
    assert seen.header("x-trace") == "t1"
    assert reply.status == 201
    assert data == reply_body
    assert reply.getheader("X-Reply") == "yes"
    assert reply.getheader("Set-Cookie") == "a=1"
    assert reply.getheader("Server", "").startswith("BaseHTTP")  # the gateway's, not ours
    op = proxies.op("/search")
    assert op["input_summary"] == "POST /search"
    assert op["success"] is True
    assert op["output_summary"] == "40 rows"
    assert op["source"] == "mcp"
    assert op["attributes"] == {"http_status": 201}
    assert "error" not in op
    assert 0 <= op["duration_ms"] < 5000


@pytest.mark.parametrize(
    ("path", "status", "body", "success", "error", "summary"),
    [
        ("/reply/error-field", 200, {"error": "no index"}, False, "no index", "ERROR: no index"),
        ("/reply/error-null", 200, {"error": None, "answer": "yes"}, True, None, "answer: yes..."),
        ("/reply/http-500", 500, {"detail": "x"}, False, "HTTP 500", "ERROR: HTTP 500"),
        (
            "/reply/error-object",
            400,
            {"error": {"code": 7}},
            False,
            '{"code":7}',
            'ERROR: {"code":7}',
        ),
        ("/reply/text-404", 404, b"not here", False, "HTTP 404", "ERROR: HTTP 404"),
        ("/reply/text-200", 200, b"plain words " * 20, True, None, ("plain words " * 9)[:100]),
    ],
)
def test_outcome_of_a_reply(
    proxies: Proxies,
    path: str,
    status: int,
    body: Any,
    success: bool,
    error: str | None,
    summary: str,
) -> None:
    def route(exchange: Exchange, seen: Seen) -> None:
        if isinstance(body, bytes):
            exchange.send_bytes(status, body, [("Content-Type", "text/plain")])
        else:
            exchange.send_json(status, body)

    proxies.upstream.routes[path] = route
    reply, _ = proxies.request("GET", path)
    assert reply.status == status
    op = proxies.op(path)
    assert (op["success"], op.get("error"), op["output_summary"]) == (success, error, summary)


def test_cookies_are_not_kept_by_the_proxy(proxies: Proxies) -> None:
    proxies.upstream.routes["/login"] = lambda exchange, seen: exchange.send_json(
        200, {}, [("Set-Cookie", "session=alice; Path=/")]
    )
    reply, _ = proxies.request("POST", "/login", b"{}")
    assert reply.getheader("Set-Cookie") == "session=alice; Path=/"
    proxies.request("GET", "/after-login")  # another client, without cookies
    assert proxies.upstream.received("/after-login")[0].header("cookie") is None


def test_gzip_body_passes_through_compressed(proxies: Proxies) -> None:
    compressed = gzip.compress(json.dumps({"answer": "é" * 100}).encode())

    def route(exchange: Exchange, seen: Seen) -> None:
        headers = [("Content-Type", "application/json"), ("Content-Encoding", "gzip")]
        exchange.send_bytes(200, compressed, headers)

    proxies.upstream.routes["/zipped"] = route
    reply, data = proxies.request("GET", "/zipped", headers={"Accept-Encoding": "gzip"})
    assert proxies.upstream.received("/zipped")[0].header("accept-encoding") == "gzip"
    assert reply.getheader("Content-Encoding") == "gzip"
    assert data == compressed  # not decoded on the way
    assert proxies.op("/zipped")["output_summary"] == "answer: " + "é" * 80 + "..."


def test_server_sent_events_stream_chunk_by_chunk(proxies: Proxies) -> None:
    first, second = sse_events([{"n": 1}, {"n": 2}])
    read_first = threading.Event()
    waited: list[bool] = []

    def route(exchange: Exchange, seen: Seen) -> None:
        exchange.start_chunked(200, "text/event-stream")
        exchange.chunk(first)
        waited.append(read_first.wait(WAIT_SECS))  # the client must see event 1 first
        exchange.chunk(second)
        exchange.end_chunked()

    proxies.upstream.routes["/events/stream"] = route
    received = b""
    with httpx.stream("GET", f"{proxies.url()}/events/stream", timeout=WAIT_SECS) as reply:
        assert reply.headers["content-type"] == "text/event-stream"
        chunks = reply.iter_raw()
        while b"\n\n" not in received:
            received += next(chunks)
        assert received == first
        read_first.set()
        received += b"".join(chunks)
    assert waited == [True]
    assert received == first + second
    op = proxies.op("/events/stream")
    assert op["success"] is True
    assert op["output_summary"] == (first + second).decode()[:100]


def test_reply_that_breaks_off_is_cut_and_recorded_as_failed(proxies: Proxies) -> None:
    def route(exchange: Exchange, seen: Seen) -> None:
        exchange.start_chunked(200, "text/event-stream")
        exchange.chunk(b"data: 1\n\n")
        exchange.close_connection = True  # gone, without the last chunk

    proxies.upstream.routes["/broken"] = route
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{proxies.url()}/broken", timeout=WAIT_SECS)
    op = proxies.op("/broken")
    assert op["success"] is False
    assert op["error"].startswith("the gateway's reply broke off: RemoteProtocolError")


def test_client_that_leaves_mid_stream(proxies: Proxies) -> None:
    left = threading.Event()

    def route(exchange: Exchange, seen: Seen) -> None:
        exchange.start_chunked(200, "text/event-stream")
        exchange.chunk(b"data: 1\n\n")
        left.wait(WAIT_SECS)
        try:
            for _ in range(100):  # until the proxy closes this connection too
                exchange.chunk(b"data: more\n\n")
                time.sleep(0.01)
        except OSError:
            pass

    proxies.upstream.routes["/left"] = route
    with httpx.stream("GET", f"{proxies.url()}/left", timeout=WAIT_SECS) as reply:
        assert next(reply.iter_raw()) == b"data: 1\n\n"
    left.set()
    op = proxies.op("/left")
    assert op["success"] is True
    assert op["output_summary"].startswith("data: 1\n\n")  # and what came before it noticed
    assert op["attributes"] == {"http_status": 200, "client_left": True}


def test_no_content_reply(proxies: Proxies) -> None:
    proxies.upstream.routes["/empty"] = lambda exchange, seen: exchange.send_bytes(
        204, b"", [("X-Empty", "1")]
    )
    reply, data = proxies.request("DELETE", "/empty")
    assert (reply.status, reply.getheader("X-Empty"), data) == (204, "1", b"")
    op = proxies.op("/empty")
    assert (op["success"], op["output_summary"], op["input_summary"]) == (True, "", "DELETE /empty")


def test_head_request(proxies: Proxies) -> None:
    proxies.upstream.routes["/head"] = lambda exchange, seen: exchange.send_bytes(200, b"x" * 42)
    reply, data = proxies.request("HEAD", "/head")
    assert (reply.status, reply.getheader("Content-Length"), data) == (200, "42", b"")
    assert proxies.op("/head")["input_summary"] == "HEAD /head"


def test_excluded_path_is_proxied_not_recorded(proxies: Proxies) -> None:
    reply, data = proxies.request("GET", "/skip?x=1")
    assert reply.status == 200
    assert json.loads(data) == {"method": "GET", "target": "/skip?x=1"}
    proxies.request("GET", "/after-skip")
    proxies.op("/after-skip")
    assert proxies.ops("/skip") == []  # ops are emitted in order: /skip's would be there


def test_502_while_the_gateway_is_down(proxies: Proxies) -> None:
    reply, data = proxies.request("POST", "/search", b"{}", name="down")
    assert reply.status == 502
    assert "cannot reach the gateway" in json.loads(data)["error"]
    op = wait_for(
        lambda: [o for o in proxies.ops("/search") if o["success"] is False], what="the 502 op"
    )[0]
    assert "ConnectError" in op["error"]
    assert op["output_summary"] == f"ERROR: {op['error']}"


def test_504_when_the_gateway_is_too_slow(proxies: Proxies) -> None:
    release = threading.Event()

    def route(exchange: Exchange, seen: Seen) -> None:
        release.wait(WAIT_SECS)
        exchange.send_json(200, {})

    proxies.upstream.routes["/stall"] = route
    started = time.monotonic()
    try:
        reply, data = proxies.request("GET", "/stall", name="slow")
    finally:
        release.set()
    assert reply.status == 504
    assert json.loads(data) == {"error": "the gateway did not answer within 0.5s"}
    assert time.monotonic() - started < 3
    op = proxies.op("/stall")
    assert (op["success"], op["error"]) == (False, "the gateway did not answer within 0.5s")


def test_health_of_each_gateway_in_health_checks(proxies: Proxies) -> None:
    def checks() -> dict[str, Any]:
        found: dict[str, Any] = httpx.get(f"{proxies.daemon.url}/health").json()["checks"]
        return found if {"gateway", "down"} <= found.keys() else {}

    found = wait_for(checks, what="both health checks")
    assert found["gateway"]["healthy"] is True
    assert found["down"]["healthy"] is False
    assert "slow" not in found  # health_check = false
    stats = httpx.get(f"{proxies.daemon.url}/stats").json()
    assert stats["instances"]["sources.down"]["checks"]["down"]["healthy"] is False


def test_openai_sdk_through_the_proxy(proxies: Proxies) -> None:
    proxies.upstream.routes["/v1/chat/completions"] = openai_route("hello from the gateway")
    client = openai.OpenAI(base_url=f"{proxies.url()}/v1", api_key="sk-test", max_retries=0)
    completion = client.chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "hello from the gateway"
    stream = client.chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    words = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert words == "hello from the gateway "
    seen = proxies.upstream.received("/v1/chat/completions")
    assert [s.header("authorization") for s in seen] == ["Bearer sk-test"] * 2
    ops = wait_for(
        lambda: (
            len(proxies.ops("/v1/chat/completions")) == 2 and proxies.ops("/v1/chat/completions")
        )
    )
    assert [op["input_summary"] for op in ops] == ["POST /v1/chat/completions"] * 2
    assert all(op["success"] for op in ops)
    assert ops[0]["output_summary"].startswith('{"id":"chatcmpl-1","created":1700000000')
    assert ops[1]["output_summary"].startswith('data: {"id": "chatcmpl-1"')


def test_stats_count_proxied_calls(proxies: Proxies) -> None:
    proxies.request("GET", "/counted")
    proxies.op("/counted")
    stats = httpx.get(f"{proxies.daemon.url}/stats").json()["instances"]["sources.gateway"]
    assert stats["proxied"] >= stats["recorded"] >= 1
    assert stats["listen"].startswith("127.0.0.1:")
