"""Without the ``[otlp]`` extra the daemon runs, and a config that enables ``otlp`` fails
``check`` and ``run`` with one line naming the extra (contract §13.1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from observer_core.testing import DaemonFactory

# Imported first by every Python process started with this folder on PYTHONPATH: it makes
# opentelemetry.proto unimportable, as on an install without the extra.
HIDE_PROTO = """
import sys

class _Hidden:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry.proto" or name.startswith("opentelemetry.proto."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Hidden())
"""

CONFIG = """
[sources.otlp]
port = 0
enabled = {enabled}
[sinks.ops]
plugin = "jsonl"
path = "ops.jsonl"
"""


@pytest.fixture
def without_proto(tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "hide"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(HIDE_PROTO)
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path}


@pytest.mark.parametrize("command", ["check", "run"])
def test_enabled_otlp_without_the_extra_is_a_config_error_naming_it(
    observer_daemon: DaemonFactory, without_proto: dict[str, str], command: str
) -> None:
    observer_daemon.write_config(CONFIG.format(enabled="true"))
    result = observer_daemon.run(command, "--config", "observer.toml", env=without_proto)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line == (
        "observer-core: config error: observer.toml: [sources.otlp] plugin 'otlp' needs "
        "opentelemetry.proto, which is not installed: pip install 'observer-core[otlp]' "
        "(from a clone: pip install -e '.[otlp]')"
    )


def test_without_the_extra_the_daemon_still_lists_and_checks_plugins(
    observer_daemon: DaemonFactory, without_proto: dict[str, str]
) -> None:
    plugins = observer_daemon.run("plugins", env=without_proto)
    assert plugins.returncode == 0 and "otlp" in plugins.stdout
    observer_daemon.write_config(CONFIG.format(enabled="false"))
    checked = observer_daemon.run("check", "--config", "observer.toml", env=without_proto)
    assert checked.returncode == 0, checked.stderr


def test_with_the_extra_the_same_config_checks(observer_daemon: DaemonFactory) -> None:
    observer_daemon.write_config(CONFIG.format(enabled="true"))
    result = observer_daemon.run("check", "--config", "observer.toml")
    assert result.returncode == 0, result.stderr
