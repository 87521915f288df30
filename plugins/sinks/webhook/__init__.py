"""The ``webhook`` sink: POST each accepted finding to a URL, as JSON or as a Slack message.

``format = "json"`` posts ``{"kind", "record"}``; ``"slack"`` posts
``{"text": ...}``, a one-line summary that Slack, Mattermost and Teams incoming
webhooks take. Delivery is :class:`observer_core.DurableQueue`, the queue the
``gateway_log`` sink uses: bodies are rendered and spooled under ``state_dir``
when queued, delivered in order, retried with backoff on 408, 429, 5xx and
outages, dead-lettered after ``max_attempts``, dropped (and counted) past
``queue_max``. ``headers`` (values may use ``${VAR}``) and the path and query of
``url`` are secrets: never shown in ``/health``, ``/stats`` or logs, where the
URL appears as ``https://host/********``. Outcomes are counted in
``observer_webhook_deliveries_total{instance, outcome}``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

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
from observer_core.redact import redact_webhook

from .summary import slack_text

__all__ = ["WebhookConfig", "WebhookSink", "webhook_body"]

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class WebhookConfig(SinkConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[sinks.NAME]`` with ``plugin = "webhook"``."""

    url: str
    format: Literal["json", "slack"] = "json"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    """Sent with every POST (e.g. ``Authorization``); secrets, never shown."""
    timeout_secs: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10
    queue_max: QueueMax = 10000
    max_attempts: MaxAttempts = 10
    accepts: list[str] = msgspec.field(default_factory=lambda: ["alert"])


def webhook_body(record: Record, format: str) -> bytes:
    """The body POSTed for ``record``: ``{"kind", "record"}`` or Slack's ``{"text"}``."""
    kind = record.kind if isinstance(record, Finding) else "op"
    data = record.data if isinstance(record, Finding) else record
    if format == "slack":
        return msgspec.json.encode({"text": slack_text(kind, msgspec.to_builtins(data))})
    return msgspec.json.encode({"kind": kind, "record": data})


class WebhookSink(Sink):
    """POSTs records to a webhook, in order, from a persistent queue."""

    name: ClassVar[str] = "webhook"
    Config = WebhookConfig
    config: WebhookConfig

    def __init__(self, config: WebhookConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._shown_url = redact_webhook(config.url)
        self._client: httpx.AsyncClient | None = None
        self._deliveries = ctx.metrics.counter(
            "observer_webhook_deliveries_total",
            "Webhook delivery outcomes: delivered, rejected, failed_attempt, dead_lettered, "
            "dropped.",
        )
        self._queue = DurableQueue(
            ctx,
            self._send,
            queue_max=config.queue_max,
            max_attempts=config.max_attempts,
            noun="webhook message",
            peer="webhook",
            on_outcome=self._count,
        )

    @classmethod
    def validate_config(cls, config: Any, registry: object) -> None:
        check_http_url(config.url, shown=redact_webhook)
        for name, value in config.headers.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"headers: {name!r} is not a valid header name")
            if any(char in value for char in "\r\n\0"):
                raise ValueError(f"headers.{name}: a value cannot hold CR, LF or NUL")

    async def open(self) -> None:
        await self._queue.open()
        timeout = self.config.timeout_secs
        self._client = self.ctx.http_client(  # the engine closes it
            timeout=httpx.Timeout(timeout, connect=min(5.0, timeout))
        )
        self.ctx.status["url"] = self._shown_url
        self.ctx.status["format"] = self.config.format

    async def aclose(self) -> None:
        await self._queue.aclose()

    def queue_depth(self) -> int:
        return len(self._queue)

    async def write(self, records: Sequence[Record]) -> None:
        """Render each record's body and spool it (durably) for delivery."""
        await self._queue.put([webhook_body(record, self.config.format) for record in records])

    async def run(self) -> None:
        """Deliver the queue in order until cancelled, backing off after failures."""
        await self._queue.run()

    async def flush(self) -> None:
        """Deliver what is queued for a few seconds; what is left stays spooled."""
        await self._queue.flush()

    async def _send(self, body: bytes) -> None:
        assert self._client is not None, "open() was not called"
        await post_json(
            self._client,
            self.config.url,
            body,
            headers=self.config.headers,
            peer=f"webhook {self._shown_url}",
            shown_url=self._shown_url,
        )

    def _count(self, outcome: str, count: int) -> None:
        self._deliveries.inc(count, instance=self.ctx.instance, outcome=outcome)


@hookimpl
def observer_register_sinks(register: RegisterSink) -> None:
    register(WebhookSink)
