"""The ``alerts`` analyzer: rules over time windows that fire and resolve, once, with counts.

Each rule (``failure_rate``, ``p95_duration_ms``, ``ops_per_min``, ``silence_secs``,
filtered by ``source``, ``endpoint`` glob and ``staffer_id``) keeps per-cycle
buckets covering its ``window_secs``, fed by :meth:`AlertsAnalyzer.observe` as
ops are committed: the ring is not the window. Every cycle each rule is
evaluated; no decision is made until ``window_secs`` have passed since start.
A rule goes ``firing`` when its condition has held for ``for_secs`` and
``resolved`` when it has stopped holding for ``for_secs``; each change is one
``alert`` finding (:class:`Alert`). While firing it is said again at most every
``repeat_secs``, ``evaluations`` counting the cycles it held. Rule states are
saved under ``state_dir`` (``alerts.json``) whenever they change, so a restart
neither re-fires nor forgets a firing alert. ``observer_alert_firing{rule}`` is
1 while a rule fires.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from observer_core import (
    Analyzer,
    AnalyzerConfig,
    Context,
    Finding,
    Op,
    RegisterAnalyzer,
    RegisterFindingKind,
    Window,
    format_timestamp,
    hookimpl,
)

from .rules import Rule, Tracker, rule_problem

__all__ = ["Alert", "AlertsAnalyzer", "AlertsConfig", "Rule", "RuleState"]

KIND = "alert"
STATE_FILE = "alerts.json"
MAX_RULES = 100


class AlertsConfig(AnalyzerConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[analyzers.NAME]`` with ``plugin = "alerts"``."""

    rules: Annotated[list[Rule], msgspec.Meta(min_length=1, max_length=MAX_RULES)]


class Alert(msgspec.Struct, kw_only=True):
    """The data of an ``alert`` finding: one state change of a rule, or a repeat."""

    rule: str
    state: Literal["firing", "resolved"]
    when: str
    value: int | float
    threshold: int | float
    window_secs: int | float
    since: str
    """When the rule entered ``state``."""
    evaluations: int
    """Cycles the condition held since the rule started firing."""
    sample_errors: list[str]


class RuleState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What is saved of one rule (times are Unix seconds)."""

    firing: bool = False
    since: str | None = None
    evaluations: int = 0
    streak_since: float | None = None
    """When the condition began to hold (not firing) or stopped holding (firing)."""
    last_sent: float | None = None


def _number(value: float) -> int | float:
    """``value`` as an integer when it is one (``300``, not ``300.0``, in JSON)."""
    return int(value) if value.is_integer() else value


def _timestamp(moment: float) -> str:
    return format_timestamp(datetime.fromtimestamp(moment, UTC))


class AlertsAnalyzer(Analyzer):
    """Evaluates alert rules every cycle over the ops committed in their windows."""

    name: ClassVar[str] = "alerts"
    Config = AlertsConfig
    config: AlertsConfig
    emits: ClassVar[tuple[str, ...]] = (KIND,)

    def __init__(self, config: AlertsConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self._started = self._now()
        self._trackers = [Tracker(rule, self._started) for rule in config.rules]
        self._states: dict[str, RuleState] = {}
        self._saved = b""
        self._firing = ctx.metrics.gauge(
            "observer_alert_firing", "1 while an alert rule fires, else 0."
        )

    @classmethod
    def validate_config(cls, config: Any, registry: object) -> None:
        names: set[str] = set()
        for index, rule in enumerate(config.rules):
            problem = rule_problem(rule)
            if problem is None and rule.name in names:
                problem = f"name: {rule.name!r} is used by two rules"
            if problem is not None:
                raise ValueError(f"rules[{index}] ({rule.name!r}): {problem}")
            names.add(rule.name)

    def _now(self) -> float:
        """The time rules are evaluated at: the context's clock (virtual under replay)."""
        return self.ctx.clock.now()

    async def open(self) -> None:
        saved = self.ctx.state.load(STATE_FILE, dict[str, RuleState], {})
        self._states = {
            tracker.rule.name: saved.get(tracker.rule.name, RuleState())
            for tracker in self._trackers
        }
        self._saved = msgspec.json.encode(self._states)
        self._started = self._now()
        firing = [name for name, state in self._states.items() if state.firing]
        if firing:
            self.ctx.logger.info("still firing from the last run: %s", ", ".join(firing))
        self._report()

    async def aclose(self) -> None:
        await self._save()

    def observe(self, ops: Sequence[Op]) -> None:
        """Count committed ops into the open bucket of each rule they match."""
        now = self._now()
        for tracker in self._trackers:
            for op in ops:
                if tracker.matches(op):
                    tracker.add(op, now)

    async def analyze(self, window: Window) -> Sequence[Finding]:
        now = self._now()
        findings: list[Finding] = []
        for tracker in self._trackers:
            tracker.roll(now)
            if now - self._started < tracker.rule.window_secs:
                continue
            value = tracker.value(now, self._started)
            if value is None:
                continue
            alert = self._step(tracker, value, now)
            if alert is not None:
                findings.append(Finding(KIND, alert))
        self._report()
        await self._save()
        return findings

    def _step(self, tracker: Tracker, value: float, now: float) -> Alert | None:
        """Advance a rule's state by one evaluation; the alert to emit, if any."""
        rule = tracker.rule
        state = self._states[rule.name]
        holds = rule.holds(value)
        if holds == state.firing:  # no change under way
            state.streak_since = None
            if not state.firing:
                return None
            state.evaluations += 1
            if rule.repeat_secs and now - (state.last_sent or 0.0) >= rule.repeat_secs:
                state.last_sent = now
                return self._alert(tracker, state, value)
            return None
        if state.streak_since is None:
            state.streak_since = now
        if now - state.streak_since < rule.for_secs:
            return None
        state.firing = holds
        state.since = _timestamp(now)
        state.streak_since = None
        state.last_sent = now
        if holds:
            state.evaluations = 1
        alert = self._alert(tracker, state, value)
        if not holds:
            state.evaluations = 0
        return alert

    def _alert(self, tracker: Tracker, state: RuleState, value: float) -> Alert:
        rule = tracker.rule
        return Alert(
            rule=rule.name,
            state="firing" if state.firing else "resolved",
            when=rule.when,
            value=_number(round(value, 4)),
            threshold=_number(rule.threshold),
            window_secs=_number(rule.window_secs),
            since=state.since or _timestamp(self._now()),
            evaluations=state.evaluations,
            sample_errors=tracker.sample_errors(),
        )

    async def _save(self) -> None:
        data = msgspec.json.encode(self._states)
        if data != self._saved:
            await self.ctx.state.save(STATE_FILE, self._states)
            self._saved = data

    def _report(self) -> None:
        for name, state in self._states.items():
            self._firing.set(1.0 if state.firing else 0.0, rule=name)
        self.ctx.status["firing"] = sorted(
            name for name, state in self._states.items() if state.firing
        )


@hookimpl
def observer_register_analyzers(register: RegisterAnalyzer) -> None:
    register(AlertsAnalyzer)


@hookimpl
def observer_register_finding_kinds(register: RegisterFindingKind) -> None:
    register(KIND)
