"""The core/plugin boundary (issue 20): each built-in plugin imports what a third party's could.

A plugin is a package under ``plugins/`` (``observer_plugins.sources.http``,
``observer_plugins.fleet``, ...). It may import its own modules, the public names of
``observer_core`` and its public modules, and the shared public API modules listed in
:data:`SHARED_PUBLIC`; never a private name (``_x``) of the core, a private core module,
nor another plugin's modules.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import observer_core
from observer_core import records
from observer_core.plugins import Registry, load_registry

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"
PACKAGE = "observer_plugins"
GROUPS = ("sources", "sinks", "analyzers")
SHARED_PUBLIC = frozenset(
    {"observer_plugins.fleet.claims", "observer_plugins.sinks.gateway_log.entry"}
)
"""Plugin modules that are public API for other plugins (and for third parties)."""
DEPRECATED = {"observer_core.httpserver": "observer_core.http"}
"""Core modules kept as aliases for third parties: a built-in imports their new home."""


def module_name(path: Path, root: Path) -> str:
    """``plugins/sources/http/__init__.py`` -> ``observer_plugins.sources.http``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def plugin_of(module: str) -> str | None:
    """The plugin package ``module`` belongs to (``observer_plugins.sources.http``), or None
    for the namespace packages themselves (``observer_plugins.sources``)."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2:
        return None
    if parts[1] in GROUPS:
        return ".".join(parts[:3]) if len(parts) >= 3 else None
    return ".".join(parts[:2])


def absolute(path: Path, root: Path, node: ast.ImportFrom) -> str:
    """The module an ``import from`` names, relative imports resolved against ``path``."""
    if not node.level:
        return node.module or ""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package.pop()
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def imports(path: Path, root: Path) -> Iterator[tuple[int, str, list[str]]]:
    """Each import in ``path``: line, module, and the names taken from it."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            yield node.lineno, absolute(path, root, node), names


def problems(path: Path, root: Path = PLUGINS) -> Iterator[str]:
    """Why each import of ``path`` (a module under ``root``) crosses the boundary."""
    own = plugin_of(module_name(path, root))
    where = path.relative_to(root.parent)
    for line, module, names in imports(path, root):
        parts = module.split(".")
        if parts[0] == "observer_core":
            if module in DEPRECATED:
                yield f"{where}:{line}: imports {module}, deprecated: use {DEPRECATED[module]}"
            if any(part.startswith("_") for part in parts):
                yield f"{where}:{line}: imports the private core module {module}"
            for name in names:
                if name.startswith("_"):
                    yield f"{where}:{line}: imports the private name {name} from {module}"
        elif parts[0] == PACKAGE:
            for target in [f"{module}.{name}" for name in names] or [module]:
                other = plugin_of(target)
                shared = target in SHARED_PUBLIC or module in SHARED_PUBLIC
                if other is not None and other != own and not shared:
                    yield f"{where}:{line}: imports {target} (another plugin's internals)"
                if other is None and own is not None and not shared and target != PACKAGE:
                    yield f"{where}:{line}: imports {target}, outside its plugin {own}"


SOURCES = sorted(PLUGINS.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(PLUGINS)))
def test_plugin_imports_only_public_api(path: Path) -> None:
    found = list(problems(path))
    assert not found, "\n".join(found)


def test_checker_catches_each_kind_of_crossing(tmp_path: Path) -> None:
    """The checker itself: each forbidden import is reported, the allowed ones are not."""
    plugin = tmp_path / "plugins" / "analyzers" / "demo"
    plugin.mkdir(parents=True)
    source = plugin / "__init__.py"
    source.write_text(
        "from observer_core import Op, _private\n"
        "from observer_core._engine import x\n"
        "from ...sources.gateway.usage import count_own_call\n"
        "from ..failures import is_failure\n"
        "from observer_plugins.fleet.claims import FleetConfig\n"
        "from ...fleet.claims import FleetConfig\n"
        "from .rules import Rule\n"
        "import observer_plugins.sinks.jsonl\n"
        "from observer_core.httpserver import Request\n"
        "from observer_core.http import Request, Response\n"
    )
    found = list(problems(source, tmp_path / "plugins"))
    assert [item.split(":")[1] for item in found] == ["1", "2", "3", "4", "8", "9"], found


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("LogEntry", "observer_plugins.sinks.gateway_log.entry"),
        ("EscalationRow", "observer_plugins.analyzers.escalation"),
    ],
)
def test_moved_records_still_import_from_the_core_with_a_warning(name: str, home: str) -> None:
    """A third party's ``from observer_core import LogEntry`` keeps working (the same class),
    and is told where the record lives now."""
    module = importlib.import_module(home)
    with pytest.warns(DeprecationWarning, match=rf"observer_core\.{name} moved to {home}"):
        moved = getattr(observer_core, name)
    assert moved is getattr(module, name)
    assert name not in observer_core.__all__


def test_httpserver_is_a_deprecated_alias_of_the_http_package() -> None:
    """A third party's ``from observer_core.httpserver import ...`` keeps working (the
    same objects) and is told the new home, ``observer_core.http``."""
    import observer_core.http as http

    sys.modules.pop("observer_core.httpserver", None)
    with pytest.warns(DeprecationWarning, match=r"import from observer_core\.http"):
        old = importlib.import_module("observer_core.httpserver")
    assert old.__all__ == http.__all__
    for name in http.__all__:
        assert getattr(old, name) is getattr(http, name), name


def test_the_core_names_no_plugin_record() -> None:
    """The core's records are its own: ops and findings."""
    with pytest.raises(AttributeError, match="no attribute 'NoSuchRecord'"):
        observer_core.NoSuchRecord  # noqa: B018
    assert not hasattr(records, "LogEntry") and not hasattr(records, "EscalationRow")


def test_the_core_imports_no_plugin() -> None:
    """``observer_core`` never imports ``observer_plugins`` (the deprecated record aliases
    look their home up by name, only when asked)."""
    core = PLUGINS.parent / "observer_core"
    found = [
        f"{path.relative_to(core.parent)}:{node.lineno}: imports {module}"
        for path in sorted(core.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        for module in _absolute_imports(node)
        if module.split(".")[0] in (PACKAGE, "plugins")
    ]
    assert not found, "\n".join(found)


def _absolute_imports(node: ast.AST) -> list[str]:
    """The modules an ``import`` or an absolute ``from ... import`` names (relative
    imports of the core stay in the core)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and not node.level:
        return [node.module or ""]
    return []


def test_finding_kinds_are_registered_by_their_analyzers() -> None:
    """The core presumes no finding kind; each built-in analyzer registers the one it emits."""
    assert Registry().finding_kinds == set()
    registry = load_registry()
    for name in ("diagnosis", "playbook", "escalation", "alerts"):
        analyzer = registry.get("analyzers", name)
        assert analyzer is not None, name
        assert set(analyzer.cls.emits) <= registry.finding_kinds, name
