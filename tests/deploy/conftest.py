"""Fixtures for the tests of deploy/ (the helpers are in deploy_kit.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_kit import DEPLOY, DeployedDaemons
from podman_kit import IMAGE, base_image, build


@pytest.fixture
def deployed(tmp_path: Path) -> Iterator[DeployedDaemons]:
    """Start daemons on deploy/observer.toml; every one still running is killed at teardown."""
    daemons = DeployedDaemons(tmp_path)
    try:
        yield daemons
    finally:
        daemons.close()


@pytest.fixture(scope="session")
def image() -> str:
    """The image built from deploy/Containerfile and this work tree (podman_kit.py)."""
    return build(IMAGE, DEPLOY / "Containerfile", BASE=base_image())
