"""Token usage of model calls (contract §13.2): counted in ``/metrics``, summed in ``/stats``.

An op reports a model call through its ``attributes``, under the OpenTelemetry
GenAI names: ``gen_ai.request.model``, ``gen_ai.response.model``,
``gen_ai.usage.input_tokens`` and ``gen_ai.usage.output_tokens`` (numbers). Any
source may set them (the gateway proxy and Python API, the otlp source); the
engine counts every accepted op that has one (:func:`count_ops`). An analyzer
that calls a model itself counts its call with :func:`count_call`, source
``observer``.

A call's model is its response model, else its request model, else ``unknown``.

A model's JSON reply tells its model and usage (:func:`reply_usage`,
:func:`decode_usage`): OpenAI's ``prompt_tokens`` / ``completion_tokens``, or
``input_tokens`` / ``output_tokens`` as its Responses API writes them; Ollama's
``prompt_eval_count`` / ``eval_count``. An analyzer that called a model counts the
call from its reply with :func:`count_own_call`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import compress
from operator import attrgetter
from typing import Any, Final

import msgspec

from .metrics import MAX_LABEL_BYTES, Metrics, cut_utf8
from .records import AttributeValue, Op, UnsetType

__all__ = [
    "INPUT_TOKENS",
    "OBSERVER_SOURCE",
    "OUTPUT_TOKENS",
    "REQUEST_MODEL",
    "RESPONSE_MODEL",
    "ModelCall",
    "Usage",
    "count_call",
    "count_ops",
    "count_own_call",
    "decode_usage",
    "model_call",
    "model_name",
    "reply_usage",
    "tokens_by_model",
]

REQUEST_MODEL: Final = "gen_ai.request.model"
RESPONSE_MODEL: Final = "gen_ai.response.model"
INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
OBSERVER_SOURCE: Final = "observer"
"""The source under which the observer's own model calls (its analyzers') are counted."""
UNKNOWN_MODEL: Final = "unknown"
OTHER_MODEL: Final = "other"
MAX_STATS_MODELS: Final = 64
"""Entries of ``/stats`` ``tokens_by_model``, ``other`` included."""

_attributes_of = attrgetter("attributes")


@dataclass(frozen=True, slots=True)
class ModelCall:
    """One model call: its model and the tokens it reported (None when not reported)."""

    model: str
    input_tokens: int | float | None = None
    output_tokens: int | float | None = None


def _tokens(value: Any) -> int | float | None:
    """A token count: a finite number, not negative (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value < 0 or not math.isfinite(value):
        return None
    return value


def _model(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def model_call(attributes: Mapping[str, Any] | UnsetType) -> ModelCall | None:
    """The model call an op's attributes report, or None when they name no model and no
    tokens."""
    if isinstance(attributes, UnsetType):
        return None
    model = _model(attributes.get(RESPONSE_MODEL)) or _model(attributes.get(REQUEST_MODEL))
    input_tokens = _tokens(attributes.get(INPUT_TOKENS))
    output_tokens = _tokens(attributes.get(OUTPUT_TOKENS))
    if model is None and input_tokens is None and output_tokens is None:
        return None
    return ModelCall(model or UNKNOWN_MODEL, input_tokens, output_tokens)


def count_call(
    metrics: Metrics, source: str, call: ModelCall, success: bool, calls: int = 1
) -> None:
    """Count ``calls`` calls (one by default) in ``observer_gen_ai_calls_total`` and
    ``call``'s tokens in ``observer_gen_ai_tokens_total`` (labels bounded as SECURITY
    §11.3 says)."""
    source, model = metrics.source_label(source), metrics.label("model", call.model)
    metrics.counter(
        "observer_gen_ai_calls_total", "Model calls, by source, model and outcome."
    ).inc(calls, source=source, model=model, outcome="success" if success else "failure")
    tokens = metrics.counter(
        "observer_gen_ai_tokens_total",
        "Tokens of model calls, by source, model and type (input, output).",
    )
    for kind, count in (("input", call.input_tokens), ("output", call.output_tokens)):
        if count is not None:
            tokens.inc(count, source=source, model=model, type=kind)


def _with_attributes(ops: Iterable[Op]) -> Iterable[Op]:
    """The ops that have attributes (picked in C: most ops have none)."""
    ops = ops if isinstance(ops, Sequence) else list(ops)
    return compress(ops, map(_attributes_of, ops))


def _plus(total: int | float | None, more: int | float | None) -> int | float | None:
    return total if more is None else more if total is None else total + more


def count_ops(metrics: Metrics, ops: Sequence[Op]) -> None:
    """Count the model calls among accepted ``ops``: summed per source, model and outcome
    first, so a batch of calls to one model costs a few counter updates."""
    summed: dict[tuple[str, str, bool], tuple[int, ModelCall]] = {}
    for op in _with_attributes(ops):
        call = model_call(op.attributes)
        if call is None:
            continue
        key = (op.source, call.model, op.success)
        if key in summed:
            calls, total = summed[key]
            call = ModelCall(
                call.model,
                _plus(total.input_tokens, call.input_tokens),
                _plus(total.output_tokens, call.output_tokens),
            )
            summed[key] = (calls + 1, call)
        else:
            summed[key] = (1, call)
    for (source, _, success), (calls, call) in summed.items():
        count_call(metrics, source, call, success, calls)


def tokens_by_model(ops: Iterable[Op]) -> dict[str, dict[str, int | float]]:
    """Calls and tokens per model over ``ops`` (``/stats``), each model cut to 128 bytes
    (as a metric label); past 64 models, the 63 that used the most tokens and the rest
    summed under ``other`` (as ``by_source``)."""
    totals: dict[str, dict[str, int | float]] = {}
    for op in _with_attributes(ops):
        call = model_call(op.attributes)
        if call is not None:
            _add(totals, cut_utf8(call.model, MAX_LABEL_BYTES), 1, call)
    if len(totals) <= MAX_STATS_MODELS:
        return totals
    ranked = sorted(totals.items(), key=_spent, reverse=True)
    top = dict(ranked[: MAX_STATS_MODELS - 1])
    for _, entry in ranked[MAX_STATS_MODELS - 1 :]:
        summed = ModelCall(OTHER_MODEL, entry["input_tokens"], entry["output_tokens"])
        _add(top, OTHER_MODEL, int(entry["calls"]), summed)
    return top


def _add(
    totals: dict[str, dict[str, int | float]], model: str, calls: int, call: ModelCall
) -> None:
    entry = totals.setdefault(model, {"calls": 0, "input_tokens": 0, "output_tokens": 0})
    entry["calls"] += calls
    entry["input_tokens"] += call.input_tokens or 0
    entry["output_tokens"] += call.output_tokens or 0


def _spent(item: tuple[str, dict[str, int | float]]) -> tuple[int | float, int | float]:
    """What ranks a model in ``tokens_by_model``: its tokens, then its calls."""
    entry = item[1]
    return entry["input_tokens"] + entry["output_tokens"], entry["calls"]


MODEL_CHARS = 256
"""A model name is cut to this many characters in the op."""


class _Reply(msgspec.Struct):
    """The fields of a reply (or an SSE event's data) that tell the model and the usage;
    msgspec skips the others (``choices``...) without building them."""

    model: Any = None
    usage: Any = None
    prompt_eval_count: Any = None
    eval_count: Any = None


_decode_reply = msgspec.json.Decoder(_Reply).decode


def _token_count(value: Any) -> int | None:
    """A token count as a reply writes it: an integer, not negative."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def model_name(value: Any) -> str | None:
    """``value`` when it is a model's name (a non-empty string), cut to 256 characters; a
    lone surrogate (``json.loads`` lets ``"\\ud800"`` through; UTF-8 cannot carry it) is
    written ``?``."""
    if not isinstance(value, str) or not value:
        return None
    name: str = value[:MODEL_CHARS]
    return name if name.isascii() else name.encode(errors="replace").decode()


@dataclass(frozen=True, slots=True)
class Usage:
    """What a reply said about its call; None where it said nothing."""

    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None

    @property
    def has_tokens(self) -> bool:
        """The reply reported a token count."""
        return self.input_tokens is not None or self.output_tokens is not None

    def attributes(self, request_model: str | None = None) -> dict[str, AttributeValue]:
        """The op attributes for this usage (and the model the request asked for)."""
        found: dict[str, AttributeValue] = {}
        if request_model is not None:
            found[REQUEST_MODEL] = request_model
        if self.model is not None:
            found[RESPONSE_MODEL] = self.model
        if self.input_tokens is not None:
            found[INPUT_TOKENS] = self.input_tokens
        if self.output_tokens is not None:
            found[OUTPUT_TOKENS] = self.output_tokens
        return found

    def updated(self, newer: Usage) -> Usage:
        """This usage with what ``newer`` says instead (a stream's later event wins)."""
        if newer.has_tokens:
            return replace(newer, model=newer.model or self.model)
        if newer.model is not None:
            return replace(self, model=newer.model)
        return self


def _reply_usage(reply: _Reply) -> Usage:
    model = model_name(reply.model)
    usage = reply.usage
    if isinstance(usage, dict):
        input_tokens = _token_count(usage.get("prompt_tokens", usage.get("input_tokens")))
        output_tokens = _token_count(usage.get("completion_tokens", usage.get("output_tokens")))
    else:  # Ollama's native API
        input_tokens = _token_count(reply.prompt_eval_count)
        output_tokens = _token_count(reply.eval_count)
    return Usage(model, input_tokens, output_tokens)


def reply_usage(data: Any) -> Usage:
    """The model and tokens in a parsed JSON reply (an empty :class:`Usage` if none)."""
    if not isinstance(data, dict):
        return Usage()
    return _reply_usage(
        _Reply(
            data.get("model"),
            data.get("usage"),
            data.get("prompt_eval_count"),
            data.get("eval_count"),
        )
    )


def decode_usage(payload: bytes) -> Usage | None:
    """The model and tokens in a JSON reply's bytes (an SSE event's data); None when the
    bytes are not a JSON reply."""
    try:
        return _reply_usage(_decode_reply(payload))
    except msgspec.MsgspecError:
        return None


def count_own_call(metrics: Metrics, reply: Any, model_asked: str | None) -> None:
    """Count an analyzer's own model call (source ``observer``) when its JSON reply reports
    token usage; a reply that reports none is not counted."""
    usage = reply_usage(reply)
    if usage.has_tokens:
        call = ModelCall(
            usage.model or model_asked or UNKNOWN_MODEL, usage.input_tokens, usage.output_tokens
        )
        count_call(metrics, OBSERVER_SOURCE, call, success=True)
