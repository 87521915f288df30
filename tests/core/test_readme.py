"""What the README (and the files a newcomer reads first) say holds (issue 25)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from observer_core.kinds import KINDS
from observer_core.plugins import load_registry

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_plugin_table(text: str) -> dict[str, set[str]]:
    """The ``## Plugins`` table: for each kind, the plugin names (the `code` spans
    not inside a parenthesis)."""
    section = text.split("\n## Plugins\n", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] in KINDS:
            table[cells[0]] = set(re.findall(r"`([^`]+)`", re.sub(r"\([^)]*\)", "", cells[1])))
    return table


def test_the_plugin_table_lists_exactly_the_builtin_plugins():
    registry = load_registry()
    installed = {
        kind: {
            name
            for name, info in registry.components[kind].items()
            if info.origin.distribution == "observer-core"
        }
        for kind in KINDS
    }
    assert readme_plugin_table(README) == installed


def test_the_table_parser_reads_names_not_what_is_in_parentheses():
    text = "\n## Plugins\n\n| kind | p |\n|---|---|\n| sinks | `a` (`b` inside), `c` (x) |\n"
    assert readme_plugin_table(text) == {"sinks": {"a", "c"}}


def test_the_quick_start_says_to_activate_the_venv_and_run_prints_it():
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert ". .venv/bin/activate" in quick_start
    assert ". .venv/bin/activate" in (ROOT / "scripts" / "run").read_text(encoding="utf-8")


def test_the_quick_start_states_the_default_input_summary():
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert '"? ?×? in ?, ?"' in quick_start


def test_nats_extra_is_given_for_an_index_and_for_a_clone():
    for text in (README, (ROOT / "plugins" / "fleet" / "README.md").read_text(encoding="utf-8")):
        assert "pip install 'observer-core[nats]'" in text
        assert "pip install -e '.[nats]'" in text


def test_scripts_test_installs_nats_server_as_ci_does():
    script = (ROOT / "scripts" / "test").read_text(encoding="utf-8")
    assert "bash ci/nats-server.sh install" in script
    assert "nats-server" in README.split("## Development", 1)[1]


def test_license_is_an_spdx_string_and_setuptools_supports_it():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["license"] == "MIT"
    floor = next(
        req for req in pyproject["build-system"]["requires"] if req.startswith("setuptools")
    )
    version = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", floor)
    assert version and int(version.group(1)) >= 77  # PEP 639 license strings
