"""Meta-tests of ``observer_core.testing``: it uses public seams of the core only, it
declares what it imports in the ``[testing]`` extra, and its public names and pytest
plugin stay where third-party tests find them."""

from __future__ import annotations

import ast
import importlib
import re
import sys
import tomllib
from importlib.metadata import entry_points, packages_distributions
from pathlib import Path

import pytest

import observer_core.testing

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "observer_core" / "testing"
KIT_PACKAGE = "observer_core.testing"

PUBLIC_NAMES = {
    "COLLECT_PLUGIN",
    "CollectConfig",
    "CollectingSink",
    "Daemon",
    "DaemonFactory",
    "EngineFactory",
    "GiveUp",
    "InstalledPackage",
    "PackageInstaller",
    "RecordedRequest",
    "RunningEngine",
    "StubReply",
    "StubServer",
    "free_port",
    "installed_package",
    "make_context",
    "observer_daemon",
    "observer_engine",
    "plugin_of",
    "stub_server",
    "wait_for",
}
"""What third-party plugin tests import from ``observer_core.testing`` (never fewer)."""

FIXTURES = {"observer_engine", "observer_daemon", "stub_server", "installed_package"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined_privates(trees: list[ast.Module]) -> set[str]:
    """Private names the code itself defines (functions, classes, attributes, variables)."""
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {name for name in names if _private(name)}


def _imported_from(node: ast.ImportFrom, package: str) -> str:
    """The absolute module an ``ImportFrom`` in a module of ``package`` names."""
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def private_uses(source: str, package: str = KIT_PACKAGE, own: set[str] | None = None) -> list[str]:
    """What code of ``package`` does that a client of the core must not, one line each:
    subclass ``Engine``, import a private name of a core module, or read a private
    attribute that the code does not define itself (on ``self``/``cls`` it may)."""
    tree = ast.parse(source)
    own = _defined_privates([tree]) if own is None else own
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
                if name == "Engine":
                    found.append(f"line {node.lineno}: class {node.name} subclasses Engine")
        elif isinstance(node, ast.ImportFrom):
            module = _imported_from(node, package)
            core = module.split(".")[0] == "observer_core" and not module.startswith(package)
            for alias in node.names:
                if core and _private(alias.name):
                    found.append(f"line {node.lineno}: imports {alias.name} from {module}")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            receiver = node.value
            if isinstance(receiver, ast.Name) and receiver.id in {"self", "cls"}:
                continue
            if node.attr not in own:
                found.append(
                    f"line {node.lineno}: reads {ast.unparse(receiver)}.{node.attr}, "
                    "a private attribute of the core"
                )
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"getattr", "setattr", "delattr", "hasattr"}
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            found.append(f"line {node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
    return found


def kit_modules() -> dict[Path, str]:
    modules = {path: path.read_text(encoding="utf-8") for path in sorted(KIT.glob("*.py"))}
    assert KIT / "__init__.py" in modules and KIT / "plugin.py" in modules
    return modules


SNEAKY = """
from ..engine import Engine, _Instance
from observer_core.metrics import _format_labels
from .helpers import _kit_own

class Harness(Engine):
    def _step_timeout(self) -> float:
        return self._mine

def peek(engine, stub):
    stub._kit_own
    return engine._pending, engine.metrics._families, getattr(engine, "_dispatching")
"""


def test_the_checker_finds_each_kind_of_private_use():
    found = private_uses(SNEAKY, own={"_kit_own", "_step_timeout", "_mine"})
    assert found == [
        "line 2: imports _Instance from observer_core.engine",
        "line 3: imports _format_labels from observer_core.metrics",
        "line 6: class Harness subclasses Engine",
        "line 12: reads engine._pending, a private attribute of the core",
        "line 12: reads engine.metrics._families, a private attribute of the core",
        "line 12: getattr(..., '_dispatching')",
    ], found


def test_the_kit_uses_public_seams_of_the_core_only():
    modules = kit_modules()
    own = _defined_privates([ast.parse(source) for source in modules.values()])
    found = [
        f"{path.relative_to(ROOT)} {problem}"
        for path, source in modules.items()
        for problem in private_uses(source, own=own)
    ]
    assert found == [], "\n".join(found)


def _distribution(requirement: str) -> str:
    name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _third_party_imports(source: str) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"observer_core"}


def test_the_testing_extra_declares_every_package_the_kit_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_distribution(item) for item in project["optional-dependencies"]["testing"]}
    imported = set().union(*map(_third_party_imports, kit_modules().values()))
    assert "pytest" in imported
    owners = packages_distributions()
    missing = {
        module: owners.get(module, [module])
        for module in imported
        if not {_distribution(name) for name in owners.get(module, [module])} & declared
    }
    assert missing == {}, "observer_core/testing imports these; [testing] does not declare them"


def test_every_public_name_is_importable_from_observer_core_testing():
    assert set(observer_core.testing.__all__) >= PUBLIC_NAMES
    for name in observer_core.testing.__all__:
        assert getattr(observer_core.testing, name) is not None, name


def test_the_pytest11_entry_point_is_the_fixtures_module(pytestconfig):
    [entry] = [e for e in entry_points(group="pytest11") if e.name == "observer_core"]
    module = importlib.import_module(entry.value)
    assert module.__name__ == "observer_core.testing.plugin"
    assert set(vars(module)) >= FIXTURES
    assert pytestconfig.pluginmanager.get_plugin("observer_core") is module


def test_the_fixtures_are_there_without_an_import(request):
    for name in FIXTURES - {"installed_package"}:  # that one is session-wide; not set up here
        assert request.getfixturevalue(name) is not None, name


@pytest.mark.parametrize("module", sorted(path.stem for path in KIT.glob("*.py")))
def test_each_module_of_the_kit_imports_on_its_own(module):
    importlib.import_module(f"{KIT_PACKAGE}.{module}")
