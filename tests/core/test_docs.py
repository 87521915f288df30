"""Every code block in docs/writing-plugins.md (and the example's README) runs.

- A block after ``<!-- include: PATH -->`` must be the file PATH, whole: the
  example package's tests (run by test_plugin_kit) cover what it does.
- A block after ``<!-- tree: DIR -->`` must list exactly the files of DIR.
- Any other ``python`` block is a complete program: it is executed.
- A ``toml`` block with ``[sources|sinks|analyzers.*]`` tables is loaded as an
  ``observer.toml`` against the installed plugins (the example included); after
  ``<!-- config-error: MESSAGE -->`` it must fail with exactly MESSAGE.
- A ``console``/``sh`` block's ``observer-core`` commands are run (in the folder
  a ``<!-- run: DIR -->`` names) and their output compared with what the block
  shows; any other command must be one the test suite runs in another way.

And docs/configuration.md names every key of every built-in plugin.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from observer_core.config import ConfigError, ObserverSettings, load_config, parse_toml
from observer_core.plugins import load_registry
from observer_core.testing import COLLECT_PLUGIN

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "writing-plugins.md"
EXAMPLE = ROOT / "examples" / "observer-source-example"
ANALYZER_EXAMPLE = ROOT / "examples" / "observer-analyzer-example"
DOCS = [GUIDE, EXAMPLE / "README.md"]

COVERED_ELSEWHERE = {
    "pip install -e '.[test]'": "the installed_package fixture installs the example",
    "pip install -e .": "the installed_package fixture installs the example",
    "pytest": "test_plugin_kit.py::test_the_example_passes_its_own_tests runs them",
    "pip install 'observer-core[testing]'": "test_packaging.py::"
    "test_a_plugin_project_installs_the_kit_as_documented_and_its_tests_pass runs it",
}
"""Commands the docs show that the suite runs by other means, and how."""

_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*([\w-]+):\s*(.*?)\s*-->$")
_TREE_PREFIX = re.compile(r"^(?:[│ ] {3})*[├└]── ")
_SKIP_IN_TREE = {"build", "dist", "__pycache__", ".pytest_cache"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    text: str
    marker: str = ""
    argument: str = ""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = index + 1
        while not lines[end].startswith("```"):
            end += 1
        marker = _MARKER.match(lines[index - 1]) if index else None
        found.append(
            Block(
                path,
                index + 1,
                opening.group(1),
                "\n".join(lines[index + 1 : end]) + "\n",
                *(marker.groups() if marker else ()),
            )
        )
        index = end + 1
    return found


ALL = [block for doc in DOCS for block in blocks(doc)]


def of(*langs: str, marker: str | None = None) -> list[pytest.param]:
    chosen = [b for b in ALL if b.lang in langs and (marker is None or b.marker == marker)]
    return [pytest.param(block, id=block.where) for block in chosen]


@pytest.fixture(scope="module")
def example_installed(installed_package):
    installed_package(ANALYZER_EXAMPLE)
    return installed_package(EXAMPLE)


@pytest.fixture(scope="module")
def registry(example_installed):
    return load_registry([(COLLECT_PLUGIN, None)])


def test_every_block_is_of_a_kind_that_is_checked():
    for block in ALL:
        assert block.lang in {"python", "toml", "console", "sh", "text"}, block.where
        if block.lang == "text":
            assert block.marker == "tree", f"{block.where}: a text block is not checked"
        if block.marker == "include":
            assert (ROOT / block.argument).is_file(), block.where


def test_the_guide_has_every_kind_of_block():
    kinds = {(block.lang, block.marker) for block in blocks(GUIDE)}
    assert {("python", "include"), ("python", ""), ("toml", ""), ("toml", "config-error")} <= kinds
    assert {("console", "run"), ("text", "tree")} <= kinds


@pytest.mark.parametrize("block", of("python", "toml", marker="include"))
def test_included_files_are_pasted_whole(block: Block):
    actual = (ROOT / block.argument).read_text(encoding="utf-8")
    assert block.text == actual, (
        f"{block.where}: this block is not {block.argument} any more; paste the file in again"
    )


@pytest.mark.parametrize("block", of("text", marker="tree"))
def test_trees_list_exactly_the_files_there(block: Block):
    folder = ROOT / block.argument
    on_disk = {
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and not any(map(_generated, path.relative_to(folder).parts))
    }
    assert _tree_files(block.text) == on_disk, block.where


def _generated(part: str) -> bool:
    """Build output and caches (all ignored by git), not part of the example."""
    return part in _SKIP_IN_TREE or part.endswith((".egg-info", "_cache"))


def _tree_files(text: str) -> set[str]:
    files: set[str] = set()
    stack: list[str] = []
    for line in text.splitlines()[1:]:
        prefix = _TREE_PREFIX.match(line)
        assert prefix is not None
        name = line[prefix.end() :]
        depth = prefix.end() // 4 - 1
        del stack[depth:]
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
        else:
            files.add("/".join([*stack, name]))
    return files


@pytest.mark.parametrize("block", of("python", marker=""))
def test_python_blocks_run(block: Block, tmp_path, monkeypatch, example_installed):
    monkeypatch.chdir(tmp_path)
    name = f"docs_block_{block.line}"
    module = types.ModuleType(name)
    module.__file__ = str(tmp_path / f"{name}.py")
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(block.text, block.where, "exec"), module.__dict__)


@pytest.mark.parametrize("block", of("toml"))
def test_toml_blocks_are_valid_configs(block: Block, tmp_path, registry):
    document = parse_toml(block.text, {})
    if block.marker == "include" and not {"sources", "sinks", "analyzers"} & set(document):
        return  # e.g. pyproject.toml: parsing it is the check
    path = tmp_path / "observer.toml"
    path.write_text(block.text, encoding="utf-8")
    if block.marker == "config-error":
        with pytest.raises(ConfigError) as caught:
            load_config(path, registry, {})
        assert str(caught.value) == block.argument, block.where
    else:
        config = load_config(path, registry, {})
        assert config.instances or "observer" in document, block.where


@pytest.mark.parametrize("block", of("console", "sh"))
def test_shell_sessions_show_real_output(block: Block, example_installed):
    folder = ROOT / block.argument if block.marker == "run" else ROOT
    for command, shown in _session(block):
        if command[0] != "observer-core":
            assert shlex.join(command) in COVERED_ELSEWHERE, f"{block.where}: {command} not run"
            continue
        result = subprocess.run(
            [sys.executable, "-m", "observer_core", *command[1:]],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"{block.where}: {result.stderr}"
        if shown is not None:
            assert result.stdout == shown, f"{block.where}: output of {command} differs"


def _session(block: Block) -> list[tuple[list[str], str | None]]:
    """``(command, output shown or None)`` for each command of a shell block."""
    steps: list[tuple[list[str], list[str]]] = []
    for line in block.text.splitlines():
        if block.lang == "console" and not line.startswith("$ "):
            steps[-1][1].append(line)
            continue
        command = line.removeprefix("$ ").split("#")[0].strip()
        if command:
            steps.append((shlex.split(command), []))
    return [(command, "\n".join(output) + "\n" if output else None) for command, output in steps]


def test_commands_covered_elsewhere_are_really_covered():
    kit = (ROOT / "tests" / "core" / "test_plugin_kit.py").read_text()
    assert "def test_the_example_passes_its_own_tests" in kit
    assert "installed_package(EXAMPLE)" in kit
    packaging = (ROOT / "tests" / "core" / "test_packaging.py").read_text()
    assert "def test_a_plugin_project_installs_the_kit_as_documented" in packaging


CONFIGURATION = ROOT / "docs" / "configuration.md"


def test_configuration_reference_names_every_key_of_every_builtin_plugin():
    """docs/configuration.md names (as `key`) every key of [observer] and of every
    built-in plugin's Config, so a new key cannot ship undocumented."""
    text = CONFIGURATION.read_text(encoding="utf-8")
    registry = load_registry()
    configs = {"[observer]": ObserverSettings}
    for kind in registry.components:
        for name, info in registry.components[kind].items():
            if info.origin.distribution == "observer-core":
                configs[f"[{kind}] {name}"] = info.cls.Config
    missing = [
        f"{where} {field.encode_name}"
        for where, config in configs.items()
        for field in msgspec.structs.fields(config)
        if f"`{field.encode_name}`" not in text
    ]
    assert not missing, f"docs/configuration.md does not name: {', '.join(missing)}"
