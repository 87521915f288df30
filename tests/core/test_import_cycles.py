"""No import circles among observer_core's modules (issue 20).

``components`` once imported ``plugins`` (for a type), which imported
``hookspecs``, which imported ``components``. Every import counts here, those
under ``if TYPE_CHECKING:`` and inside functions too: a circle that only type
checkers follow is still one a reader has to untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import observer_core

PACKAGE = Path(observer_core.__file__).parent
NAME = "observer_core"


def module_name(path: Path, package: Path, name: str) -> str:
    """``observer_core.plugins`` for ``observer_core/plugins.py`` (the package for ``__init__``)."""
    parts = [name, *path.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path, name: str) -> dict[str, set[str]]:
    """Each module of ``package`` and the modules of ``package`` it imports."""
    files = {module_name(path, package, name): path for path in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        base = module if is_package else module.rpartition(".")[0]
        edges = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                anchor = base.rsplit(".", node.level - 1)[0] if node.level else ""
                source = ".".join(part for part in (anchor, node.module or "") if part)
                # `from . import x` imports the submodule x when there is one
                targets = [f"{source}.{alias.name}" for alias in node.names] + [source]
            for target in targets:
                if target in files and target != module:
                    edges.add(target)
                    break
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each as the path that closes it (``a -> b -> a``)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_observer_core_has_no_import_cycles():
    graph = import_graph(PACKAGE, NAME)
    assert f"{NAME}.plugins" in graph and f"{NAME}.components" in graph[f"{NAME}.plugins"]
    assert cycles(graph) == []


def test_a_circle_is_found_even_under_type_checking(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import B\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import c\nB = 1\n"
    )
    (package / "c.py").write_text("def f():\n    from .a import B\n")
    (package / "d.py").write_text("import pkg.a\n")
    assert cycles(import_graph(package, "pkg")) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
