"""The built-in analyzers' example tests, run through ``observer-core test`` itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ANALYZERS = Path(__file__).resolve().parents[3] / "plugins" / "analyzers"
EXAMPLES = sorted(ANALYZERS.glob("*/tests.toml"))


def test_every_builtin_analyzer_ships_examples():
    folders = sorted(path.parent for path in ANALYZERS.glob("*/__init__.py"))
    assert [path.parent for path in EXAMPLES] == folders


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.parent.name)
def test_examples_pass(example: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "observer_core", "test", str(example)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].endswith(" passed, 0 failed")
    assert lines[:-1] and all(line.startswith("PASS ") for line in lines[:-1])
