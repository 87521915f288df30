"""The fleet plugins' tests run against a real nats-server (skipped without one, unless CI)."""

from observer_plugins.fleet.testing import nats_server

__all__ = ["nats_server"]
