"""Token usage of model calls (contract §13.2): counted in ``/metrics``, summed in ``/stats``.

An op reports a model call through its ``attributes``, under the OpenTelemetry
GenAI names: ``gen_ai.request.model``, ``gen_ai.response.model``,
``gen_ai.usage.input_tokens`` and ``gen_ai.usage.output_tokens`` (numbers). Any
source may set them (the gateway proxy and Python API, the otlp source); the
engine counts every accepted op that has one (:func:`count_ops`). An analyzer
that calls a model itself counts its call with :func:`count_call`, source
``observer``.

A call's model is its response model, else its request model, else ``unknown``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter
from typing import Any, Final

from .metrics import MAX_LABEL_BYTES, Metrics, cut_utf8
from .records import Op, UnsetType

__all__ = [
    "INPUT_TOKENS",
    "OBSERVER_SOURCE",
    "OUTPUT_TOKENS",
    "REQUEST_MODEL",
    "RESPONSE_MODEL",
    "ModelCall",
    "count_call",
    "count_ops",
    "model_call",
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
