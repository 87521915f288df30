"""Helpers of the otlp source's tests: a daemon with an ``otlp`` listener, OTLP JSON bodies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from observer_core.testing import Daemon, DaemonFactory, free_port

CONFIG = """
[observer]
cycle_secs = 60
max_field_bytes = 2000
[sources.http]
port = {port}
[sources.otlp]
port = %(otlp_port)d
%(otlp_keys)s
[sinks.ops]
plugin = "jsonl"
path = "%(path)s"
fsync = "never"
"""

TRACE_ID = "5b8efff798038103d269b633813fc60c"
SPAN_ID = "eee19b7ec3c1b174"
START_NS = 1_767_225_600_123_000_000  # 2026-01-01T00:00:00.123Z


@dataclass
class OtlpDaemon:
    """A daemon and the URL of its otlp listener."""

    daemon: Daemon
    url: str

    @property
    def traces(self) -> str:
        return f"{self.url}/v1/traces"

    def ops(self) -> list[dict[str, Any]]:
        """What the jsonl sink has written so far."""
        path = self.daemon.directory / "ops.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def spans(self, outcome: str) -> float:
        value = self.daemon.metric(
            "observer_otlp_spans_total", instance="sources.otlp", outcome=outcome
        )
        return value or 0.0


def start_otlp_daemon(
    factory: DaemonFactory, otlp_keys: str = "", path: str = "ops.jsonl"
) -> OtlpDaemon:
    """Start a daemon (an ``http`` source for readiness, an ``otlp`` source with the given
    extra TOML lines, a ``jsonl`` sink at ``path``)."""
    otlp_port = free_port()
    config = CONFIG % {"otlp_port": otlp_port, "otlp_keys": otlp_keys, "path": path}
    daemon = factory.start(config)
    return OtlpDaemon(daemon, f"http://127.0.0.1:{otlp_port}")


def attribute(key: str, value: Any) -> dict[str, Any]:
    """One OTLP JSON ``KeyValue``."""
    if isinstance(value, bool):
        encoded: dict[str, Any] = {"boolValue": value}
    elif isinstance(value, int):
        encoded = {"intValue": str(value)}
    elif isinstance(value, float):
        encoded = {"doubleValue": value}
    elif isinstance(value, list):
        encoded = {"arrayValue": {"values": [attribute("", item)["value"] for item in value]}}
    else:
        encoded = {"stringValue": value}
    return {"key": key, "value": encoded}


def json_span(
    name: str = "chat gpt-4o",
    attributes: dict[str, Any] | None = None,
    *,
    trace_id: str = TRACE_ID,
    span_id: str = SPAN_ID,
    start: int = START_NS,
    duration_ns: int = 1_500_000_000,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One OTLP JSON span."""
    span: dict[str, Any] = {
        "traceId": trace_id,
        "spanId": span_id,
        "name": name,
        "kind": 3,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + duration_ns),
        "attributes": [attribute(key, value) for key, value in (attributes or {}).items()],
    }
    if status is not None:
        span["status"] = status
    return span


def json_request(*spans: dict[str, Any], service: str | None = "agent-a") -> dict[str, Any]:
    """An OTLP JSON ``ExportTraceServiceRequest`` of one resource."""
    resource = {"attributes": [attribute("service.name", service)] if service else []}
    scope = {"scope": {"name": "test"}, "spans": list(spans)}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [scope]}]}
