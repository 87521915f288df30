"""Invalid configs: always a one-line config error (exit 2), never a traceback.

Hypothesis mutates the shipped ``observer.toml``: as data (a key set to a value of any
TOML type, removed, or added; a table renamed) and as text (lines dropped or doubled,
characters inserted, ``${...}`` broken). Each mutant goes through the in-process loader
(``load_config`` with the installed plugins): it must load, or raise ``ConfigError``
with a one-line message, and a config that loads must build an engine. A table of
values that are well-typed but unusable, and a few mutants run through the real
command, check the end-to-end promise: exit 2, one line on stderr, no traceback.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_kit import FUZZ_EXAMPLES, record

from observer_core.config import ConfigError, load_config, parse_toml
from observer_core.engine import Engine
from observer_core.plugins import Registry, load_registry

SHIPPED = (Path(__file__).parents[2] / "observer.toml").read_text(encoding="utf-8")
SHIPPED_DATA = parse_toml(SHIPPED, {})
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
COUNTS = {"cases": 0, "valid": 0, "errors": 0}


class Loader:
    """Writes a config into a folder and loads it in-process, as ``observer-core`` would."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "observer.toml"
        self.registry: Registry = load_registry()

    def outcome(self, text: bytes) -> str:
        """``"valid"``, or the config error's message; fails on anything else."""
        self.path.write_bytes(text)
        COUNTS["cases"] += 1
        try:
            config = load_config(self.path, self.registry, {})
        except ConfigError as exc:
            message = str(exc)
            assert message and "\n" not in message, f"not one line: {message!r}"
            assert message.startswith(("observer.toml", str(self.path))), message
            COUNTS["errors"] += 1
            return message
        anyio.run(_build, config)  # a config that loads builds an engine without raising
        COUNTS["valid"] += 1
        return "valid"


async def _build(config: Any) -> None:
    Engine(config)


@pytest.fixture(scope="module")
def loader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loader]:
    yield Loader(tmp_path_factory.mktemp("config-fuzz"))
    record("config_fuzz", **{f"loader_{name}": count for name, count in COUNTS.items()})


# -- structured mutations ----------------------------------------------------------------

toml_values = st.recursive(
    st.one_of(
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(),
        st.text(max_size=20),
        st.sampled_from(["", "${X}", "$${", "/dev/full", "http://", "http://[::1", "a\x00b"]),
        st.datetimes(max_value=datetime.datetime(9999, 1, 1)),
        st.dates(),
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _tables(document: dict[str, Any]) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = [("observer",)]
    for kind in ("sources", "sinks", "analyzers"):
        found += [(kind, name) for name in document.get(kind, {})]
    return found


def _table(document: dict[str, Any], where: tuple[str, ...]) -> dict[str, Any]:
    table = document
    for part in where:
        table = table.setdefault(part, {})
    return table


@st.composite
def structured_mutants(draw: st.DrawFn) -> bytes:
    document = tomllib.loads(tomli_w.dumps(SHIPPED_DATA))  # a deep copy
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        where = draw(st.sampled_from(_tables(document)))
        table = _table(document, where)
        keys = sorted(table) or ["plugin"]
        how = draw(st.sampled_from(["set", "set", "set", "drop", "add", "rename", "plugin"]))
        if how == "set":
            table[draw(st.sampled_from(keys))] = draw(toml_values)
        elif how == "drop":
            table.pop(draw(st.sampled_from(keys)), None)
        elif how == "add":
            table[draw(st.text(min_size=1, max_size=10))] = draw(toml_values)
        elif how == "plugin":
            table["plugin"] = draw(st.sampled_from(["jsonl", "http", "gateway_log", "nope", ""]))
        elif len(where) == 2:
            kind, name = where
            moved = document[kind].pop(name)
            document[draw(st.sampled_from([kind, "source", "sinks", "analyzers", "x"]))] = {
                draw(st.text(min_size=1, max_size=8)): moved
            }
    return tomli_w.dumps(document).encode()


@FUZZ
@given(text=structured_mutants())
def test_structured_mutants_load_or_fail_in_one_line(loader: Loader, text: bytes) -> None:
    loader.outcome(text)


# -- text mutations -----------------------------------------------------------------------

PIECES = ["${", "$${", "${X", "${X:-", "}", "[", "]", "[[", '"', "'''", "=", "\n", "#", ",", "\\"]


@st.composite
def text_mutants(draw: st.DrawFn) -> bytes:
    lines = SHIPPED.encode().splitlines(keepends=True)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        at = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        how = draw(st.sampled_from(["drop", "double", "insert", "insert", "bytes"]))
        if how == "drop":
            del lines[at]
        elif how == "double":
            lines.insert(at, lines[at])
        else:
            line = lines[at]
            cut = draw(st.integers(min_value=0, max_value=len(line)))
            piece = (
                draw(st.binary(min_size=1, max_size=3))
                if how == "bytes"
                else draw(st.sampled_from(PIECES)).encode()
            )
            lines[at] = line[:cut] + piece + line[cut:]
    return b"".join(lines)


@FUZZ
@given(text=text_mutants())
def test_text_mutants_load_or_fail_in_one_line(loader: Loader, text: bytes) -> None:
    loader.outcome(text)


# -- well-typed but unusable values: config errors naming the key ---------------------------

UNUSABLE = [
    ("sources.http", "port", "70000"),
    ("sources.http", "port", "-1"),
    ("sources.http", "max_body_bytes", "0"),
    ("sources.http", "max_connections", "0"),
    ("sources.http", "header_timeout_secs", "0"),
    ("sources.http", "idle_timeout_secs", "-1"),
    ("sources.http", "token", '""'),
    ("sinks.ops", "fsync_interval_ms", "0"),
    ("sinks.ops", "fsync", '"sometimes"'),
    ("sinks.ops", "accepts", '["nothing"]'),
    ("observer", "cycle_secs", "nan"),
    ("observer", "ring_size", "0"),
    ("sources.gateway", "timeout_secs", "0"),
    ("sources.gateway", "url", '"http://[::1"'),
    ("sinks.gateway_log", "queue_max", "0"),
    ("analyzers.diagnosis", "timeout_secs", "-5"),
    ("analyzers.escalation", "threshold", "0"),
    ("analyzers.playbook", "every", "0"),
]


def set_key(text: str, table: str, key: str, value: str) -> str:
    """The shipped config with ``key = value`` put first in ``[table]`` (TOML takes
    the first of two equal keys as an error, so the old line is dropped)."""
    lines = [
        line
        for line in text.splitlines()
        if not (line.split("=")[0].strip() == key and line_in_table(text, line, table))
    ]
    header = lines.index(f"[{table}]")
    lines.insert(header + 1, f"{key} = {value}")
    return "\n".join(lines) + "\n"


def line_in_table(text: str, line: str, table: str) -> bool:
    current = ""
    for each in text.splitlines():
        if each.startswith("["):
            current = each.split("]")[0].lstrip("[")
        if each == line:
            return current == table
    return False


@pytest.mark.parametrize(
    ("table", "key", "value"), UNUSABLE, ids=[f"{t}.{k}={v}" for t, k, v in UNUSABLE]
)
def test_unusable_value_is_a_config_error_naming_the_key(
    loader: Loader, table: str, key: str, value: str
) -> None:
    message = loader.outcome(set_key(SHIPPED, table, key, value).encode())
    assert message != "valid", f"{table}.{key} = {value} was accepted"
    assert f"[{table}]" in message and key in message, message


# -- the command, end to end -----------------------------------------------------------------

COMMAND_CASES = {
    "toml-syntax": SHIPPED.replace("[sinks.ops]", "[sinks.ops"),
    "unknown-key": SHIPPED.replace("ring_size = 2000", "ring_size = 2000\nring = 1"),
    "wrong-type": SHIPPED.replace("ring_size = 2000", 'ring_size = "big"'),
    "unknown-plugin": SHIPPED.replace('plugin = "jsonl_tail"', 'plugin = "tail"'),
    "unset-variable": SHIPPED.replace(
        "${GATEWAY_URL:-http://localhost:3700}", "${NOT_SET_ANYWHERE}"
    ),
    "port-out-of-range": set_key(SHIPPED, "sources.http", "port", "70000"),
    "not-utf8": SHIPPED.replace("# observer-core", "# observer-core \udcff"),
}


@pytest.mark.parametrize("case", COMMAND_CASES, ids=list(COMMAND_CASES))
@pytest.mark.parametrize("command", ["check", "run"])
def test_the_command_exits_2_with_one_line(tmp_path: Path, case: str, command: str) -> None:
    path = tmp_path / "observer.toml"
    path.write_bytes(COMMAND_CASES[case].encode("utf-8", "surrogateescape"))
    result = subprocess.run(
        [sys.executable, "-m", "observer_core", command, "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("observer-core: config error: "), lines
    assert not result.stdout
    record("config_fuzz", command_cases=2 * len(COMMAND_CASES), unusable_values=len(UNUSABLE))
