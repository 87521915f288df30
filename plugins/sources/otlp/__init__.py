"""The ``otlp`` source: OpenTelemetry spans over OTLP/HTTP become ops (contract §13.1).

Serves ``POST /v1/traces`` (``application/x-protobuf`` or ``application/json``, gzip or
not) on 127.0.0.1:4318. Each GenAI span becomes one op (every span, with ``all_spans``);
the answer, an ``ExportTraceServiceResponse`` in the request's encoding, goes out only
after every ack-holding sink wrote the ops. Spans that cannot be mapped are reported in
``partial_success``; errors are a ``google.rpc.Status`` in the request's encoding.
Needs the ``[otlp]`` extra (``opentelemetry-proto``).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Sequence
from functools import partial
from typing import Annotated, ClassVar

import msgspec

from observer_core import Emit, Emitter, NotAccepted, Op, RegisterSource, hookimpl
from observer_core.http import LATER, Later, Request, Response
from observer_core.listener import ListenerConfig, ListenerSource, Port, ReadRoutes

from . import otlpjson
from .mapping import SIZE_MARGIN, Mapping, Unmappable, map_span
from .wire import GRPC_CODES, Codec, InvalidBody, ResourceSpans, TooLarge, inflate

__all__ = ["OtlpConfig", "OtlpSource"]

_PROTOBUF = b"application/x-protobuf"
_JSON = b"application/json"
_MAX_ERRORS_SHOWN = 3


class OtlpConfig(ListenerConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[sources.NAME]`` with ``plugin = "otlp"`` (the listener keys of ``http``)."""

    port: Port = 4318
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1, le=1 << 30)] = 4 * 1024 * 1024
    """The body as sent (compressed or not); larger gets 413 without being read."""
    max_decompressed_bytes: Annotated[int, msgspec.Meta(ge=1, le=1 << 30)] = 16 * 1024 * 1024
    """A gzip body that inflates past this gets 413 (checked while inflating)."""
    all_spans: bool = False
    """Every span becomes an op, not only GenAI spans."""
    source: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    """The ops' ``source``; unset: the resource's ``service.name``, else ``"otlp"``."""
    staffer_attribute: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    """The span attribute read as ``staffer_id``; unset: ``gen_ai.agent.name``, else
    ``gen_ai.agent.id``, else ``enduser.id``."""
    derive_sig_hash: bool = False
    """Give a failed span with ``error.type`` (and no ``observer.sig_hash``) a ``sig_hash``
    digested from source, endpoint and ``error.type`` (may start escalations)."""


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    """The first value of header ``name`` (lower-case), lower-cased and stripped; else b""."""
    return next((value.strip().lower() for key, value in headers if key == name), b"")


def _media_type(headers: list[tuple[bytes, bytes]]) -> bytes:
    """``Content-Type`` without its parameters (``; charset=utf-8``)."""
    return _header(headers, b"content-type").partition(b";")[0].rstrip()


class _TraceRoutes(ReadRoutes):
    """``POST /v1/traces``; every other path is a 404 (``/v1/metrics`` and ``/v1/logs`` too).

    The checks of :class:`ReadRoutes` (404, 405, 401), then 413 (``Content-Length`` past
    ``max_body_bytes``) and 415 (another content type or coding) before the body is read;
    400 for a body that does not decode, 413 for one that inflates too far.
    """

    routes: ClassVar[dict[str, str]] = {"/v1/traces": "POST"}

    def __init__(self, source: OtlpSource, protobuf: Codec) -> None:
        super().__init__(source.ctx.observer, source.config.token, source.reject)
        config = source.config
        self._codecs = {_PROTOBUF: protobuf, _JSON: otlpjson.CODEC}
        self._precheck_codec = otlpjson.CODEC
        self._max_body = config.max_body_bytes
        self._max_inflated = config.max_decompressed_bytes
        self._max_spans = config.max_batch_events
        self._mapping = Mapping(
            all_spans=config.all_spans,
            source=config.source,
            staffer_attribute=config.staffer_attribute,
            derive_sig_hash=config.derive_sig_hash,
            max_field_bytes=source.ctx.max_field_bytes,
        )
        self._spans = source.ctx.metrics.counter(
            "observer_otlp_spans_total",
            "Spans received over OTLP, by instance and outcome (accepted, ignored, rejected).",
        )
        self._instance = source.ctx.instance
        self._emit: Emit | None = None

    def serve(self, emit: Emit) -> None:
        """Start taking spans: their ops go to ``emit``."""
        self._emit = emit

    def _codec(self, headers: list[tuple[bytes, bytes]]) -> Codec:
        """The request's encoding; JSON for a request that is neither (e.g. a 404)."""
        return self._codecs.get(_media_type(headers), otlpjson.CODEC)

    def precheck(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> Response | None:
        self._precheck_codec = codec = self._codec(headers)  # for _reject, just below
        early = super().precheck(method, path, headers)
        if early is not None:
            return early
        length = _header(headers, b"content-length")
        if length.isdigit() and int(length) > self._max_body:
            return self._fail(
                codec, 413, f"body over max_body_bytes ({self._max_body}); send smaller batches"
            )
        media_type = _media_type(headers)
        if media_type not in self._codecs:
            shown = media_type.decode("latin-1")[:80] or "none"
            return self._fail(
                codec,
                415,
                f"content type {shown!r}: send application/x-protobuf or application/json",
            )
        coding = _header(headers, b"content-encoding")
        if coding not in (b"", b"gzip", b"identity"):
            shown = coding.decode("latin-1")[:80]
            return self._fail(codec, 415, f"content encoding {shown!r}: send gzip or none")
        return None

    def _reject(
        self, status: int, message: str, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        return self._fail(self._precheck_codec, status, message, headers)

    def _fail(
        self,
        codec: Codec,
        status: int,
        message: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        """An error answer: a ``google.rpc.Status`` in ``codec``'s encoding, counted."""
        self._count(status)
        body = codec.status(GRPC_CODES.get(status, 2), message)
        return Response(status, body, headers or [], content_type=codec.content_type)

    def handle(self, request: Request) -> Response | Awaitable[Response] | Later:
        codec = self._codec(request.headers)
        body = request.body
        try:
            if _header(request.headers, b"content-encoding") == b"gzip":
                body = inflate(body, self._max_inflated)
            resources = codec.decode(body, self._mapping.wanted)
        except TooLarge as exc:
            return self._fail(codec, 413, str(exc))
        except InvalidBody as exc:
            return self._fail(codec, 400, str(exc))
        ops, ignored, errors = self._map(
            resources, len(body) + SIZE_MARGIN > self._mapping.max_field_bytes
        )
        if ignored:
            self._spans.inc(ignored, instance=self._instance, outcome="ignored")
        if errors:
            self._spans.inc(len(errors), instance=self._instance, outcome="rejected")
        # As for /events: past max_batch_events 413, since a 503 would have the exporter
        # retry a request that can never be accepted.
        if len(ops) > (limit := self._max_spans):
            return self._fail(
                codec,
                413,
                f"{len(ops)} spans to record in one request, more than max_batch_events"
                f" ({limit}); export smaller batches (OTEL_BSP_MAX_EXPORT_BATCH_SIZE)",
            )
        answer = codec.response(len(errors), _summary(errors))
        if not ops:
            return Response(200, answer, content_type=codec.content_type)
        emit = self._emit
        if emit is None:
            return self._refused(codec, NotAccepted("not serving yet", retry_after=1))
        if not isinstance(emit, Emitter):
            return self._accept(emit, ops, codec, answer)
        try:
            if emit.lone and emit.commit_now(ops):  # a lone export, written at once
                return self._accepted(codec, answer, len(ops))
            emit.submit(ops, partial(self._answer, request, codec, answer, len(ops)))
        except NotAccepted as exc:
            return self._refused(codec, exc)
        return LATER

    def _map(
        self, resources: list[ResourceSpans], check_sizes: bool
    ) -> tuple[list[Op], int, list[str]]:
        """The ops of the GenAI spans, how many spans were ignored, why others were rejected."""
        ops: list[Op] = []
        ignored = 0
        errors: list[str] = []
        mapping = self._mapping
        for service_name, spans in resources:
            for span in spans:
                try:
                    op = map_span(span, service_name, mapping, check_sizes)
                except Unmappable as exc:
                    errors.append(f"span {span.span_id[:16] or '?'}: {exc}")
                    continue
                if op is None:
                    ignored += 1
                else:
                    ops.append(op)
        return ops, ignored, errors

    async def _accept(self, emit: Emit, ops: list[Op], codec: Codec, answer: bytes) -> Response:
        try:
            await emit(ops)
        except NotAccepted as exc:
            return self._refused(codec, exc)
        self._spans.inc(len(ops), instance=self._instance, outcome="accepted")
        return Response(200, answer, content_type=codec.content_type)

    def _answer(
        self, request: Request, codec: Codec, answer: bytes, count: int, refusal: NotAccepted | None
    ) -> None:
        if refusal is not None:
            request.reply(self._refused(codec, refusal))
            return
        request.reply(self._accepted(codec, answer, count))

    def _accepted(self, codec: Codec, answer: bytes, count: int) -> Response:
        """200 for ``count`` spans committed; ``answer`` tells of any rejected."""
        self._spans.inc(count, instance=self._instance, outcome="accepted")
        return Response(200, answer, content_type=codec.content_type)

    def _refused(self, codec: Codec, refusal: NotAccepted) -> Response:
        retry = [("Retry-After", str(refusal.retry_after))]
        return self._fail(codec, 503, str(refusal), retry)


def _summary(errors: Sequence[str]) -> str:
    """``partial_success.error_message``: the first few reasons, and how many more."""
    if not errors:
        return ""
    shown = "; ".join(errors[:_MAX_ERRORS_SHOWN])
    more = len(errors) - _MAX_ERRORS_SHOWN
    return f"{shown}; and {more} more" if more > 0 else shown


class OtlpSource(ListenerSource):
    """Takes OpenTelemetry spans (OTLP/HTTP ``POST /v1/traces``); GenAI spans become ops."""

    name: ClassVar[str] = "otlp"
    Config = OtlpConfig
    config: OtlpConfig
    requires: ClassVar[tuple[str, ...]] = ("opentelemetry.proto",)
    install_hint: ClassVar[str] = (
        "pip install 'observer-core[otlp]' (from a clone: pip install -e '.[otlp]')"
    )

    def routes(self) -> ReadRoutes:
        protobuf = importlib.import_module(f"{__name__}.protobuf")
        return _TraceRoutes(self, protobuf.CODEC)


@hookimpl
def observer_register_sources(register: RegisterSource) -> None:
    register(OtlpSource)
