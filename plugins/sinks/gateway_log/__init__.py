"""The ``gateway_log`` sink: POST each log entry (diagnosis, playbook) to ``{url}/log``.

``write()`` only queues: every entry is first appended to a spool file under
``state_dir`` (``spool.jsonl``, written off the event loop; the durable queue is
:class:`observer_core.DurableQueue`, which the ``webhook`` sink shares), so a restart or a
``kill -9`` keeps it; a background task (``Sink.run``) delivers the queue in
order. While the gateway is unreachable, or answers 408, 429 or 5xx, the head
entry is retried with exponential backoff and jitter; any other 4xx is logged
with the entry and dropped. An entry whose delivery failed ``max_attempts``
times (an answer of 408/429/5xx, a timeout or a dropped connection; a refused
connection means the gateway is down and does not count against the entry)
goes to ``dead_letter.jsonl``. Past ``queue_max`` entries the oldest are
dropped and counted in ``observer_sink_dropped_total{instance}``; the queue
depth is ``observer_sink_queue_depth{instance}``. At shutdown (and at the end of
``--once``) ``flush()`` tries to deliver what is queued, for a few seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import httpx
import msgspec

from observer_core import (
    Context,
    DurableQueue,
    Finding,
    MaxAttempts,
    QueueMax,
    Record,
    RegisterSink,
    Sink,
    SinkConfig,
    check_http_url,
    hookimpl,
    post_json,
)

from .entry import LogEntry

__all__ = ["GatewayLogConfig", "GatewayLogSink"]

SEND_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class GatewayLogConfig(SinkConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[sinks.NAME]`` with ``plugin = "gateway_log"``."""

    url: str = "http://localhost:3700"
    queue_max: QueueMax = 10000
    """Entries kept waiting; past it the oldest are dropped (and counted)."""
    max_attempts: MaxAttempts = 10
    accepts: list[str] = msgspec.field(default_factory=lambda: ["diagnosis", "playbook"])


_encode = msgspec.json.Encoder().encode


class GatewayLogSink(Sink):
    """Delivers log entries to the gateway's ``/log``, in order, from a persistent queue."""

    name: ClassVar[str] = "gateway_log"
    Config = GatewayLogConfig
    config: GatewayLogConfig

    def __init__(self, config: GatewayLogConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._url = config.url.rstrip("/") + "/log"
        self._client: httpx.AsyncClient | None = None
        metrics = ctx.metrics
        self._counters = {
            "delivered": metrics.counter(
                "observer_gateway_log_delivered_total", "Log entries the gateway accepted."
            ),
            "rejected": metrics.counter(
                "observer_gateway_log_rejected_total", "Log entries the gateway refused with a 4xx."
            ),
            "dead_lettered": metrics.counter(
                "observer_gateway_log_dead_lettered_total",
                "Log entries moved to the dead-letter file after max_attempts failures.",
            ),
            "failed_attempt": metrics.counter(
                "observer_gateway_log_failed_attempts_total",
                "Deliveries that failed and wait a retry.",
            ),
        }
        self._queue = DurableQueue(
            ctx,
            self._send,
            queue_max=config.queue_max,
            max_attempts=config.max_attempts,
            noun="log entry",
            peer="gateway",
            on_outcome=self._count,
        )

    @classmethod
    def validate_config(cls, config: Any, registry: object) -> None:
        check_http_url(config.url)
        wrong = [kind for kind in config.accepts if kind in ("op", "escalation")]
        if wrong:
            raise ValueError(
                f"accepts: gateway_log posts log entries (diagnosis, playbook); "
                f"it cannot take {wrong[0]!r} records"
            )

    # -- lifecycle ----------------------------------------------------------

    async def open(self) -> None:
        await self._queue.open()
        self._client = self.ctx.http_client(timeout=SEND_TIMEOUT)  # the engine closes it
        self.ctx.status["url"] = self._url

    async def aclose(self) -> None:
        await self._queue.aclose()

    def queue_depth(self) -> int:
        return len(self._queue)

    async def write(self, records: Sequence[Record]) -> None:
        """Spool the entries (durably), then queue them for delivery."""
        entries = [entry for entry in map(self._entry, records) if entry is not None]
        await self._queue.put([_encode(entry) for entry in entries])

    async def run(self) -> None:
        """Deliver the queue in order until cancelled, backing off after failures."""
        await self._queue.run()

    async def flush(self) -> None:
        """Deliver what is queued for a few seconds; what is left stays spooled."""
        await self._queue.flush()

    def _entry(self, record: Record) -> LogEntry | None:
        data = record.data if isinstance(record, Finding) else record
        if isinstance(data, LogEntry):
            return data
        try:
            return msgspec.convert(data, LogEntry)
        except msgspec.ValidationError as exc:
            self.ctx.error("not a log entry, skipped (%s): %r", exc, data)
            return None

    async def _send(self, body: bytes) -> None:
        assert self._client is not None, "open() was not called"
        await post_json(self._client, self._url, body, peer="gateway", shown_url=self._url)

    def _count(self, outcome: str, count: int) -> None:
        counter = self._counters.get(outcome)
        if counter is not None:
            counter.inc(count, instance=self.ctx.instance)


@hookimpl
def observer_register_sinks(register: RegisterSink) -> None:
    register(GatewayLogSink)
