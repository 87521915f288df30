"""Meta-tests, as datasette has: every hook is documented and tested, and the plugin
guide covers the whole public surface a plugin touches."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import msgspec
import pytest
from observer_plugins.analyzers.escalation import EscalationRow
from observer_plugins.sinks.gateway_log.entry import LogEntry

import observer_core
import observer_core.http
from observer_core import hookspecs, testing
from observer_core.testing import plugin as testing_plugin

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "writing-plugins.md").read_text(encoding="utf-8")


def _headings(text: str) -> list[str]:
    """Markdown headings, not the comments inside code blocks."""
    headings, fenced = [], False
    for line in text.splitlines():
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("#"):
            headings.append(line)
    return headings


HEADINGS = _headings(GUIDE)
CODE_SPANS = set(re.findall(r"`([^`\n]+)`", GUIDE))
HOOKS = sorted(
    name for name, value in vars(hookspecs).items() if hasattr(value, f"{hookspecs.PROJECT}_spec")
)


def test_the_hooks_are_found():
    assert "observer_register_sources" in HOOKS and len(HOOKS) >= 5


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_reference_heading(hook: str):
    assert any(f"`{hook}(" in heading for heading in HEADINGS), (
        f"docs/writing-plugins.md has no heading for {hook}"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_implemented_by_a_test(hook: str):
    """Some test module registers an implementation of the hook and runs it."""
    implementing = [
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "tests").rglob("test_*.py")
        if path.name != Path(__file__).name and _implements(path, hook)
    ]
    assert implementing, f"no test implements {hook}"


def _implements(path: Path, hook: str) -> bool:
    """A function named ``hook`` decorated with ``@hookimpl`` in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(
        isinstance(node, ast.FunctionDef)
        and node.name == hook
        and any(_name(decorator) == "hookimpl" for decorator in node.decorator_list)
        for node in ast.walk(tree)
    )


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        return _name(node.func)
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _public(cls: type) -> list[str]:
    return [name for name in vars(cls) if not name.startswith("_")]


SURFACE = {
    "Component": _public(observer_core.Component),
    "Source": _public(observer_core.Source),
    "Sink": _public(observer_core.Sink),
    "Analyzer": _public(observer_core.Analyzer),
    "Context": [f.name for f in dataclasses.fields(observer_core.Context)]
    + _public(observer_core.Context),
    "Window": [f.name for f in dataclasses.fields(observer_core.Window)]
    + _public(observer_core.Window),
    "Op": [f.name for f in msgspec.structs.fields(observer_core.Op)],
    "Finding": [f.name for f in msgspec.structs.fields(observer_core.Finding)],
    "LogEntry": [f.name for f in msgspec.structs.fields(LogEntry)],
    "EscalationRow": [f.name for f in msgspec.structs.fields(EscalationRow)],
    "StateStore": _public(observer_core.StateStore),
    "RunningEngine": _public(testing.RunningEngine),
    "CollectingSink": [
        name for name in _public(testing.CollectingSink) if name not in ("name", "Config")
    ]
    + ["batches", "calls", "failing"],
    "observer_core.http": list(observer_core.http.__all__),
    "HttpServer": _public(observer_core.http.HttpServer),
    "HttpLimits": [f.name for f in msgspec.structs.fields(observer_core.http.HttpLimits)]
    + _public(observer_core.http.HttpLimits),
    "Request": [
        f.name for f in msgspec.structs.fields(observer_core.http.Request) if f.name[0] != "_"
    ]
    + _public(observer_core.http.Request),
    "Response": [f.name for f in msgspec.structs.fields(observer_core.http.Response)],
    "Handler": ["precheck", "handle"],
}


@pytest.mark.parametrize(
    ("owner", "name"),
    [(owner, name) for owner, names in SURFACE.items() for name in dict.fromkeys(names)],
)
def test_the_guide_mentions_every_public_name(owner: str, name: str):
    """In a code span: `name`, `name(...)`, `owner.name`, or a list like `a`/`b`."""
    pattern = re.compile(rf"(^|[\s.(]){re.escape(name)}(\(|$|[\s,=)])")
    assert any(pattern.search(span) for span in CODE_SPANS), f"{owner}.{name} is not documented"


@pytest.mark.parametrize(
    "record", ["Op", "Finding", "LogEntry", "EscalationRow", "Component", "Source", "Sink"]
)
def test_records_and_components_have_headings(record: str):
    assert any(f"`{record}`" in heading for heading in HEADINGS), record


def _fixtures() -> list[str]:
    tree = ast.parse(inspect.getsource(testing_plugin))
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(_name(decorator) == "fixture" for decorator in node.decorator_list)
    ]


@pytest.mark.parametrize("fixture", _fixtures())
def test_every_fixture_of_the_testing_plugin_has_a_heading(fixture: str):
    assert any(f"`{fixture}`" in heading for heading in HEADINGS), fixture


def test_the_testing_plugin_is_the_pytest11_entry_point():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    table = r"\[project\.entry-points\.pytest11\]\s*\n\s*\w+ = \"observer_core\.testing\.plugin\""
    assert re.search(table, text)


# -- registration is typed end to end (issue 20) ----------------------------------------


def _register_annotation(function: ast.FunctionDef) -> str:
    """The ``register`` parameter's annotation, as written."""
    arg = next(arg for arg in function.args.args if arg.arg == "register")
    return ast.unparse(arg.annotation) if arg.annotation else ""


SPEC_TREE = ast.parse(inspect.getsource(hookspecs))
REGISTER_TYPES = {
    node.name: _register_annotation(node)
    for node in SPEC_TREE.body
    if isinstance(node, ast.FunctionDef) and node.name in HOOKS
}


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hooks_register_has_a_named_type_exported_for_plugins(hook: str):
    name = REGISTER_TYPES[hook]
    assert name in observer_core.__all__, f"{hook}'s register type {name!r} is not exported"
    assert getattr(observer_core, name) is getattr(hookspecs, name)


BUILTIN_HOOKS = [
    (path, node)
    for path in sorted((ROOT / "plugins").rglob("*.py"))
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
    if isinstance(node, ast.FunctionDef)
    and node.name in HOOKS
    and any(_name(decorator) == "hookimpl" for decorator in node.decorator_list)
]


def test_the_builtins_implement_hooks():
    assert len(BUILTIN_HOOKS) >= 10


@pytest.mark.parametrize(
    ("path", "hook"),
    BUILTIN_HOOKS,
    ids=lambda value: value.name if isinstance(value, ast.FunctionDef) else value.parent.name,
)
def test_builtins_register_through_the_typed_register(path: Path, hook: ast.FunctionDef):
    """No ``register: object`` and no ``type: ignore``: the types say what register takes."""
    assert _register_annotation(hook) == REGISTER_TYPES[hook.name], path
    lines = path.read_text(encoding="utf-8").splitlines()[hook.lineno - 1 : hook.end_lineno]
    assert not [line for line in lines if "type: ignore" in line], path
