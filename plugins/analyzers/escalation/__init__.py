"""The ``escalation`` analyzer: send recurring failure clusters to a code-review service.

Failures are grouped by ``sig_hash`` (ops without one are ignored, and so are
failed ops whose client left, ``attributes.client_left``: a user pressing Stop
is not the gateway failing). A group that
reaches ``threshold`` and was never escalated is POSTed to
``{url}/api/run?mode=code_review`` as ``{"input": ...}`` describing its last 8
failures; the reply becomes an :class:`EscalationRow` (defined here), published
as an ``escalation`` finding.

Each sig_hash is escalated once, ever (again after ``reescalate_after_secs``
when that is above 0): the escalated set, with timestamps and attempt counts, is
saved atomically under ``state_dir`` after each attempt, so neither a restart
nor a ``kill -9`` escalates a cluster twice. A failed attempt (refused
connection, timeout, any non-2xx answer, a reply that is not a JSON object) is
logged, counted in ``observer_escalation_failures_total{instance, reason}`` and
retried on a later cycle, up to ``max_attempts`` in all. Calls run beside the
cycle (``ctx.spawn``), one per sig_hash and at most a few at once. A reply that
reports token usage (OpenAI's ``model`` and ``usage``) is counted in
``observer_gen_ai_*_total`` with source ``observer`` (contract §13.2).

With a ``fleet`` table the escalation instances of every observer in a fleet
share one memory in a NATS key-value bucket: a sig_hash is claimed
(create-if-absent) before the call and marked done after the row is published,
so it is escalated once fleet-wide; a claim whose holder died is taken over
after the call's time limit. See ``docs/scaling.md``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
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
    now_timestamp,
)
from observer_core.genai import count_own_call

from ...fleet.claims import (
    Claim,
    FleetConfig,
    FleetUnavailable,
    Outcome,
    check_fleet,
    shared_memory,
)

__all__ = [
    "KIND",
    "EscalationAnalyzer",
    "EscalationConfig",
    "EscalationRow",
    "escalation_input",
    "escalation_row",
]

KIND = "escalation"
"""The finding kind this analyzer registers and emits."""


class EscalationRow(msgspec.Struct, kw_only=True):
    """The audit row of one code-review escalation (§2); every key is always written."""

    ts: str
    source: str = "observer_escalation"
    mode: str = "code_review"
    sig_hash: str
    cluster_size: int
    cluster_staffer: str | None
    cluster_endpoint: str | None
    llm_team_run_id: Any
    facts: Any
    entities: Any
    relationships: Any
    raw_response: str | None
    recommended_files: Any


STATE_FILE = "escalated.json"
CLUSTER_SENT = 8
RAW_RESPONSE_CHARS = 2000
MAX_IN_FLIGHT = 4
"""Calls running at once; further due clusters wait for a later cycle."""
MAX_TRACKED = 100_000
"""sig_hashes remembered; past it the ones attempted longest ago are forgotten. Each is
remembered by its :func:`~observer_core.memory_key` (at most 64 bytes)."""
PUBLISH_MARGIN_SECS = 60.0
_PROMPT = (
    "Review this failure pattern. What is the root cause? What code change would "
    "prevent it? Respond with structured facts + specific file hints."
)


class EscalationConfig(AnalyzerConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[analyzers.NAME]`` with ``plugin = "escalation"``."""

    url: str = "http://localhost:5000"
    threshold: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 3
    """Failures with one sig_hash in the ring that make a cluster worth escalating."""
    timeout_secs: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 60
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    reescalate_after_secs: Annotated[float, msgspec.Meta(ge=0, le=10 * 365 * 86400)] = 0
    """Escalate a sig_hash again this long after the last time; 0: never."""
    every: Every = 1
    fleet: FleetConfig | None = None
    """Share the escalated set with the same instance on other observers (NATS key-value)."""


class SigRecord(msgspec.Struct, kw_only=True):
    """What is remembered of one sig_hash (times are Unix seconds)."""

    attempts: int = 0
    last_attempt_at: float | None = None
    escalated_at: float | None = None


class _Failed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def escalation_input(sig_hash: str, cluster: Sequence[Op]) -> str:
    """The ``input`` text: the cluster's size and its last 8 failures, numbered."""
    context = "\n".join(
        f"[{number}] endpoint={op.endpoint} input={op.input_summary} "
        f"error={'?' if op.error is UNSET else op.error}"
        for number, op in enumerate(cluster[-CLUSTER_SENT:], 1)
    )
    return (
        f"sig_hash={sig_hash} · {len(cluster)} failures on same signature:\n\n"
        f"{context}\n\n{_PROMPT}"
    )


def _first(reply: dict[str, Any], *keys: str, default: Any) -> Any:
    """The first of ``keys`` present and not null (JavaScript's ``a ?? b ?? default``)."""
    for key in keys:
        value = reply.get(key)
        if value is not None:
            return value
    return default


def escalation_row(
    sig_hash: str, cluster: Sequence[Op], reply: dict[str, Any], ts: str | None = None
) -> EscalationRow:
    """The audit row for a cluster (oldest failure first) and the service's reply, made
    at ``ts`` (default: now)."""
    oldest = cluster[0]
    response = reply.get("response")
    return EscalationRow(
        ts=now_timestamp() if ts is None else ts,
        sig_hash=sig_hash,
        cluster_size=len(cluster),
        cluster_staffer=None if oldest.staffer_id is UNSET else oldest.staffer_id,
        cluster_endpoint=oldest.endpoint,
        llm_team_run_id=_first(reply, "run_id", "llm_team_run_id", default=None),
        facts=_first(reply, "facts", default=[]),
        entities=_first(reply, "entities", default=[]),
        relationships=_first(reply, "relationships", default=[]),
        raw_response=response[:RAW_RESPONSE_CHARS] if isinstance(response, str) else None,
        recommended_files=_first(reply, "file_hints", "files", default=[]),
    )


def _reply_object(response: httpx.Response) -> dict[str, Any]:
    status = response.status_code
    if not response.is_success:
        reason = "http_429" if status == 429 else "http_5xx" if status >= 500 else "http_4xx"
        raise _Failed(reason, f"HTTP {status}: {response.text[:200]!r}")
    try:
        reply = response.json()
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise _Failed("garbage", f"reply is not a JSON object: {response.text[:200]!r}")
    return reply


class EscalationAnalyzer(Analyzer):
    """Escalates each recurring failure signature once to a code-review service."""

    name: ClassVar[str] = "escalation"
    Config = EscalationConfig
    emits: ClassVar[tuple[str, ...]] = (KIND,)
    config: EscalationConfig

    def __init__(self, config: EscalationConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._url = config.url.rstrip("/") + "/api/run?mode=code_review"
        self._client: httpx.AsyncClient | None = None
        self._records: dict[str, SigRecord] = {}
        self._in_flight: set[str] = set()
        self._save_lock = anyio.Lock()
        self._fleet = shared_memory(config.fleet, ctx)
        self._failures = ctx.metrics.counter(
            "observer_escalation_failures_total",
            "Escalation attempts that gave no row, by instance and reason.",
        )
        self._done = ctx.metrics.counter(
            "observer_escalations_total", "Escalation rows published, by instance."
        )

    @classmethod
    def validate_config(cls, config: Any, registry: object) -> None:
        check_http_url(config.url)
        check_fleet(config.fleet)

    async def open(self) -> None:
        records = await anyio.to_thread.run_sync(
            self.ctx.state.load, STATE_FILE, dict[str, SigRecord], {}
        )
        self._records = {memory_key(sig): record for sig, record in records.items()}
        self._client = self.ctx.http_client(timeout=httpx.Timeout(self.config.timeout_secs))
        await self._fleet.open()
        self._report()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        await self._fleet.aclose()

    async def analyze(self, window: Window) -> Sequence[Finding]:
        now = self.ctx.clock.now()
        for sig_hash, cluster in self._clusters(window).items():
            if len(self._in_flight) >= MAX_IN_FLIGHT:
                break
            if sig_hash in self._in_flight or not self._due(sig_hash, now):
                continue
            self._in_flight.add(sig_hash)
            self.ctx.spawn(
                self._escalate,
                sig_hash,
                cluster,
                timeout=self.config.timeout_secs + PUBLISH_MARGIN_SECS,
            )
        self._report()
        return []

    def _clusters(self, window: Window) -> dict[str, list[Op]]:
        """Failures by sig_hash (its :func:`~observer_core.memory_key`), oldest first, for
        the groups that reach the threshold."""
        groups: dict[str, list[Op]] = {}
        for op in window.ops:
            if is_failure(op) and op.sig_hash is not UNSET:
                groups.setdefault(memory_key(op.sig_hash), []).append(op)
        return {sig: ops for sig, ops in groups.items() if len(ops) >= self.config.threshold}

    def _due(self, sig_hash: str, now: float) -> bool:
        """Never escalated and attempts left, or closed long enough ago to try afresh."""
        record = self._records.get(sig_hash)
        if record is None:
            return True
        closed_at = record.escalated_at
        if closed_at is None:
            if record.attempts < self.config.max_attempts:
                return True
            closed_at = record.last_attempt_at
        again = self.config.reescalate_after_secs
        if again > 0 and closed_at is not None and now - closed_at >= again:
            self._records[sig_hash] = SigRecord()
            return True
        return False

    async def _escalate(self, sig_hash: str, cluster: list[Op]) -> None:
        try:
            claim = await self._claim(sig_hash)
            if claim is None:
                return
            record = self._records.setdefault(sig_hash, SigRecord())
            try:
                reply = await self._post(escalation_input(_sig_of(cluster), cluster))
            except _Failed as exc:
                record.attempts += 1
                record.last_attempt_at = self.ctx.clock.now()
                self._failed(sig_hash, record, exc)
                await self._settle(self._fleet.release(sig_hash, claim))
            else:
                row = escalation_row(_sig_of(cluster), cluster, reply, self.ctx.clock.timestamp())
                await self.ctx.publish([Finding(KIND, row)])
                record.attempts += 1
                record.last_attempt_at = record.escalated_at = self.ctx.clock.now()
                await self._settle(self._fleet.finish(sig_hash))
                self._done.inc(instance=self.ctx.instance)
                self.ctx.logger.info(
                    "escalated sig_hash=%s cluster=%d facts=%d entities=%d",
                    sig_hash,
                    row.cluster_size,
                    _length(row.facts),
                    _length(row.entities),
                )
            await self._save()
        finally:
            self._in_flight.discard(sig_hash)
            self._report()

    async def _claim(self, sig_hash: str) -> Claim | None:
        """Claim ``sig_hash`` for this observer; None when another one has it (or had it).

        Without a ``fleet`` table the claim is always won.
        """
        try:
            claim = await self._fleet.claim(
                sig_hash,
                lease_secs=self.config.timeout_secs + PUBLISH_MARGIN_SECS,
                again_after_secs=self.config.reescalate_after_secs,
            )
        except FleetUnavailable as exc:
            self._failures.inc(instance=self.ctx.instance, reason="fleet_unavailable")
            self.ctx.error("cannot claim sig_hash=%s, retrying next cycle: %s", sig_hash, exc)
            return None
        if claim.outcome is Outcome.DONE:
            record = self._records.setdefault(sig_hash, SigRecord())
            record.escalated_at = record.last_attempt_at = claim.at
            self.ctx.logger.info("sig_hash=%s was escalated by another observer", sig_hash)
            await self._save()
        return claim if claim.outcome is Outcome.WON else None

    async def _settle(self, work: Awaitable[None]) -> None:
        """Tell the fleet how an attempt ended; if NATS is away, the claim's lease runs out."""
        try:
            await work
        except FleetUnavailable as exc:
            self.ctx.error("could not record the outcome in the fleet: %s", exc)

    def _failed(self, sig_hash: str, record: SigRecord, exc: _Failed) -> None:
        self._failures.inc(instance=self.ctx.instance, reason=exc.reason)
        left = self.config.max_attempts - record.attempts
        then = f"{left} attempt(s) left, retrying next cycle" if left > 0 else "giving up"
        self.ctx.error(
            "escalation of sig_hash=%s failed (%s): %s; attempt %d of %d, %s",
            sig_hash,
            exc.reason,
            exc,
            record.attempts,
            self.config.max_attempts,
            then,
        )

    async def _post(self, text: str) -> dict[str, Any]:
        assert self._client is not None, "open() was not called"
        try:
            with anyio.fail_after(self.config.timeout_secs):
                response = await self._client.post(self._url, json={"input": text})
        except (TimeoutError, httpx.TimeoutException):
            raise _Failed("timeout", f"no answer within {self.config.timeout_secs}s") from None
        except httpx.HTTPError as exc:
            raise _Failed("unreachable", f"{self._url}: {type(exc).__name__}: {exc}") from None
        reply = _reply_object(response)
        count_own_call(self.ctx.metrics, reply, None)
        return reply

    async def _save(self) -> None:
        """Write the escalated set atomically (saves run one at a time)."""
        async with self._save_lock:
            self._forget_oldest()
            await self.ctx.state.save(STATE_FILE, self._records)

    def _forget_oldest(self) -> None:
        excess = len(self._records) - MAX_TRACKED
        if excess <= 0:
            return
        records = self._records
        by_age = sorted(records, key=lambda sig: records[sig].last_attempt_at or 0.0)
        for sig_hash in by_age[:excess]:
            if sig_hash not in self._in_flight:
                del records[sig_hash]

    def _report(self) -> None:
        self.ctx.status.update(
            in_flight=sorted(self._in_flight),
            escalated=sum(record.escalated_at is not None for record in self._records.values()),
        )


def _sig_of(cluster: Sequence[Op]) -> str:
    """The cluster's sig_hash as the ops carry it (its key may be a digest of it)."""
    sig_hash = cluster[0].sig_hash
    assert isinstance(sig_hash, str)
    return sig_hash


def _length(value: Any) -> int:
    return len(value) if isinstance(value, list) else 0


@hookimpl
def observer_register_analyzers(register: RegisterAnalyzer) -> None:
    register(EscalationAnalyzer)


@hookimpl
def observer_register_finding_kinds(register: RegisterFindingKind) -> None:
    register(KIND)
