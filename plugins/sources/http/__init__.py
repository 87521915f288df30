"""The ``http`` source: the ingest listener agents post events to.

Endpoints: ``GET /health``, ``GET /ready``, ``GET /stats``, ``GET /metrics``,
``GET /tap``, ``GET /`` (the status page), ``POST /event`` (one JSON object) and
``POST /events`` (NDJSON or a JSON array, at most ``max_batch_events`` events: past it
413). An event is answered 200 only after every ack-holding op sink has written it; a
failing sink or a backed-up input answers 503 with ``Retry-After`` (only what a retry
can clear).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from functools import partial
from typing import ClassVar

import msgspec

from observer_core import (
    BatchTooLarge,
    Emit,
    Emitter,
    EventDecoder,
    InvalidEvent,
    NotAccepted,
    Op,
    RegisterSource,
    UnknownFields,
    hookimpl,
    split_lines,
)
from observer_core.http import LATER, Later, Request, Response
from observer_core.listener import ListenerConfig, ListenerSource, Port, ReadRoutes

__all__ = ["HttpConfig", "HttpSource", "Port", "ReadRoutes"]
"""``Port`` and ``ReadRoutes`` moved to :mod:`observer_core.listener`; kept here for code
that imported them here."""


class HttpConfig(ListenerConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[sources.NAME]`` with ``plugin = "http"`` (those of every listener)."""


async def _not_serving(ops: Sequence[Op]) -> None:
    raise NotAccepted("not serving yet", retry_after=1)


class _TooManyEvents(InvalidEvent):
    """A batch with more events than ``max_batch_events``: 413, not 400."""


_UNREADABLE = (msgspec.MsgspecError, UnicodeDecodeError, RecursionError)
_Items = msgspec.json.Decoder(list[msgspec.Raw])
"""A JSON array's items, each left undecoded: counts them without building objects."""


def _check_array(body: bytes, limit: int) -> None:
    """Raise :class:`_TooManyEvents` when the JSON array ``body`` holds more than ``limit``
    events: an upper bound first (its ``{``, one C call), the items counted undecoded only
    past it. A body that is not JSON passes, and decoding words its error."""
    if body.count(b"{") <= limit:
        return
    try:
        count = len(_Items.decode(body))
    except _UNREADABLE:
        return
    if count > limit:
        raise _TooManyEvents(_too_many(count, limit))


def _check_lines(lines: list[bytes], limit: int) -> None:
    """Raise :class:`_TooManyEvents` when more than ``limit`` of NDJSON ``lines`` are events.
    The lines are split once for decoding anyway, so the usual batch pays one ``len``; the
    blank ones are counted out only past the limit. (Counting the body's newlines instead
    cost ~1,600 instructions per event of a 100-event batch: bench/instructions.py --batch.)"""
    if len(lines) <= limit:
        return
    count = sum(1 for line in lines if line.strip())
    if count > limit:
        raise _TooManyEvents(_too_many(count, limit))


_EVENT_ACCEPTED = b'{"accepted":true,"ring_size":%d}'
"""The answer to ``POST /event``, given the ring's length."""


def _too_many(count: int, limit: int) -> str:
    return f"batch too large: {count} events, more than max_batch_events ({limit})"


"""What, besides newlines, a blank line of NDJSON may hold (``bytes.isspace``)."""


class _Routes(ReadRoutes):
    """The read routes plus ``POST /event`` and ``POST /events``.

    With the engine's :class:`~observer_core.Emitter`, an event is answered from the
    commit's callback (``submit`` and ``LATER``): no coroutine, future or task step per
    request. Any other ``emit`` is awaited in a coroutine.
    """

    routes: ClassVar[dict[str, str]] = {**ReadRoutes.routes, "/event": "POST", "/events": "POST"}

    def __init__(self, source: HttpSource) -> None:
        super().__init__(
            source.ctx.observer,
            source.config.token,
            source.reject,
            max_taps=source.config.max_taps,
            tap_queue_max=source.config.tap_queue_max,
        )
        self._emit: Emit = _not_serving
        self._emitter: Emitter | None = None
        ctx = source.ctx
        self._decoder = EventDecoder(
            max_field_bytes=ctx.max_field_bytes, on_unknown=UnknownFields(ctx.metrics, ctx.logger)
        )
        self._ring_len = source.ctx.observer.ring_len
        # _answer, bound once: a method read as a value is looked up and bound per request
        # (measured: ~300 instructions per POST /event, bench/instructions.py).
        self._answer_to = self._answer
        self._max_batch = source.config.max_batch_events

    def serve(self, emit: Emit) -> None:
        """Start taking events: accepted ones go to ``emit``."""
        self._emit = emit
        self._emitter = emit if isinstance(emit, Emitter) else None

    def handle(self, request: Request) -> Response | Awaitable[Response] | Later:
        path = request.path
        try:
            if path == "/event":
                ops = [self._decoder.decode(request.body)]
                batch = 0
            elif path == "/events":
                ops = self._decode_batch(request.body)
                batch = len(ops)
            else:
                return super().handle(request)
        except _TooManyEvents as exc:
            return self._reject(413, str(exc))
        except InvalidEvent as exc:
            return self._reject(400, str(exc))
        emitter = self._emitter
        if emitter is None:
            return self._accept(ops, batch)
        try:
            if emitter.lone and emitter.commit_now(ops):  # lone, written at once: answer now
                # (measured: c=1 +3-6 % events/s against the dispatcher's round trip)
                return self._accepted(batch)
            emitter.submit(ops, partial(self._answer_to, request, batch))
        except NotAccepted as exc:
            return self._refused(exc)
        return LATER

    def _answer(self, request: Request, batch: int, refusal: NotAccepted | None) -> None:
        if refusal is None and not batch:  # _accepted(0), inline: measured, its call cost
            # ~360 instructions per POST /event (bench/instructions.py)
            request.reply(Response(200, _EVENT_ACCEPTED % self._ring_len()))
        else:
            request.reply(self._accepted(batch) if refusal is None else self._refused(refusal))

    async def _accept(self, ops: list[Op], batch: int) -> Response:
        try:
            await self._emit(ops)
        except NotAccepted as exc:
            return self._refused(exc)
        return self._accepted(batch)

    def _accepted(self, batch: int) -> Response:
        """200 for ``/event`` (``batch`` 0) or for a batch of that many events."""
        if batch:
            return Response(200, b'{"accepted":%d}' % batch)
        return Response(200, _EVENT_ACCEPTED % self._ring_len())

    def _refused(self, refusal: NotAccepted) -> Response:
        """503 with ``Retry-After`` for what a retry can clear; 413 for what it never can."""
        if isinstance(refusal, BatchTooLarge):
            return self._reject(413, str(refusal))
        return self._reject(503, str(refusal), [("Retry-After", str(refusal.retry_after))])

    def _decode_batch(self, body: bytes) -> list[Op]:
        """``POST /events``: NDJSON or a JSON array, at least one event and at most
        ``max_batch_events`` (counted before anything is decoded)."""
        stripped = body.lstrip()
        decoder = self._decoder
        if stripped[:1] == b"[":
            _check_array(stripped, self._max_batch)
            ops = decoder.decode_array(stripped)
        else:
            lines = split_lines(body)
            _check_lines(lines, self._max_batch)
            ops = decoder.decode_lines(body, lines)
        if not ops:
            raise InvalidEvent("empty batch: send one or more events")
        return ops


class HttpSource(ListenerSource):
    """Takes events over HTTP (POST /event, /events) and serves the read routes."""

    name: ClassVar[str] = "http"
    Config = HttpConfig
    config: HttpConfig

    def routes(self) -> ReadRoutes:
        return _Routes(self)


@hookimpl
def observer_register_sources(register: RegisterSource) -> None:
    register(HttpSource)
