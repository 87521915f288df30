"""The ``diagnosis`` analyzer: ask an LLM what the recent failures have in common.

It runs only when the ring holds a failure it has not yet diagnosed. It then
sends the last 10 failures in the ring, one ``[endpoint] input_summary: error``
line each, in ``prompt`` (at ``{errors}``) to the model, beside the cycle
(``ctx.spawn``, one call in flight, under ``timeout_secs``), and publishes a
``diagnosis`` finding carrying a ``LogEntry`` (of
``observer_plugins.sinks.gateway_log.entry``). An empty,
failed, garbled or late answer publishes nothing, is logged and counted
(``observer_diagnosis_failures_total{instance, reason}``), and the failures
stay undiagnosed, so the next cycle tries again. When the provider's reply reports
token usage (OpenAI-compatible and Ollama replies do), the call is counted in
``observer_gen_ai_calls_total`` and ``observer_gen_ai_tokens_total`` with source
``observer`` (contract §13.2). A failed op whose client left
(``attributes.client_left``: a user pressing Stop) is not a failure here.

Providers: ``lakehouse`` (``POST {url}/ai/generate``), ``ollama``
(``POST {url}/api/generate``) and ``openai`` (any OpenAI-compatible server,
``POST {url}/v1/chat/completions``). ``api_key_env`` names the environment
variable holding a bearer token, sent as ``Authorization: Bearer ...``.

With a ``fleet`` table the diagnosis instances of every observer in a fleet
diagnose each failure once between them: before a call, each new failure is
marked in a NATS key-value bucket (create-if-absent); the call is made only when
this observer marked at least one, and a failed call removes its marks so the
failures are tried again. See ``docs/scaling.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import anyio
import httpx
import msgspec

from observer_core import (
    UNSET,
    Analyzer,
    AnalyzerConfig,
    Context,
    Every,
    Finding,
    Op,
    RegisterAnalyzer,
    RegisterFindingKind,
    Window,
    check_http_url,
    hookimpl,
    is_failure,
    memory_key,
)
from observer_core.genai import count_own_call

from ...fleet.claims import FleetConfig, FleetUnavailable, check_fleet, shared_memory
from ...sinks.gateway_log.entry import LogEntry

__all__ = [
    "DEFAULT_PROMPT",
    "KIND",
    "DiagnosisAnalyzer",
    "DiagnosisConfig",
    "error_line",
]

KIND = "diagnosis"
"""The finding kind this analyzer registers and emits."""

DEFAULT_PROMPT = """\
You are a system reliability observer. Analyze these recent failures and suggest fixes:
{errors}
For each error:
1. What likely caused it?
2. How should the agent adjust its approach?
3. Should this be added to the playbook as a "don't do this"?
Be specific and actionable. Under 200 words."""

ERRORS_MARK = "{errors}"
FAILURES_SENT = 10
RESULT_CHARS = 500
CONTEXT_CHARS = 500
PUBLISH_MARGIN_SECS = 60.0
"""Time the spawned task gets beyond ``timeout_secs`` to hand its finding to the sinks."""


class DiagnosisConfig(AnalyzerConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[analyzers.NAME]`` with ``plugin = "diagnosis"``."""

    provider: str = "lakehouse"
    """``lakehouse``, ``ollama`` or ``openai``."""
    url: str = "http://localhost:3100"
    """Base URL; for ``openai`` with or without the trailing ``/v1``."""
    model: str = "qwen2.5"
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 400
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.2
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (unset: no auth header)."""
    timeout_secs: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 120
    prompt: str = DEFAULT_PROMPT
    """The prompt; ``{errors}`` is replaced by the error lines."""
    every: Every = 1
    fleet: FleetConfig | None = None
    """Diagnose each failure once across the observers sharing it (NATS key-value)."""


class _Failed(Exception):
    """A call that gave no usable diagnosis; ``reason`` labels the failure counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Batch:
    """What one call diagnoses: the error lines, the failure count, the newest failure,
    and (in a fleet) the identities of the failures not diagnosed here yet."""

    lines: str
    failures: int
    newest_seq: int
    fresh: tuple[str, ...] = ()


# -- providers: (path, body) to send, and where the text is in the reply ------


def _lakehouse_body(config: DiagnosisConfig, prompt: str) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "model": config.model,
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
    }


def _ollama_body(config: DiagnosisConfig, prompt: str) -> dict[str, Any]:
    return {
        "model": config.model,
        "prompt": prompt,
        "stream": False,
        "options": {"num_predict": config.max_tokens, "temperature": config.temperature},
    }


def _openai_body(config: DiagnosisConfig, prompt: str) -> dict[str, Any]:
    return {
        "model": config.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
    }


def _openai_text(reply: Any) -> Any:
    return reply["choices"][0]["message"]["content"]


@dataclass(frozen=True, slots=True)
class _Provider:
    path: str
    body: Callable[[DiagnosisConfig, str], dict[str, Any]]
    text: Callable[[Any], Any]


_PROVIDERS = {
    "lakehouse": _Provider("/ai/generate", _lakehouse_body, lambda reply: reply["text"]),
    "ollama": _Provider("/api/generate", _ollama_body, lambda reply: reply["response"]),
    "openai": _Provider("/v1/chat/completions", _openai_body, _openai_text),
}


def endpoint_url(config: DiagnosisConfig) -> str:
    """Where the provider's request goes (``url`` may already end in ``/v1`` for openai)."""
    base = config.url.rstrip("/")
    path = _PROVIDERS[config.provider].path
    if config.provider == "openai" and base.endswith("/v1"):
        path = path.removeprefix("/v1")
    return base + path


def _part(value: str | Any) -> str:
    return value if isinstance(value, str) and value else "?"


def error_line(op: Op) -> str:
    """``[endpoint] input_summary: error``, a missing (or empty) part written ``?``."""
    error = op.error if op.error is not UNSET else None
    return f"[{_part(op.endpoint)}] {_part(op.input_summary)}: {_part(error)}"


def _reply_json(response: httpx.Response) -> Any:
    if not response.is_success:
        raise _Failed("http_error", f"HTTP {response.status_code}: {response.text[:200]!r}")
    try:
        return response.json()
    except ValueError:
        raise _Failed("garbage", f"reply is not JSON: {response.text[:200]!r}") from None


def _reply_text(provider: _Provider, reply: Any, response: httpx.Response) -> str:
    try:
        text = provider.text(reply)
    except (KeyError, IndexError, TypeError):
        raise _Failed("garbage", f"reply lacks the text: {response.text[:200]!r}") from None
    if not isinstance(text, str):
        raise _Failed("garbage", f"reply text is not a string: {text!r:.200}")
    if not text.strip():
        raise _Failed("empty", "the model answered with no text")
    return text


class DiagnosisAnalyzer(Analyzer):
    """Asks an LLM to diagnose new failures; one ``diagnosis`` finding per answer."""

    name: ClassVar[str] = "diagnosis"
    Config = DiagnosisConfig
    emits: ClassVar[tuple[str, ...]] = (KIND,)
    config: DiagnosisConfig

    def __init__(self, config: DiagnosisConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._provider = _PROVIDERS[config.provider]
        self._url = endpoint_url(config)
        self._client: httpx.AsyncClient | None = None
        self._next_seq = 0
        """Failures with a smaller sequence number are diagnosed."""
        self._busy = False
        self._fleet = shared_memory(config.fleet, ctx)
        self._identity = msgspec.json.Encoder().encode
        self._failures = ctx.metrics.counter(
            "observer_diagnosis_failures_total",
            "Diagnosis calls that gave no finding, by instance and reason.",
        )
        self._done = ctx.metrics.counter(
            "observer_diagnoses_total", "Diagnosis findings published, by instance."
        )
        ctx.status.update(in_flight=False, skipped_busy=0)

    @classmethod
    def validate_config(cls, config: Any, registry: object) -> None:
        if config.provider not in _PROVIDERS:
            known = ", ".join(_PROVIDERS)
            raise ValueError(f"provider: unknown provider {config.provider!r} (known: {known})")
        if ERRORS_MARK not in config.prompt:
            raise ValueError(f"prompt: must contain {ERRORS_MARK} where the error lines go")
        check_http_url(config.url)
        check_fleet(config.fleet)

    async def open(self) -> None:
        headers = {}
        if self.config.api_key_env is not None:
            key = os.environ.get(self.config.api_key_env)
            if not key:
                raise RuntimeError(
                    f"api_key_env: the environment variable {self.config.api_key_env} "
                    "is not set (it should hold the API key)"
                )
            headers["Authorization"] = f"Bearer {key}"
        self._client = self.ctx.http_client(
            headers=headers, timeout=httpx.Timeout(self.config.timeout_secs)
        )
        self.ctx.status["url"] = self._url
        await self._fleet.open()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        await self._fleet.aclose()

    async def analyze(self, window: Window) -> Sequence[Finding]:
        batch = self._pending(window)
        if batch is None:
            return []
        if self._busy:
            self.ctx.status["skipped_busy"] += 1
            return []
        self._busy = True
        self.ctx.status["in_flight"] = True
        self.ctx.spawn(
            self._diagnose, batch, timeout=self.config.timeout_secs + PUBLISH_MARGIN_SECS
        )
        return []

    def _pending(self, window: Window) -> _Batch | None:
        """The batch to send when the ring holds an undiagnosed failure, else None."""
        failures = [
            (seq, op) for seq, op in enumerate(window.ops, window.first_seq) if is_failure(op)
        ]
        if not failures or failures[-1][0] < self._next_seq:
            return None
        lines = "\n".join(error_line(op) for _, op in failures[-FAILURES_SENT:])
        fresh: tuple[str, ...] = ()
        if self._fleet.shared:
            fresh = tuple(
                memory_key(self._identity(op).decode())
                for seq, op in failures
                if seq >= self._next_seq
            )
        return _Batch(lines, len(failures), failures[-1][0], fresh)

    async def _diagnose(self, batch: _Batch) -> None:
        try:
            mine = await self._mark(batch)
            if mine is None:
                return
            try:
                text = await self._ask(self.config.prompt.replace(ERRORS_MARK, batch.lines))
            except _Failed as exc:
                await self._unmark(mine)
                self._failures.inc(instance=self.ctx.instance, reason=exc.reason)
                self.ctx.status["last_error"] = f"{self.ctx.clock.timestamp()} {exc.reason}: {exc}"
                self.ctx.error(
                    "no diagnosis (%s): %s; the failures stay undiagnosed, retrying next cycle",
                    exc.reason,
                    exc,
                )
                return
            entry = LogEntry(
                operation=f"error_analysis: {batch.failures} failures",
                approach="LLM-analyzed error patterns",
                result=text[:RESULT_CHARS],
                context=batch.lines[:CONTEXT_CHARS],
            )
            await self.ctx.publish([Finding(KIND, entry)])
            self._next_seq = batch.newest_seq + 1
            self._done.inc(instance=self.ctx.instance)
            self.ctx.status["last_diagnosis"] = self.ctx.clock.timestamp()
            self.ctx.logger.info("diagnosed %d failures", batch.failures)
        finally:
            self._busy = False
            self.ctx.status["in_flight"] = False

    async def _mark(self, batch: _Batch) -> list[str] | None:
        """Mark the batch's new failures for this observer: those it marked, or None when
        there is nothing for it to diagnose (they are another observer's, or NATS is away).

        The oldest new failure's marker decides: observers that see the same failures at
        the same moment race for it, and the loser leaves the whole batch to the winner.
        """
        fresh = batch.fresh
        try:
            mine = await self._won(fresh[:1])
            if mine:
                mine += await self._won(fresh[1:])
        except FleetUnavailable as exc:
            self._failures.inc(instance=self.ctx.instance, reason="fleet_unavailable")
            self.ctx.error("cannot mark failures in the fleet, retrying next cycle: %s", exc)
            return None
        if fresh and not mine:
            self._next_seq = batch.newest_seq + 1
            self.ctx.logger.info("these failures are diagnosed by another observer")
            return None
        return mine

    async def _won(self, identities: tuple[str, ...]) -> list[str]:
        """Those of ``identities`` whose marker this call created."""
        created = await self._fleet.mark_new(identities)
        return [identity for identity, new in zip(identities, created, strict=True) if new]

    async def _unmark(self, identities: list[str]) -> None:
        try:
            await self._fleet.unmark(identities)
        except FleetUnavailable as exc:
            self.ctx.error("could not unmark failures (they stay marked for a day): %s", exc)

    async def _ask(self, prompt: str) -> str:
        assert self._client is not None, "open() was not called"
        body = self._provider.body(self.config, prompt)
        try:
            with anyio.fail_after(self.config.timeout_secs):
                response = await self._client.post(self._url, json=body)
        except (TimeoutError, httpx.TimeoutException):
            raise _Failed("timeout", f"no answer within {self.config.timeout_secs}s") from None
        except httpx.HTTPError as exc:
            raise _Failed("unreachable", f"{self._url}: {type(exc).__name__}: {exc}") from None
        reply = _reply_json(response)
        count_own_call(self.ctx.metrics, reply, self.config.model)
        return _reply_text(self._provider, reply, response)


@hookimpl
def observer_register_analyzers(register: RegisterAnalyzer) -> None:
    register(DiagnosisAnalyzer)


@hookimpl
def observer_register_finding_kinds(register: RegisterFindingKind) -> None:
    register(KIND)
