"""Test helpers for observer-core and its plugins (a ``pytest11`` plugin).

Install them with ``pip install 'observer-core[testing]'``; a plugin author's
tests then get these fixtures without importing anything (:mod:`.plugin`):

- ``observer_engine``: run the engine in-process on a config you write, with
  the plugin under test registered (installed or not), a ``collect`` sink that
  keeps what it receives, and cycles you trigger yourself
  (``await engine.run_cycle()``). See :class:`EngineFactory` (:mod:`.engine`).
- ``observer_daemon``: start the real daemon as a subprocess on a config you
  write; talk to it over loopback; stop it with a signal or ``kill -9``
  (:mod:`.daemon`).
- ``stub_server``: a small real HTTP server that records requests and answers
  as you program it (status, JSON body, delay, disconnect) — a gateway, an LLM
  or a code-review service (:mod:`.stub`).
- ``installed_package`` (session): ``pip install`` a plugin distribution from
  its folder, to test its entry point as users get it (:mod:`.install`).
- :func:`make_context` (one component outside any engine), :func:`free_port`,
  :func:`wait_for` (a bounded poll, never a bare sleep), :func:`daemon_config`
  (a minimal config: the http source and a jsonl sink) and :func:`numbered_op`.

The kit uses only the public API of observer-core (a test checks it): what it
needs from the engine (``step_timeout=``, ``start_push_sources``, ``idle()``,
``metrics.sample``) is public, and open to any harness of your own.
"""

from __future__ import annotations

from importlib.util import find_spec

if find_spec("pytest") is None:
    raise ModuleNotFoundError(
        "observer_core.testing needs pytest: pip install 'observer-core[testing]'", name="pytest"
    )

from .collect import COLLECT_PLUGIN, CollectConfig, CollectingSink, plugin_of
from .context import make_context
from .daemon import Daemon, DaemonFactory
from .engine import EngineFactory, RunningEngine
from .helpers import GiveUp, daemon_config, free_port, numbered_op, wait_for
from .install import InstalledPackage, PackageInstaller
from .plugin import installed_package, observer_daemon, observer_engine, stub_server
from .stub import RecordedRequest, StubReply, StubServer

__all__ = [
    "COLLECT_PLUGIN",
    "CollectConfig",
    "CollectingSink",
    "Daemon",
    "DaemonFactory",
    "EngineFactory",
    "GiveUp",
    "InstalledPackage",
    "PackageInstaller",
    "RecordedRequest",
    "RunningEngine",
    "StubReply",
    "StubServer",
    "daemon_config",
    "free_port",
    "installed_package",
    "make_context",
    "numbered_op",
    "observer_daemon",
    "observer_engine",
    "plugin_of",
    "stub_server",
    "wait_for",
]
