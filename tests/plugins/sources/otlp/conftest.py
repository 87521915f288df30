"""Fixtures of the otlp source's tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from otlp_helpers import OtlpDaemon, start_otlp_daemon

from observer_core.testing import DaemonFactory


@pytest.fixture
def start_otlp(observer_daemon: DaemonFactory) -> Callable[..., OtlpDaemon]:
    """Start a daemon whose ``otlp`` source has the given extra keys (TOML lines)."""
    return lambda otlp_keys="", path="ops.jsonl": start_otlp_daemon(
        observer_daemon, otlp_keys, path
    )


@pytest.fixture
def otlp(start_otlp: Callable[..., OtlpDaemon]) -> OtlpDaemon:
    """A daemon with an otlp source of default keys."""
    return start_otlp()
