"""Fleet plugins on NATS JetStream: the ``nats`` sink and the ``nats`` source.

Edge observers publish the ops they take in to a JetStream stream (the ``nats``
sink, which holds acknowledgements); consumer observers take them from a durable
consumer they share (the ``nats`` source) and write them to their own sinks.
:mod:`observer_plugins.fleet.claims` lets analyzers on several observers share
their "done once" memory. See ``docs/scaling.md``.

nats-py is optional (``pip install 'observer-core[nats]'``): this module imports
without it, and a config naming these plugins says what to install.
"""

from __future__ import annotations

from observer_core import RegisterSink, RegisterSource, hookimpl

from .sink import NatsSink, NatsSinkConfig
from .source import NatsSource, NatsSourceConfig

__all__ = ["NatsSink", "NatsSinkConfig", "NatsSource", "NatsSourceConfig"]


@hookimpl
def observer_register_sinks(register: RegisterSink) -> None:
    register(NatsSink)


@hookimpl
def observer_register_sources(register: RegisterSource) -> None:
    register(NatsSource)
