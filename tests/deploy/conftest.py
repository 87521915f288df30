"""Fixtures for the tests of deploy/ (the helpers are in deploy_kit.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_kit import DeployedDaemons


@pytest.fixture
def deployed(tmp_path: Path) -> Iterator[DeployedDaemons]:
    """Start daemons on deploy/observer.toml; every one still running is killed at teardown."""
    daemons = DeployedDaemons(tmp_path)
    try:
        yield daemons
    finally:
        daemons.close()
