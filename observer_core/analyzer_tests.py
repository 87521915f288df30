"""``observer-core test``: analyzer tests written in TOML (ANALYSIS §14.2).

Each ``[[tests]]`` entry runs the named analyzers of a config on a fresh ring, offline
(:mod:`observer_core.offline`): ops given inline or in a JSONL file, every outbound
call answered from ``[tests.replies.INSTANCE]`` (a call with no canned reply fails the
test, naming the instance), then ``expect`` / ``expect_none`` are checked against the
findings. One ``PASS``/``FAIL`` line per test; a failure shows what was expected beside
what was emitted.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import msgspec
from msgspec import Meta

from .config import ConfigError, ObserverConfig, load_config
from .engine import StartupError
from .ingest import EventDecoder, InvalidEvent
from .offline import (
    OfflineEngine,
    ScriptedTransport,
    VirtualClock,
    VirtualCycles,
    analyzers_only,
    epoch_of,
)
from .plugins import Registry
from .records import Finding, Op, parse_timestamp

__all__ = [
    "DEFAULT_START",
    "Outcome",
    "TestFileError",
    "load_tests",
    "run_files",
    "run_test",
]

DEFAULT_START = "2026-01-01T00:00:00.000Z"
"""The timestamp of an inline op that gives none and follows no op that does."""
_MAX_REPEAT = 1_000_000
_SHOWN_FINDINGS = 20
_SHOWN_CHARS = 160


class TestFileError(Exception):
    """A test file that cannot be used; the message names the file, the test and the key."""

    __test__ = False


class Reply(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What an outbound call answers: ``[tests.replies.INSTANCE]``."""

    status: Annotated[int, Meta(ge=100, le=599)] = 200
    body: Any = msgspec.field(default_factory=dict)
    """A JSON value (a table is an object); a string is sent as text."""
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class Expectation(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[[tests.expect]]`` or ``[[tests.expect_none]]``."""

    kind: str
    match: dict[str, Any] = msgspec.field(default_factory=dict)
    """Keys the finding's record must have, with these values (tables: the keys given)."""
    count: Annotated[int, Meta(ge=0, le=_MAX_REPEAT)] | None = None
    """Exactly this many matching findings (default: at least one). Not for expect_none."""
    cycle: Annotated[int, Meta(ge=1)] | None = None
    """Only findings emitted on this cycle count."""


class TestCase(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One ``[[tests]]`` entry."""

    __test__ = False

    name: str
    analyzers: list[str] | None = None
    config: str | None = None
    ops: list[dict[str, Any]] = msgspec.field(default_factory=list)
    ops_file: str | None = None
    cycles: Annotated[int, Meta(ge=1, le=_MAX_REPEAT)] = 1
    """Run at least this many cycles (e.g. 5 for an ``every = 5`` analyzer)."""
    replies: dict[str, Reply | list[Reply]] = msgspec.field(default_factory=dict)
    expect: list[Expectation] = msgspec.field(default_factory=list)
    expect_none: list[Expectation] = msgspec.field(default_factory=list)


class _TestFile(msgspec.Struct, forbid_unknown_fields=True):
    tests: list[TestCase]


@dataclass
class Prepared:
    """A test ready to run: its case, config and ops."""

    file: Path
    case: TestCase
    config: ObserverConfig
    ops: list[Op]


@dataclass
class Emitted:
    """A finding as a test sees it."""

    cycle: int
    kind: str
    record: Any


@dataclass
class Outcome:
    """How a test went: its problems (none: it passed) and what it emitted."""

    name: str
    problems: list[str] = field(default_factory=list)
    findings: list[Emitted] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def report(self) -> str:
        """``PASS name``, or ``FAIL name`` with the problems and the findings emitted."""
        if self.passed:
            return f"PASS {self.name}"
        lines = [f"FAIL {self.name}"]
        lines += [f"  {line}" for problem in self.problems for line in problem.split("\n")]
        lines.append(f"  findings emitted ({len(self.findings)}):")
        for emitted in self.findings[:_SHOWN_FINDINGS]:
            text = msgspec.json.encode(emitted.record).decode()
            if len(text) > _SHOWN_CHARS:
                text = text[: _SHOWN_CHARS - 3] + "..."
            lines.append(f"    cycle {emitted.cycle}  {emitted.kind:<12} {text}")
        if len(self.findings) > _SHOWN_FINDINGS:
            lines.append(f"    ... and {len(self.findings) - _SHOWN_FINDINGS} more")
        return "\n".join(lines)


# -- loading ----------------------------------------------------------------------


_FIELD = re.compile(r"^Object (contains unknown|missing required) field `([^`]*)`$")
_PATH = re.compile(r"^(.*?) - at `\$\.tests\[(\d+)\]\.?([^`]*)`$", re.S)


def load_tests(
    path: Path, registry: Registry, default_config: Path
) -> list[Prepared | TestFileError]:
    """Parse a test file; each test prepared, or the error that makes it unusable.

    Raises :class:`TestFileError` when the file as a whole cannot be read or parsed.
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TestFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TestFileError(f"{path}: invalid TOML: {exc}") from None
    try:
        parsed = msgspec.convert(document, _TestFile)
    except msgspec.ValidationError as exc:
        raise TestFileError(_explain(path, document, str(exc))) from None
    if not parsed.tests:
        raise TestFileError(f"{path}: tests: no [[tests]] in this file")
    prepared: list[Prepared | TestFileError] = []
    for case in parsed.tests:
        try:
            prepared.append(_prepare(path, case, registry, default_config))
        except TestFileError as exc:
            prepared.append(exc)
    return prepared


def _explain(path: Path, document: Any, message: str) -> str:
    """msgspec's error, naming the test (by name when it has one) and the key."""
    found = _PATH.match(message)
    if found is None:
        return f"{path}: {message.replace('`$.', '`').replace('$', 'the file')}"
    problem, index, key = found.groups()
    if field := _FIELD.match(problem):
        what, name = field.groups()
        key = f"{key}.{name}" if key else name
        problem = "unknown key" if what == "contains unknown" else "required key is missing"
    return f"{path}: {_test_label(document, int(index))}: {key or 'the test'}: {problem}"


def _test_label(document: Any, index: int) -> str:
    try:
        name = document["tests"][index]["name"]
    except (KeyError, IndexError, TypeError):
        name = None
    return f"test {name!r}" if isinstance(name, str) else f"tests[{index}]"


def _prepare(path: Path, case: TestCase, registry: Registry, default_config: Path) -> Prepared:
    where = f"{path}: test {case.name!r}"
    config_path = path.parent / case.config if case.config is not None else default_config
    try:
        config = load_config(config_path, registry)
        offline = analyzers_only(config, case.analyzers)
    except ConfigError as exc:
        key = "analyzers" if case.config is None or config_path.is_file() else "config"
        raise TestFileError(f"{where}: {key}: {exc}") from None
    names = {item.name for item in offline.instances} | {
        item.qualified for item in offline.instances
    }
    for instance in case.replies:
        if instance not in names:
            known = ", ".join(sorted(item.name for item in offline.instances))
            raise TestFileError(
                f"{where}: replies.{instance}: not an analyzer of this test (analyzers: {known})"
            )
    if case.ops and case.ops_file is not None:
        raise TestFileError(f"{where}: ops_file: give ops inline or in ops_file, not both")
    decoder = EventDecoder(max_field_bytes=config.settings.max_field_bytes)
    if case.ops_file is not None:
        ops = _ops_file(where, path.parent / case.ops_file, config)
    else:
        ops = _inline_ops(where, case.ops, decoder)
    return Prepared(path, case, offline, ops)


def _inline_ops(where: str, rows: list[dict[str, Any]], decoder: EventDecoder) -> list[Op]:
    """``[[tests.ops]]``: the ``/event`` defaults fill in what a row leaves out; a row
    without a timestamp takes the previous op's; ``repeat = N`` adds it N times."""
    ops: list[Op] = []
    timestamp = DEFAULT_START
    for number, given in enumerate(rows):
        row = dict(given)
        repeat = row.pop("repeat", 1)
        if (
            isinstance(repeat, bool)
            or not isinstance(repeat, int)
            or not 1 <= repeat <= _MAX_REPEAT
        ):
            raise TestFileError(
                f"{where}: ops[{number}].repeat: expected an integer from 1 to {_MAX_REPEAT}"
            )
        row.setdefault("timestamp", timestamp)
        try:
            op = decoder.convert(row)
        except InvalidEvent as exc:
            raise TestFileError(f"{where}: ops[{number}].{exc}") from None
        timestamp = op.timestamp
        ops += [op] * repeat
    return ops


def _ops_file(where: str, path: Path, config: ObserverConfig) -> list[Op]:
    decoder = EventDecoder(max_field_bytes=config.settings.max_field_bytes, require_all=True)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise TestFileError(f"{where}: ops_file: {path}: {exc.strerror or exc}") from None
    ops = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                ops.append(decoder.decode(line))
            except InvalidEvent as exc:
                raise TestFileError(f"{where}: ops_file: {path}:{number}: {exc}") from None
    return ops


# -- running ----------------------------------------------------------------------


class _Canned:
    """Answers calls from a test's ``replies``; a call it has no reply for is a problem."""

    def __init__(self, case: TestCase, problems: list[str]) -> None:
        self.case = case
        self.problems = problems
        self.calls: dict[str, int] = {}

    def replies_of(self, instance: str) -> Reply | list[Reply] | None:
        name = instance.partition(".")[2]
        found = self.case.replies.get(instance)
        return found if found is not None else self.case.replies.get(name)

    def answer(self, instance: str, request: dict[str, Any]) -> httpx.Response:
        number = self.calls[instance] = self.calls.get(instance, 0) + 1
        replies = self.replies_of(instance)
        name = instance.partition(".")[2]
        call = f"{request['method']} {request['url']}"
        if replies is None:
            reply = None
            problem = (
                f"{instance} called {call}, but the test has no canned reply for it "
                f"(add [tests.replies.{name}])"
            )
        elif isinstance(replies, list):
            reply = replies[number - 1] if number <= len(replies) else None
            problem = (
                f"{instance} made call {number} ({call}), but [[tests.replies.{name}]] "
                f"has only {len(replies)}"
            )
        else:
            reply = replies
        if reply is None:
            if problem not in self.problems:
                self.problems.append(problem)
            raise httpx.ConnectError(f"no canned reply ({problem})")
        if isinstance(reply.body, str):
            return httpx.Response(reply.status, text=reply.body, headers=reply.headers)
        return httpx.Response(reply.status, json=reply.body, headers=reply.headers)


async def run_test(test: Prepared) -> Outcome:
    """Run one test offline and check its expectations."""
    case = test.case
    outcome = Outcome(case.name)
    clock = VirtualClock()
    engine: OfflineEngine | None = None
    canned = _Canned(case, outcome.problems)

    def record(finding: Finding) -> None:
        cycle = engine.cycle if engine is not None else 0
        data = msgspec.to_builtins(finding.data)
        outcome.findings.append(Emitted(cycle, finding.kind, data))

    def transport(instance: str) -> httpx.AsyncBaseTransport:
        return ScriptedTransport(instance, canned.answer)

    engine = OfflineEngine(test.config, clock, transport, record)
    cycles = VirtualCycles(engine, clock, float(test.config.settings.cycle_secs))
    clock.set(_epoch(test.ops[0].timestamp if test.ops else DEFAULT_START))
    try:
        async with engine:
            await cycles.feed(test.ops)
            await cycles.finish(case.cycles)
    except StartupError as exc:
        outcome.problems.append(str(exc))
        return outcome
    for index, expected in enumerate(case.expect):
        problem = _check(f"expect[{index}]", expected, outcome.findings, none=False)
        if problem:
            outcome.problems.append(problem)
    for index, expected in enumerate(case.expect_none):
        problem = _check(f"expect_none[{index}]", expected, outcome.findings, none=True)
        if problem:
            outcome.problems.append(problem)
    return outcome


def _epoch(timestamp: str) -> float:
    return epoch_of(parse_timestamp(timestamp))


def _check(label: str, expected: Expectation, findings: Sequence[Emitted], none: bool) -> str:
    """The problem with one expectation, as text to show, or ``""`` when it holds."""
    of_kind = [
        item
        for item in findings
        if item.kind == expected.kind and (expected.cycle is None or item.cycle == expected.cycle)
    ]
    matching = [item for item in of_kind if _matches(expected.match, item.record)]
    wanted = "none" if none else "at least 1" if expected.count is None else str(expected.count)
    if none:
        ok = not matching
    else:
        ok = bool(matching) if expected.count is None else len(matching) == expected.count
    if ok:
        return ""
    where = f" on cycle {expected.cycle}" if expected.cycle is not None else ""
    head = (
        f"{label}: {expected.kind} findings{where} matching "
        f"{_compact(expected.match, 120) if expected.match else '(anything)'}: "
        f"expected {wanted}, got {len(matching)}"
    )
    if not expected.match:
        return head
    shown = matching[0] if matching else _closest(expected.match, of_kind)
    if shown is None:
        return f"{head} (no {expected.kind} finding at all)"
    title = "the first match" if matching else f"the closest {expected.kind} finding"
    return head + "\n" + _side_by_side(expected.match, shown.record, title)


def _matches(wanted: Any, actual: Any) -> bool:
    """Whether ``actual`` has ``wanted``: tables by the keys given, anything else equal."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            key in actual and _matches(value, actual[key]) for key, value in wanted.items()
        )
    if isinstance(wanted, bool) or isinstance(actual, bool):
        return type(wanted) is type(actual) and wanted == actual
    return bool(wanted == actual)


def _closest(wanted: dict[str, Any], candidates: Sequence[Emitted]) -> Emitted | None:
    def score(item: Emitted) -> int:
        record = item.record if isinstance(item.record, dict) else {}
        return sum(key in record and _matches(value, record[key]) for key, value in wanted.items())

    return max(candidates, key=score, default=None)


_MISSING = object()


def _side_by_side(wanted: dict[str, Any], record: Any, title: str) -> str:
    """Each expected key: the expected value beside the actual one, ``✗`` where they differ."""
    rows = [("key", "expected", f"actual ({title})")]
    marks = [" "]
    for key, value in _flatten(wanted):
        actual = _lookup(record, key)
        rows.append((key, _compact(value), "(missing)" if actual is _MISSING else _compact(actual)))
        marks.append(" " if actual is not _MISSING and _matches(value, actual) else "✗")
    widths = [max(len(row[column]) for row in rows) for column in (0, 1)]
    return "\n".join(
        f"  {mark} {row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}"
        for mark, row in zip(marks, rows, strict=True)
    )


def _flatten(wanted: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    for key, value in wanted.items():
        if isinstance(value, dict) and value:
            pairs += _flatten(value, f"{prefix}{key}.")
        else:
            pairs.append((f"{prefix}{key}", value))
    return pairs


def _lookup(record: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(record, dict) or part not in record:
            return _MISSING
        record = record[part]
    return record


def _compact(value: Any, limit: int = 60) -> str:
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def run_files(
    paths: Sequence[Path],
    registry: Registry,
    default_config: Path,
    say: Callable[[str], None],
) -> int:
    """Run every test of ``paths``; 0 when all pass, 1 when one fails, 2 when a file or
    test cannot be used (nothing is run then)."""
    prepared: list[Prepared] = []
    errors: list[str] = []
    for path in paths:
        try:
            loaded = load_tests(path, registry, default_config)
        except TestFileError as exc:
            errors.append(str(exc))
            continue
        for item in loaded:
            if isinstance(item, TestFileError):
                errors.append(str(item))
            else:
                prepared.append(item)
    if errors:
        for error in errors:
            say(f"observer-core: {error}")
        return 2
    failed = 0
    for test in prepared:
        outcome = await run_test(test)
        failed += not outcome.passed
        say(outcome.report())
    say(f"{len(prepared) - failed} passed, {failed} failed")
    return 1 if failed else 0
