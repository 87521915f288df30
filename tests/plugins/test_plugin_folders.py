"""Every built-in plugin folder has its docs and a sample that decodes against its Config."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
import pytest

from observer_core.plugins import load_registry

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
FOLDERS = sorted(path.parent for path in PLUGINS.glob("*/*/__init__.py"))


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_folder_has_readme_and_sample_that_decodes(folder: Path) -> None:
    assert (folder / "README.md").is_file()
    sample = tomllib.loads((folder / "sample.toml").read_text())
    registry = load_registry()
    kind = folder.parent.name
    for name, table in sample[kind].items():
        table = dict(table)
        plugin = registry.get(kind, table.pop("plugin", name))
        assert plugin is not None, f"{folder}: {name}"
        table.pop("enabled", None)
        msgspec.convert(table, plugin.cls.Config)
