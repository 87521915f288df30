"""The pytest plugin (entry point ``pytest11``): the kit's fixtures, there without an import."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .daemon import DaemonFactory
from .engine import EngineFactory
from .install import PackageInstaller
from .stub import StubServer

__all__ = ["installed_package", "observer_daemon", "observer_engine", "stub_server"]


@pytest.fixture
def observer_engine(tmp_path: Path) -> EngineFactory:
    """Run the engine in-process on configs written into ``tmp_path`` (:class:`EngineFactory`)."""
    return EngineFactory(tmp_path)


@pytest.fixture
def observer_daemon(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Start real daemons in ``tmp_path``; every one still running is killed at teardown."""
    factory = DaemonFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def stub_server() -> Iterator[Callable[..., StubServer]]:
    """Make stub HTTP servers (``stub_server()``, or ``stub_server(port=N)``); all are
    closed at teardown."""
    servers: list[StubServer] = []

    def make(port: int = 0) -> StubServer:
        server = StubServer(port)
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.close()


@pytest.fixture(scope="session")
def installed_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PackageInstaller]:
    """``installed_package(folder)`` pip-installs a distribution for this session (see
    :class:`PackageInstaller`); what it installed into the environment is removed at the end."""
    installer = PackageInstaller(tmp_path_factory.mktemp("packages"))
    try:
        yield installer
    finally:
        installer.close()
