"""A gateway stand-in for the gateway source's tests: routes can stream, gzip, stall.

``stub_server()`` (observer_core.testing) answers with one JSON body per request;
the proxy's tests also need server-sent events sent one at a time, chunked
replies, a fixed port (a gateway that comes up later) and an OpenAI-style API.
"""

from __future__ import annotations

import http.client
import json
import textwrap
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from observer_core.testing import Daemon, wait_for

WAIT_SECS = 10.0


def daemon_config(*tables: str, http: str = "") -> str:
    """A daemon's config: the http source on ``{port}`` (plus the ``http`` keys given),
    ``tables``, and a jsonl sink writing ``ops.jsonl``."""
    return "\n".join(
        [
            "[observer]\ncycle_secs = 60",
            f"[sources.http]\nport = {{port}}\n{http}",
            *(textwrap.dedent(table) for table in tables),
            '[sinks.ops]\nplugin = "jsonl"\npath = "ops.jsonl"\nfsync = "never"\n',
        ]
    )


def recorded_ops(daemon: Daemon, endpoint: str) -> list[dict[str, Any]]:
    """The ops for ``endpoint`` in the daemon's ``ops.jsonl`` (a jsonl sink's path)."""
    path = daemon.directory / "ops.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [op for op in map(json.loads, lines) if op["endpoint"] == endpoint]


def the_op(daemon: Daemon, endpoint: str) -> dict[str, Any]:
    """The one op recorded for ``endpoint`` (waits for it)."""
    found = wait_for(lambda: recorded_ops(daemon, endpoint), what=f"an op for {endpoint}")
    assert len(found) == 1, found
    return found[0]


@dataclass
class Seen:
    """A request as the upstream received it: ``target`` is the raw path and query."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class Exchange(BaseHTTPRequestHandler):
    """One request; routes answer through the ``send_*`` helpers."""

    protocol_version = "HTTP/1.1"
    wbufsize = -1  # one write per reply (headers and body), or Nagle adds 40 ms per call
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        """The request body, sized or chunked (the proxy streams an unsized body chunked)."""
        if (self.headers.get("transfer-encoding") or "").lower() != "chunked":
            length = int(self.headers.get("content-length") or 0)
            return self.rfile.read(length) if length else b""
        body = b""
        while size := int(self.rfile.readline().split(b";")[0], 16):
            body += self.rfile.read(size)
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return body

    def _serve(self) -> None:
        body = self._read_body()
        seen = Seen(self.command, self.path, list(self.headers.items()), body)
        upstream = self.server.upstream
        with upstream.lock:
            upstream.seen.append(seen)
        route = upstream.routes.get(self.path.split("?")[0], Upstream.echo)
        route(self, seen)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

    def send_bytes(self, status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, data: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_bytes(
            status, json.dumps(data).encode(), [("Content-Type", "application/json"), *headers]
        )

    def start_chunked(self, status: int, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    upstream: Upstream


Route = Callable[[Exchange, Seen], None]


class Upstream:
    """A threaded HTTP/1.1 server on 127.0.0.1; ``routes[path]`` answers, else :meth:`echo`."""

    def __init__(self, port: int = 0) -> None:
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.routes: dict[str, Route] = {}
        self._server = _Server(("127.0.0.1", port), Exchange)
        self._server.upstream = self
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def received(self, path: str) -> list[Seen]:
        with self.lock:
            return [seen for seen in self.seen if seen.target.split("?")[0] == path]

    @staticmethod
    def echo(exchange: Exchange, seen: Seen) -> None:
        exchange.send_json(200, {"method": seen.method, "target": seen.target})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def sse_events(events: list[Any]) -> list[bytes]:
    return [b"data: " + json.dumps(event).encode() + b"\n\n" for event in events]


OPENAI_USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
"""What :func:`openai_route` reports a call used."""


def openai_route(reply: str, model: str | None = None) -> Route:
    """``POST /v1/chat/completions`` as OpenAI answers it: JSON, or SSE with ``stream``
    (the usage in a last chunk with ``stream_options.include_usage``). The reply names
    ``model`` (default: the model asked for)."""

    def route(exchange: Exchange, seen: Seen) -> None:
        request = json.loads(seen.body)
        base = {"id": "chatcmpl-1", "created": 1700000000, "model": model or request["model"]}
        if not request.get("stream"):
            exchange.send_json(
                200,
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": OPENAI_USAGE,
                },
            )
            return
        with_usage = (request.get("stream_options") or {}).get("include_usage")
        chunk = {
            **base,
            "object": "chat.completion.chunk",
            **({"usage": None} if with_usage else {}),
        }
        exchange.start_chunked(200, "text/event-stream")
        for word in reply.split(" "):
            delta = {"index": 0, "delta": {"content": word + " "}, "finish_reason": None}
            exchange.chunk(*sse_events([{**chunk, "choices": [delta]}]))
        if with_usage:
            exchange.chunk(*sse_events([{**chunk, "choices": [], "usage": OPENAI_USAGE}]))
        exchange.chunk(b"data: [DONE]\n\n")
        exchange.end_chunked()

    return route


class Proxies:
    """A daemon's gateway proxies (``ports`` by source name) in front of ``upstream``."""

    def __init__(self, daemon: Daemon, upstream: Upstream, ports: dict[str, int]) -> None:
        self.daemon = daemon
        self.upstream = upstream
        self.ports = ports

    def url(self, name: str = "gateway") -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        name: str = "gateway",
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """A raw request (no header added, no body decoded)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.ports[name], timeout=WAIT_SECS)
        conn.request(method, target, body=body, headers=headers or {})
        reply = conn.getresponse()
        data = reply.read()
        conn.close()
        return reply, data

    def ops(self, endpoint: str) -> list[dict[str, Any]]:
        return recorded_ops(self.daemon, endpoint)

    def op(self, endpoint: str) -> dict[str, Any]:
        return the_op(self.daemon, endpoint)
