"""The fixtures (observer_engine, observer_daemon, stub_server, ...) come from
observer_core.testing, a pytest plugin installed with observer-core."""

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # observer-core runs on asyncio
