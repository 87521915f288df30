"""OTLP ingest against /events: spans/s through ``POST /v1/traces`` in 100-span protobuf
requests, and ops/s through ``POST /events`` in NDJSON batches of the same 100 ops, against
one daemon (an ``http`` and an ``otlp`` source, a ``jsonl`` sink), in one run.

    .venv/bin/python bench/otlp.py [--seconds 8] [--clients 4] [--gzip]

Each phase sends for ``--seconds`` from ``--clients`` threads (keep-alive connections),
then reports requests/s, ops/s and the daemon's CPU per op; the last line is the ratio
of the OTLP cost per op to the /events cost per op (the goal: within 2x). Needs the
``[otlp]`` extra. About 3 x ``--seconds`` + a few seconds in all.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import tempfile
import threading
import time
from pathlib import Path

import msgspec
from common import SERVER_CORE, Server, free_port, log, process_cpu_s, python
from observer_plugins.sources.otlp import protobuf
from observer_plugins.sources.otlp.mapping import Mapping, map_span
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

SPANS = 100
CONFIG = """
[observer]
cycle_secs = 3600
[sources.http]
port = {http_port}
[sources.otlp]
port = {otlp_port}
[sinks.ops]
plugin = "jsonl"
path = "ops.jsonl"
fsync = "never"
"""


def trace_request(batch: int) -> ExportTraceServiceRequest:
    """``SPANS`` GenAI chat spans as the OpenAI instrumentation writes them (one resource,
    one scope), with the usual HTTP and SDK attributes beside the GenAI ones."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    for key, value in (("service.name", "travel-agent"), ("telemetry.sdk.language", "python")):
        resource_spans.resource.attributes.add(key=key).value.string_value = value
    scope = resource_spans.scope_spans.add()
    scope.scope.name = "opentelemetry.instrumentation.openai_v2"
    start = 1_767_225_600_000_000_000
    for number in range(SPANS):
        span = scope.spans.add()
        span.trace_id = (batch * SPANS + number + 1).to_bytes(16, "big")
        span.span_id = (number + 1).to_bytes(8, "big")
        span.name = "chat gpt-4o-mini"
        span.kind = 3
        span.start_time_unix_nano = start + number * 1_000_000
        span.end_time_unix_nano = start + number * 1_000_000 + 412_000_000
        strings = {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
            "gen_ai.response.id": f"chatcmpl-{batch}-{number}",
            "server.address": "api.openai.com",
            "gen_ai.agent.name": "planner",
        }
        for key, value in strings.items():
            span.attributes.add(key=key).value.string_value = value
        numbers = {
            "gen_ai.usage.input_tokens": 100 + number,
            "gen_ai.usage.output_tokens": 20 + number % 7,
            "server.port": 443,
        }
        for key, count in numbers.items():
            span.attributes.add(key=key).value.int_value = count
        reasons = span.attributes.add(key="gen_ai.response.finish_reasons").value
        reasons.array_value.values.add().string_value = "stop"
        span.attributes.add(key="gen_ai.request.temperature").value.double_value = 0.2
    return request


def bodies(batches: int, use_gzip: bool) -> tuple[list[bytes], list[bytes]]:
    """``batches`` protobuf bodies and the NDJSON bodies of the very same ops."""
    mapping = Mapping()
    encode = msgspec.json.Encoder().encode
    traces, events = [], []
    for batch in range(batches):
        request = trace_request(batch)
        body = request.SerializeToString()
        traces.append(gzip.compress(body, 6) if use_gzip else body)
        ops = []
        for service, spans in protobuf.decode(body, mapping.wanted):
            ops += [map_span(span, service, mapping) for span in spans]
        events.append(b"".join(encode(op) + b"\n" for op in ops))
    return traces, events


def drive(
    port: int,
    path: str,
    payloads: list[bytes],
    headers: dict[str, str],
    seconds: float,
    clients: int,
) -> int:
    """Send ``payloads`` round-robin for ``seconds`` from ``clients`` threads; requests done."""
    done = [0] * clients
    failures: list[str] = []
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        sent = index
        try:
            while time.monotonic() < deadline:
                conn.request("POST", path, payloads[sent % len(payloads)], headers)
                response = conn.getresponse()
                response.read()
                if response.status == 503:  # a full queue: resend, as an exporter does
                    continue
                if response.status != 200:
                    failures.append(f"{path}: {response.status}")
                    return
                sent += 1
                done[index] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    if failures:
        raise RuntimeError(failures[0])
    return sum(done)


def phase(
    server: Server,
    name: str,
    port: int,
    path: str,
    payloads: list[bytes],
    headers: dict[str, str],
    args: argparse.Namespace,
) -> float:
    """Run one phase, print its line, return the daemon's CPU µs per op."""
    cpu = process_cpu_s(server.pid)
    began = time.monotonic()
    requests = drive(port, path, payloads, headers, args.seconds, args.clients)
    elapsed = time.monotonic() - began
    per_op = (process_cpu_s(server.pid) - cpu) / (requests * SPANS) * 1e6
    print(
        f"{name:<28} {requests / elapsed:8.0f} req/s {requests * SPANS / elapsed:9.0f} ops/s"
        f" {per_op:7.1f} µs CPU/op (daemon)"
    )
    return per_op


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per phase (8)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent connections (4)")
    parser.add_argument("--gzip", action="store_true", help="gzip the OTLP bodies")
    args = parser.parse_args()
    traces, events = bodies(50, args.gzip)
    with tempfile.TemporaryDirectory(prefix="bench-otlp-") as folder:
        http_port, otlp_port = free_port(), free_port()
        config = Path(folder) / "observer.toml"
        config.write_text(CONFIG.format(http_port=http_port, otlp_port=otlp_port))
        argv = [python(), "-m", "observer_core", "run", "--config", str(config)]
        log(f"daemon pinned to core {SERVER_CORE}; {args.clients} clients, {args.seconds:g}s each")
        with Server("observer-core", argv, cwd=Path(folder), port=http_port) as server:
            protobuf_headers = {"Content-Type": "application/x-protobuf"}
            if args.gzip:
                protobuf_headers["Content-Encoding"] = "gzip"
            # A short warm-up of each path, then the measured phases.
            drive(otlp_port, "/v1/traces", traces, protobuf_headers, 1.0, args.clients)
            drive(http_port, "/events", events, {}, 1.0, args.clients)
            label = "/v1/traces (protobuf+gzip)" if args.gzip else "/v1/traces (protobuf)"
            otlp = phase(server, label, otlp_port, "/v1/traces", traces, protobuf_headers, args)
            plain = phase(server, "/events (NDJSON)", http_port, "/events", events, {}, args)
    print(f"OTLP cost per op / /events cost per op: {otlp / plain:.2f}x (goal: <= 2x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
