"""The ``nats`` source: take ops from a JetStream stream through a durable pull consumer.

Every observer that names the same ``durable`` shares one consumer: JetStream hands
each message to one of them (a work queue), and hands it again, after
``ack_wait_secs``, when that one did not acknowledge it (it died, or its sinks
refused). A message is acknowledged only after ``emit`` returned for its ops, that
is after every ack-holding op sink wrote them: at least once, end to end. Refused
ops are handed back (nak) to be retried after ``Retry-After``.

A message this observer already emitted and sees again (its ack was lost, e.g. NATS
restarted) is recognised by its stream sequence and acknowledged without emitting
its ops again, so neither the sinks nor the analyzers count them twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import anyio
import msgspec

from observer_core import (
    ComponentConfig,
    Context,
    Emit,
    EventDecoder,
    InvalidEvent,
    NotAccepted,
    Op,
    Source,
)

from .connection import Link, Quiet, require_nats
from .sink import check_names

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

__all__ = ["NatsSource", "NatsSourceConfig", "SeenSequences"]

FETCH_WAIT_SECS = 2.0
"""A fetch waits this long for messages before it asks again."""
EMIT_MAX_OPS = 2048
"""Ops handed to ``emit`` at once: a fetch is emitted (and acknowledged) in parts of whole
messages, so a consumer killed mid-fetch leaves at most one part written and unacknowledged."""
ACK_FLUSH_SECS = 5
DELIVER_LIMIT_SECS = 10.0
"""How long a delivery (emit, then acks) may run on once started, even through a shutdown."""
RETRY_MAX_SECS = 15.0
REMEMBER_PER_PENDING = 10
"""Stream sequences remembered to recognise redeliveries: this many times max_ack_pending."""
REMEMBER_MIN = 10000


class NatsSourceConfig(ComponentConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[sources.NAME]`` with ``plugin = "nats"``."""

    url: str = "nats://127.0.0.1:4222"
    """The NATS server(s), comma-separated."""
    stream: str = "OBSERVER"
    """The stream the ``nats`` sinks publish to (waited for until it exists)."""
    subject: str = "observer.ops"
    """The consumer's filter: the subject ops are published on."""
    durable: str = "writers"
    """The durable consumer; observers naming the same one share its messages."""
    deliver: Literal["all", "new"] = "all"
    """Where a new consumer starts: the stream's first message, or the next one published."""
    batch: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 16
    """Messages asked for at once (each holds up to ~1 MiB of ops)."""
    ack_wait_secs: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 30
    """A message not acknowledged this long after delivery is delivered again."""
    max_ack_pending: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000
    """Messages delivered and not yet acknowledged, over all the observers sharing it."""
    token: str | None = None
    creds: str | None = None


class SeenSequences:
    """The last ``size`` stream sequences emitted here (a bounded set, oldest forgotten)."""

    def __init__(self, size: int) -> None:
        self._order: deque[int] = deque()
        self._set: set[int] = set()
        self._size = size

    def __contains__(self, seq: object) -> bool:
        return seq in self._set

    def __len__(self) -> int:
        return len(self._set)

    def add(self, seq: int) -> None:
        if seq in self._set:
            return
        self._order.append(seq)
        self._set.add(seq)
        if len(self._order) > self._size:
            self._set.discard(self._order.popleft())


@dataclass(slots=True)
class _Delivered:
    msg: Msg
    seq: int
    ops: list[Op]
    redelivered: bool


class NatsSource(Source):
    """Consumes ops from a JetStream durable consumer shared by the fleet (at least once)."""

    name: ClassVar[str] = "nats"
    Config = NatsSourceConfig
    config: NatsSourceConfig

    def __init__(self, config: NatsSourceConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._link = Link(ctx, config.url, token=config.token, creds=config.creds)
        self._decoder = EventDecoder(max_field_bytes=ctx.max_field_bytes, require_all=True)
        self._quiet = Quiet()
        self._seen = SeenSequences(max(REMEMBER_MIN, REMEMBER_PER_PENDING * config.max_ack_pending))
        self._messages = ctx.metrics.counter(
            "observer_nats_messages_total",
            "Messages taken from NATS, by instance and outcome (accepted, redelivered, "
            "duplicate, invalid, refused).",
        )
        self._pending = ctx.metrics.gauge(
            "observer_nats_pending_messages",
            "Messages in the stream the consumer has not been handed yet, by instance.",
        )
        ctx.status.update(stream=config.stream, durable=config.durable)

    @classmethod
    def validate_config(cls, config: Any, registry: object) -> None:
        require_nats("plugin")
        check_names(config)
        if not config.durable or any(char in config.durable for char in " .*>"):
            raise ValueError(f"durable: {config.durable!r} is not a consumer name")

    async def open(self) -> None:
        require_nats("plugin")

    async def run(self, emit: Emit) -> None:
        try:
            await self._link.connect()
            while True:
                subscription = await self._subscribe()
                try:
                    await self._consume(subscription, emit)
                except Exception as exc:  # never leave the fleet for good: bind again
                    self.ctx.error("consuming failed, binding the consumer again: %r", exc)
                    await anyio.sleep(1)
                finally:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                        await _quietly_unsubscribe(subscription)
        finally:
            with anyio.CancelScope(shield=True):
                await self._link.close()

    # -- the consumer -------------------------------------------------------------

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        """Create (or update) the durable consumer and bind to it, retrying until it works."""
        from nats.js.errors import NotFoundError

        config = self.config
        delay = 0.5
        while True:
            try:
                return await self._bind(self._link.js)
            except NotFoundError:
                problem = f"stream {config.stream} not found: waiting for a nats sink to create it"
            except Exception as exc:
                problem = f"cannot consume {config.durable} from stream {config.stream}: {exc!r}"
            self.ctx.status["nats_error"] = problem
            if self._quiet.due(problem):
                self.ctx.logger.warning("%s (retrying)", problem)
            await anyio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECS)

    async def _bind(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        from nats.js import api

        config = self.config
        await js.add_consumer(
            config.stream,
            api.ConsumerConfig(
                durable_name=config.durable,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=config.ack_wait_secs,
                max_ack_pending=config.max_ack_pending,
                max_deliver=-1,
                filter_subject=config.subject,
                deliver_policy=(
                    api.DeliverPolicy.ALL if config.deliver == "all" else api.DeliverPolicy.NEW
                ),
            ),
        )
        subscription = await js.pull_subscribe_bind(durable=config.durable, stream=config.stream)
        self.ctx.logger.info("consuming %s from stream %s", config.durable, config.stream)
        self.ctx.status.pop("nats_error", None)
        return subscription

    async def _consume(self, subscription: JetStreamContext.PullSubscription, emit: Emit) -> None:
        """Fetch and deliver until the consumer is gone (then the caller binds again)."""
        from nats.errors import TimeoutError as FetchTimeout
        from nats.js.errors import APIError

        while True:
            try:
                msgs = await subscription.fetch(self.config.batch, timeout=FETCH_WAIT_SECS)
            except FetchTimeout:
                continue
            except APIError as exc:  # e.g. the consumer was deleted: make it again
                self.ctx.logger.warning("fetch failed: %r; binding the consumer again", exc)
                await anyio.sleep(1)
                return
            except Exception as exc:
                self.ctx.status["nats_error"] = f"fetch: {exc!r}"
                await anyio.sleep(1)
                continue
            backoff = await self._deliver(msgs, emit)
            if backoff:
                await anyio.sleep(backoff)

    async def _deliver(self, msgs: list[Msg], emit: Emit) -> float:
        """Emit the ops of ``msgs`` and acknowledge them; return a backoff when refused.

        Shielded from cancellation (for at most ``DELIVER_LIMIT_SECS``), so that a
        shutdown does not leave written ops unacknowledged.
        """
        with anyio.move_on_after(DELIVER_LIMIT_SECS, shield=True):
            fresh = [item for msg in msgs if (item := await self._unpack(msg)) is not None]
            done = 0
            for part in _parts(fresh):
                try:
                    await emit([op for item in part for op in item.ops])
                except NotAccepted as exc:
                    await self._refused(fresh[done:], exc)
                    return float(exc.retry_after)
                done += len(part)
                await self._ack(part)
            if msgs:
                self._report(msgs[-1])
        return 0.0

    async def _ack(self, part: list[_Delivered]) -> None:
        """Acknowledge written messages, and make sure NATS has the acks (a PING round trip)."""
        for item in part:
            self._seen.add(item.seq)
            await _reply(item.msg.ack())
            outcome = "redelivered" if item.redelivered else "accepted"
            self._messages.inc(instance=self.ctx.instance, outcome=outcome)
        try:
            await self._link.client.flush(timeout=ACK_FLUSH_SECS)
        except Exception as exc:  # NATS is away: the messages come back, and are recognised
            self.ctx.status["nats_error"] = f"acks not confirmed: {exc!r}"

    async def _unpack(self, msg: Msg) -> _Delivered | None:
        """The message's ops, or None when it is a duplicate (acked) or invalid (dropped)."""
        meta = msg.metadata
        seq = meta.sequence.stream
        if seq in self._seen:
            await _reply(msg.ack())
            self._messages.inc(instance=self.ctx.instance, outcome="duplicate")
            return None
        try:
            ops = self._decode(msg.data)
        except InvalidEvent as exc:
            await _reply(msg.term())
            self._messages.inc(instance=self.ctx.instance, outcome="invalid")
            self.ctx.error("stream %s message %d dropped: %s", self.config.stream, seq, exc)
            return None
        return _Delivered(msg, seq, ops, meta.num_delivered > 1)

    def _decode(self, data: bytes) -> list[Op]:
        """NDJSON ops (a JSON array is taken too), each with the required fields."""
        if data.lstrip()[:1] == b"[":
            return self._decoder.decode_array(data)
        return self._decoder.decode_lines(data)

    async def _refused(self, items: Sequence[_Delivered], exc: NotAccepted) -> None:
        for item in items:
            await _reply(item.msg.nak(delay=exc.retry_after))
            self._messages.inc(instance=self.ctx.instance, outcome="refused")
        self.ctx.logger.warning(
            "%d message(s) handed back to NATS, to retry in %ss: %s",
            len(items),
            exc.retry_after,
            exc,
        )

    def _report(self, last: Msg) -> None:
        pending = last.metadata.num_pending
        self._pending.set(pending, instance=self.ctx.instance)
        self.ctx.status["pending"] = pending


def _parts(items: list[_Delivered]) -> Iterator[list[_Delivered]]:
    """Consecutive runs of messages holding at most ``EMIT_MAX_OPS`` ops (or one message)."""
    part: list[_Delivered] = []
    count = 0
    for item in items:
        if part and count + len(item.ops) > EMIT_MAX_OPS:
            yield part
            part, count = [], 0
        part.append(item)
        count += len(item.ops)
    if part:
        yield part


async def _reply(answer: Awaitable[None]) -> None:
    """Send an ack, nak or term; if the connection is gone, JetStream delivers it again."""
    from nats.errors import Error as NatsError

    try:
        await answer
    except NatsError:
        return


async def _quietly_unsubscribe(subscription: JetStreamContext.PullSubscription) -> None:
    try:
        await subscription.unsubscribe()
    except Exception:  # the connection may be gone already
        return
