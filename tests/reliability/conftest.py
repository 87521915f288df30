"""The reliability suite prints what it proved: kills, events, fuzz cases, connections, RSS.

The figures come from :func:`reliability_kit.record`; they are printed at the end of
every run (with or without ``-s``) and, when ``OBSERVER_RELIABILITY_FIGURES`` names a
file, written there as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from reliability_kit import FIGURES, FUZZ_EXAMPLES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    terminalreporter.write_line(
        f"fuzz examples per property (OBSERVER_FUZZ_EXAMPLES): {FUZZ_EXAMPLES}"
    )
    for area, values in FIGURES.items():
        shown = ", ".join(f"{name}={value}" for name, value in values.items())
        terminalreporter.write_line(f"{area}: {shown}")
    target = os.environ.get("OBSERVER_RELIABILITY_FIGURES")
    if target:
        Path(target).write_text(json.dumps(FIGURES, indent=2) + "\n", encoding="utf-8")
