"""The ``nats`` sink: publish ops (and findings) to a JetStream stream, with publish acks.

Ops hold the acknowledgement: ``write()`` returns once JetStream has acknowledged
every message holding them (stored, and replicated when the stream has replicas),
so an event the ``http`` source answered 200 is in the stream. While NATS is
unreachable ``write()`` raises at once: the event is refused (503 with
``Retry-After``), never buffered and acknowledged. A batch is published as few
messages as fit (NDJSON, one op a line, up to the server's ``max_payload``), each
with a ``Nats-Msg-Id`` so that JetStream drops a message published twice.

Findings do not hold acknowledgements: they wait in a bounded queue
(``queue_max``; past it the oldest are dropped and counted) that a background
task delivers, one message per finding on ``{findings_subject}.{kind}``,
retrying while NATS is away.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import anyio
import msgspec

from observer_core import Context, DropOldestQueue, Finding, Op, Record, Sink, SinkConfig

from .connection import Link, check_url, created_meanwhile, require_nats

if TYPE_CHECKING:
    from nats.js import JetStreamContext

__all__ = ["NatsSink", "NatsSinkConfig", "split_lines"]

MSG_ID = "Nats-Msg-Id"
MAX_MESSAGE_BYTES = 1 << 20
"""Ops per message: as many lines as fit in this (or the server's max_payload, if less)."""
FINDINGS_BATCH = 100
FLUSH_SECS = 5.0
RETRY_MAX_SECS = 15.0
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
_SUBJECT = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


MAX_AGE_SECS = ((1 << 63) - 1) // 1_000_000_000
"""JetStream keeps ``max_age`` in nanoseconds, in an int64."""


class NatsSinkConfig(SinkConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[sinks.NAME]`` with ``plugin = "nats"``."""

    url: str = "nats://127.0.0.1:4222"
    """The NATS server(s), comma-separated: ``nats://host:4222,nats://other:4222``."""
    stream: str = "OBSERVER"
    """The JetStream stream; created (with the settings below) when it does not exist."""
    subject: str = "observer.ops"
    """Where ops are published."""
    findings_subject: str = "observer.findings"
    """Findings go to ``{findings_subject}.{kind}``."""
    timeout_secs: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 5
    """How long a write waits for JetStream's acks before the ops are refused."""
    queue_max: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 10000
    """Findings kept waiting while NATS is away; past it the oldest are dropped."""
    max_age_secs: Annotated[float, msgspec.Meta(ge=0, le=MAX_AGE_SECS)] = 604800
    """Stream limit when this sink creates it: messages older than this go (0: no limit)."""
    max_bytes: Annotated[int, msgspec.Meta(ge=-1, le=(1 << 63) - 1)] = 1073741824
    """Stream limit when this sink creates it: past it the oldest messages go (-1: none)."""
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    """Stream replicas when this sink creates it (a NATS cluster of at least as many)."""
    token: str | None = None
    creds: str | None = None
    """A NATS ``.creds`` file (relative to the config file)."""
    accepts: list[str] = msgspec.field(default_factory=lambda: ["op"])


def check_names(config: Any) -> None:
    """Config errors for a malformed ``stream`` or subject (shared with the source)."""
    check_url(config.url)
    if not _STREAM_NAME.fullmatch(config.stream):
        raise ValueError(
            f"stream: {config.stream!r} is not a stream name (letters, digits, - and _)"
        )
    for key in ("subject", "findings_subject"):
        value = getattr(config, key, None)
        if value is not None and not _SUBJECT.fullmatch(value):
            raise ValueError(
                f"{key}: {value!r} is not a subject to publish to "
                "(tokens of letters, digits, - and _ joined by dots; no wildcards)"
            )


def split_lines(data: bytes, limit: int) -> list[bytes]:
    """Cut NDJSON into pieces of whole lines, each at most ``limit`` bytes when it can be
    (a single longer line is a piece of its own)."""
    pieces = []
    start, size = 0, len(data)
    while start < size:
        end = start + limit
        if end < size:
            cut = data.rfind(b"\n", start, end)
            end = cut + 1 if cut >= start else data.index(b"\n", end) + 1
        pieces.append(data[start:end])
        start = end
    return pieces


class NatsSink(Sink):
    """Publishes ops (acknowledged by JetStream before the event is) and findings to NATS."""

    name: ClassVar[str] = "nats"
    Config = NatsSinkConfig
    holds_ack: ClassVar[bool] = True
    config: NatsSinkConfig

    def __init__(self, config: NatsSinkConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._link = Link(ctx, config.url, token=config.token, creds=config.creds)
        self._stream_ready = False
        self._encoder = msgspec.json.Encoder()
        self._node = uuid.uuid4().hex[:16]
        self._ids = itertools.count(1)
        self._findings: DropOldestQueue[tuple[Finding, str]] = DropOldestQueue(
            config.queue_max, self._dropped
        )
        self._in_hand = 0
        self._published = ctx.metrics.counter(
            "observer_nats_published_total",
            "Records JetStream acknowledged, by instance and kind.",
        )
        ctx.status.update(stream=config.stream, subject=config.subject)

    @classmethod
    def validate_config(cls, config: Any, registry: object) -> None:
        require_nats("plugin")
        check_names(config)

    def _dropped(self, count: int) -> None:
        self.ctx.metrics.sink_dropped.inc(count, instance=self.ctx.instance)
        self.ctx.logger.warning("findings queue full: dropped the %d oldest", count)

    def _next_id(self) -> str:
        return f"{self._node}-{next(self._ids)}"

    # -- lifecycle -----------------------------------------------------------

    async def open(self) -> None:
        """Try once to connect and find the stream; if NATS is down, ``run()`` keeps trying."""
        require_nats("plugin")
        if await self._link.try_connect():
            await self._ensure_stream()

    async def run(self) -> None:
        await self._link.connect()
        delay = 0.5
        while not await self._ensure_stream():
            await anyio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECS)
        while batch := await self._findings.get_batch(FINDINGS_BATCH):
            self._in_hand = len(batch)
            await self._deliver_findings(batch)

    async def flush(self) -> None:
        """Give queued findings a few seconds to go out (the rest are lost at exit)."""
        with anyio.move_on_after(FLUSH_SECS):
            while self.queue_depth() and self._link.connected:
                await anyio.sleep(0.05)
        if self.queue_depth():
            self.ctx.error("%d findings not delivered to NATS at shutdown", self.queue_depth())

    async def aclose(self) -> None:
        await self._link.close()

    def queue_depth(self) -> int:
        return len(self._findings) + self._in_hand

    async def _ensure_stream(self) -> bool:
        """Create the stream if it is missing; False (and logged) when JetStream says no."""
        if self._stream_ready:
            return True
        from nats.js.errors import NotFoundError

        config = self.config
        js = self._link.js
        try:
            try:
                await js.stream_info(config.stream)
            except NotFoundError:
                await self._add_stream(js)
        except Exception as exc:
            self.ctx.status["nats_error"] = f"stream {config.stream}: {exc!r}"
            self.ctx.logger.warning("cannot use stream %s: %r", config.stream, exc)
            return False
        self._stream_ready = True
        return True

    async def _add_stream(self, js: JetStreamContext) -> None:
        """Create the stream (another observer creating it at the same moment is fine)."""
        from nats.js import api
        from nats.js.errors import APIError

        config = self.config
        try:
            await js.add_stream(
                api.StreamConfig(
                    name=config.stream,
                    subjects=[config.subject, f"{config.findings_subject}.>"],
                    retention=api.RetentionPolicy.LIMITS,
                    discard=api.DiscardPolicy.OLD,
                    storage=api.StorageType.FILE,
                    max_age=config.max_age_secs or None,
                    max_bytes=config.max_bytes,
                    num_replicas=config.replicas,
                    duplicate_window=120.0,
                )
            )
        except APIError as exc:
            if not created_meanwhile(exc):
                raise
            return
        self.ctx.logger.info("created JetStream stream %s", config.stream)

    # -- writing ---------------------------------------------------------------

    async def write(self, records: Sequence[Record]) -> None:
        """Publish ops and wait for JetStream's acks; queue findings. Raises when ops
        cannot be published (the engine then refuses them)."""
        ops = [record for record in records if isinstance(record, Op)]
        findings = [record for record in records if isinstance(record, Finding)]
        if findings:
            self._findings.put_many((finding, self._next_id()) for finding in findings)
        if ops:
            await self._publish_ops(ops)

    async def _publish_ops(self, ops: Sequence[Op]) -> None:
        if not self._link.ready.is_set():  # starting up: give the first connection a chance
            with anyio.move_on_after(self.config.timeout_secs):
                await self._link.ready.wait()
        if not self._link.connected:
            raise RuntimeError(f"NATS is unreachable at {self._link.url}")
        if not self._stream_ready:
            raise RuntimeError(f"stream {self.config.stream} cannot be used yet (see the log)")
        limit = min(self._link.client.max_payload, MAX_MESSAGE_BYTES)
        pieces = split_lines(self._encoder.encode_lines(ops), limit)
        await self._publish_all(self._link.js, pieces)
        self._published.inc(len(ops), instance=self.ctx.instance, kind="op")

    async def _publish_all(self, js: JetStreamContext, pieces: list[bytes]) -> None:
        """Publish every piece, then wait for all the acks, within ``timeout_secs``."""
        config = self.config
        futures: list[asyncio.Future[Any]] = []
        try:
            with anyio.fail_after(config.timeout_secs):
                for piece in pieces:
                    futures.append(
                        await js.publish_async(
                            config.subject,
                            piece,
                            wait_stall=config.timeout_secs,
                            stream=config.stream,
                            headers={MSG_ID: self._next_id()},
                        )
                    )
                await asyncio.gather(*futures)
        except TimeoutError:
            raise RuntimeError(
                f"JetStream did not acknowledge within {config.timeout_secs}s"
            ) from None
        except Exception as exc:
            raise RuntimeError(f"JetStream refused the ops: {exc!r}") from None
        finally:
            for future in futures:
                future.cancel()  # a late ack must not keep the slot (a no-op once done)

    async def _deliver_findings(self, batch: list[tuple[Finding, str]]) -> None:
        """Publish each finding, in order, retrying (with the same message id) until it is in."""
        delay = 0.5
        for finding, msg_id in batch:
            while not await self._publish_finding(finding, msg_id):
                await anyio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECS)
            self._in_hand -= 1

    async def _publish_finding(self, finding: Finding, msg_id: str) -> bool:
        config = self.config
        if not self._link.connected:
            return False
        try:
            await self._link.js.publish(
                f"{config.findings_subject}.{finding.kind}",
                self._encoder.encode(finding.data),
                timeout=config.timeout_secs,
                stream=config.stream,
                headers={MSG_ID: msg_id},
            )
        except Exception as exc:
            self.ctx.status["nats_error"] = f"finding not published: {exc!r}"
            self.ctx.logger.warning("could not publish a %s finding: %r", finding.kind, exc)
            return False
        self._published.inc(instance=self.ctx.instance, kind=finding.kind)
        return True
